"""The Hugging Face ``Trainer``: :class:`.callback.BNStatsCallback`
(``tb_bnstats.transformers.BNStatsCallback``), a ``transformers.TrainerCallback``
over the PyTorch monitor (:class:`tb_bnstats.torch.BNStatsMonitor`).

A folder of a training loop, not of a framework: its models are
``torch.nn.Module``\\ s, captured, measured and worded by the PyTorch folder
(:mod:`tb_bnstats.frameworks.torch`), so it is not in the registry. It adds
what the loop decides: where the run is logged (the directory of the
trainer's ``TensorBoardCallback``), which step a training step is
(``state.global_step``), and which process writes (the world's process zero).

Importing this package imports neither torch nor transformers.
"""
