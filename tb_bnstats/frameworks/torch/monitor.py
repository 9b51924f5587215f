"""``BNStatsMonitor``: tb_bnstats for a plain PyTorch training loop.

It makes the PyTorch capture (:mod:`tb_bnstats.frameworks.torch.capture`) and the
PyTorch measurements (:mod:`tb_bnstats.frameworks.torch.passes`), and hands the
loop's steps to the framework-neutral :class:`tb_bnstats.recorder.Recorder`,
which decides what to log and logs it with the package's own event writer.
Nothing here imports TensorFlow or Keras. It never stops training: a
monitoring failure is a warning.
"""

import os
from collections.abc import Callable
from typing import Any

from tb_bnstats.frameworks.torch.capture import ranks as ddp_ranks
from tb_bnstats.frameworks.torch.capture.hooks import TorchCapture
from tb_bnstats.loop import StepLoopMonitor
from tb_bnstats.options import PROBE_OFF, Options, positive_int
from tb_bnstats.recorder import Capabilities


class BNStatsMonitor(StepLoopMonitor):
    """Logs every BatchNorm module's batch moments against its running
    statistics, every training step, for TensorBoard's BN Convergence tab.

    Example::

        from tb_bnstats.torch import BNStatsMonitor

        with BNStatsMonitor(model, "logs/run1") as monitor:
            for x, y in loader:
                loss = loss_fn(model(x), y)
                opt.zero_grad(); loss.backward(); opt.step()
                monitor.step(loss=loss)            # the training step just taken
        # then: tensorboard --logdir logs   and open the "BN Convergence" tab

    Every ``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm``,
    ``nn.LazyBatchNorm*`` and subclass of ``_BatchNorm`` at any depth is
    found and named by its module path (``layer1.0.bn1``). Make the monitor
    before the model's first ``torch.compile``'d call (its hooks are traced
    into the graph then). The hooks add nothing to ``state_dict()``;
    :meth:`close` (or leaving the ``with`` block) removes them.

    PyTorch's conventions (see docs/pytorch.md): the momentum is logged in
    Keras' convention (PyTorch's ``momentum=0.1`` is 0.9; messages and the
    tab say both); ``running_var`` averages Bessel-corrected variances, so
    the batch variance is compared as ``var_B * n / (n - 1)``;
    ``num_batches_tracked`` is the update count; a module in ``eval()``
    during training is logged as not updating; a module with
    ``track_running_stats=False`` has no running statistics and is not
    logged. With several forward passes per step (gradient accumulation)
    the last one's moments are logged and every one counts as an update.

    Several processes (``DistributedDataParallel``): make a monitor on every
    rank, with the DDP wrapper as ``model`` (it tells whether DDP syncs the buffers)
    and the same ``log_dir``, and call :meth:`step` on every rank at every
    step. Each rank's batch moments are gathered to rank 0
    (:mod:`tb_bnstats.frameworks.torch.capture.ranks`), which alone writes the run:
    per-rank moments, the global batch's, and rank 0's running statistics
    (what ``torch.save(model.state_dict())`` on rank 0 keeps). The other
    ranks write nothing.

    The step rule, closing and the ``with`` block are those of
    :class:`tb_bnstats.loop.StepLoopMonitor`: a step given to :meth:`step`
    may repeat the last one but never go back.

    Args:
        model: the ``torch.nn.Module`` being trained (or its
            ``torch.compile`` wrapper, or its ``DistributedDataParallel``
            wrapper).
        log_dir: directory of this run's event files (TensorBoard's run).
            ``torch.utils.tensorboard.SummaryWriter(log_dir)`` may write its
            scalars there too: the tab's loss chart shows them.
        loss_fn: ``loss_fn(output, y)``, for the probe's loss in both modes.
        start_step: the optimizer steps taken before this run (a resumed
            run); :meth:`step` without ``step=`` counts on from here.
        training_batch: for a loop that hands the monitor its first
            training batch (the Lightning callback): ``(x, y)`` or ``x``;
            with ``probe_data=None`` the probe runs on it (the run's probe is
            then the first training batch's, as with the Keras callback).
            None (default): ``probe_data=None`` is no probe.
        **options: the recording options, each a field of
            :class:`tb_bnstats.Options` (``log_every_n_steps``,
            ``snapshot_every_n_steps``, ``layers`` -- module paths or glob
            patterns such as ``"layer1.*"`` --, ``log_metrics``,
            ``flush_secs``, ``verbose``, ``probe_data`` -- a held-out batch
            source: arrays, tensors, a ``DataLoader``; None, the default, is
            no probe --, ``probe_every_n_steps``, ``population_data``,
            ``population_every_n_steps``, ``population_samples``,
            ``population_batch_size``).

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``, or an unknown
            keyword argument.
        ValueError: an argument out of its range.
    """

    def __init__(self, model: Any, log_dir: str | os.PathLike[str], *,
                 loss_fn: Callable[[Any, Any], Any] | None = None, start_step: int = 0,
                 training_batch: Any = None, **options: Any) -> None:
        import torch

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"BNStatsMonitor needs a torch.nn.Module, got {type(model).__name__} (for a Keras "
                            "model use tb_bnstats.BNStatsCallback)")
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"loss_fn must be callable as loss_fn(output, y), got {loss_fn!r}")
        super().__init__(Options.of("BNStatsMonitor", log_dir, options, default_probe=training_batch is not None))
        self._training_batch = training_batch
        steps_before = positive_int("start_step", start_step, allow_zero=True)
        self.ranks = ddp_ranks.of(model)
        model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper holds the module
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = getattr(model.module, "_orig_mod", model.module)  # measured without DDP's collectives
        self.model = model
        self.loss_fn = loss_fn
        rec = self._recorder
        capabilities = Capabilities()
        if self.ranks is not None:
            # Every rank captures and joins the gather at each step; rank 0 alone writes (and measures).
            capabilities = Capabilities(writes=self.ranks.chief)
            rec.say(f"rank {self.ranks.rank} of {self.ranks.world_size}: "
                    + ("writes the run" if self.ranks.chief else "rank 0 writes the run"))
            if any(isinstance(m, torch.nn.SyncBatchNorm) for m in self.model.modules()):
                capabilities = Capabilities(writes=self.ranks.chief, probe=False, population=False)
                rec.warn_once("SyncBatchNorm", "SyncBatchNorm under DDP: the probe and population measurements "
                              "are off (a pass on rank 0 alone would wait for the other ranks)")
        self.capture = rec.guard("instrumenting the model", TorchCapture, self.model, self.ranks)
        rec.attach(self.capture, type(self.model).__name__)
        if self.capture is not None and self.capture.untracked:
            rec.say(f"track_running_stats=False (no running statistics, batch moments in eval() too), not "
                    f"logged: {self.capture.untracked}")
        self._begin(steps_before, capabilities)
        self._probe = None
        if rec.run.probe_source is not PROBE_OFF and rec.writer is not None:
            self._probe = rec.guard("preparing the train/inference probe", self._make_probe)
        self._training_batch = None  # the probe keeps what it takes
        rec.measure_model(self.model, self._probe)
        rec.epoch_begin()

    def step(self, loss: Any = None, step: int | None = None, **metrics: Any) -> None:
        """Logs the training step just taken: the last training forward's
        batch moments, the running statistics now, and ``loss`` and
        ``metrics`` (tensors or numbers; tensors are not read back here).

        Args:
            loss: the step's loss (optional).
            step: the optimizer's step count after this step; by default one
                more than the last (``start_step`` + steps so far).
            **metrics: other scalars of the step, on the same step axis.
        """
        if self.closed:
            return
        rec = self._recorder
        step = self._next_step(step)
        values = ({"loss": loss} if loss is not None else {}) | metrics
        if self.capture is not None and self.capture.failed is None:
            ran = rec.guard("capturing the batch moments", self.capture.write_step, step, values)
            if ran is False and self.capture.names:
                rec.warn_once("finding BN forwards", "no BatchNorm module ran a training forward before step(): "
                              "was the model torch.compile'd and run before the monitor was made (make the "
                              "monitor first), or a model of the same class compiled earlier in this process "
                              "without it (torch.compiler.reset() before compiling this one)? Or is every BN "
                              "module in eval() under torch.no_grad()?")
        self._step_taken(step)

    def epoch_end(self, **val_metrics: float) -> None:
        """Optional: an epoch ended. Drains what was kept, runs the probe and
        population measurements, logs ``val_metrics`` (numbers, e.g.
        ``loss=0.3, accuracy=0.9``) as the validation split at this step."""
        if not self.closed:
            self._epoch_end(val_metrics)

    def _release(self) -> None:
        if self.capture is not None:
            self.capture.close()  # every hook removed

    # -- measurements --------------------------------------------------------------

    def _named(self):
        from tb_bnstats.frameworks.torch import passes as torch_passes

        return [(n, m) for n, m in torch_passes.bn_layers(self.model) if self.options.selected(n)]

    def _make_probe(self):
        from tb_bnstats.frameworks.torch import passes as torch_passes
        from tb_bnstats.measure import gap

        given = self.options.probe_batches
        x, y = gap.take_probe_batch(given if given is not None else self._training_batch)
        return torch_passes.GapProbe(self.model, x, y, self._named(), loss_fn=self.loss_fn)
