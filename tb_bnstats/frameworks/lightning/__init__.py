"""PyTorch Lightning: :class:`.callback.BNStatsCallback`
(``tb_bnstats.lightning.BNStatsCallback``), a Lightning ``Callback`` over the
PyTorch monitor (:class:`tb_bnstats.torch.BNStatsMonitor`).

A folder of a training loop, not of a framework: its models are
``torch.nn.Module``\\ s, captured, measured and worded by the PyTorch folder
(:mod:`tb_bnstats.frameworks.torch`), so it is not in the registry. It adds
what the loop decides: where the run is logged (the trainer's logger), which
step a training step is (``trainer.global_step``), when the run begins and
ends (a ``fit``), and where the messages go (Lightning's logging).

Importing this package imports neither torch nor Lightning.
"""
