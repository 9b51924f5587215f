"""``BNStatsMonitor``: tb_bnstats for a plain PyTorch training loop.

It makes the PyTorch capture (:mod:`tb_bnstats.frameworks.torch.capture`) and the
PyTorch measurements (:mod:`tb_bnstats.frameworks.torch.passes`), and hands the
loop's steps to the framework-neutral :class:`tb_bnstats.recorder.Recorder`,
which decides what to log and logs it with the package's own event writer.
Nothing here imports TensorFlow or Keras. It never stops training: a
monitoring failure is a warning.
"""

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tb_bnstats import recorder
from tb_bnstats.frameworks.torch.capture import ranks as ddp_ranks
from tb_bnstats.frameworks.torch.capture.hooks import TorchCapture
from tb_bnstats.write import summary

if TYPE_CHECKING:
    from tb_bnstats.diagnosis.finding import Finding


class BNStatsMonitor:
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

    Args:
        model: the ``torch.nn.Module`` being trained (or its
            ``torch.compile`` wrapper, or its ``DistributedDataParallel``
            wrapper).
        log_dir: directory of this run's event files (TensorBoard's run).
            ``torch.utils.tensorboard.SummaryWriter(log_dir)`` may write its
            scalars there too: the tab's loss chart shows them.
        log_every_n_steps: as in :class:`tb_bnstats.BNStatsCallback`.
        snapshot_every_n_steps: as in :class:`tb_bnstats.BNStatsCallback`.
        layers: as in :class:`tb_bnstats.BNStatsCallback`, with module paths
            or glob patterns such as ``"layer1.*"``.
        log_metrics: as in :class:`tb_bnstats.BNStatsCallback`.
        flush_secs: as in :class:`tb_bnstats.BNStatsCallback`.
        verbose: as in :class:`tb_bnstats.BNStatsCallback`.
        probe_every_n_steps: as in :class:`tb_bnstats.BNStatsCallback`.
        population_every_n_steps: as in :class:`tb_bnstats.BNStatsCallback`.
        population_samples: as in :class:`tb_bnstats.BNStatsCallback`.
        population_batch_size: as in :class:`tb_bnstats.BNStatsCallback`.
        probe_data: a held-out batch source (arrays, tensors, a
            ``DataLoader``) for the train/inference probe: its first batch
            (cut to 256 rows) runs through the model in ``train()`` and in
            ``eval()`` mode, changing nothing, at the probe steps and at
            :meth:`epoch_end` / :meth:`close`.
        population_data: data (a re-iterable ``DataLoader`` or arrays) to
            measure each BN input's population statistics on (PreciseBN).
        loss_fn: ``loss_fn(output, y)``, for the probe's loss in both modes.
        start_step: the optimizer steps taken before this run (a resumed
            run); :meth:`step` without ``step=`` counts on from here.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: an argument out of its range.
    """

    def __init__(self, model: Any, log_dir: str | os.PathLike[str], log_every_n_steps: int = 1,
                 snapshot_every_n_steps: int = 100, layers: Sequence[str] | None = None, log_metrics: bool = True,
                 flush_secs: float = summary.DEFAULT_FLUSH_SECS, verbose: int = 1, probe_data: Any = None,
                 probe_every_n_steps: int | None = None, population_data: Any = None,
                 population_every_n_steps: int | None = None, population_samples: int = 2048,
                 population_batch_size: int = 32, loss_fn: Callable[[Any, Any], Any] | None = None,
                 start_step: int = 0) -> None:
        import torch

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"BNStatsMonitor needs a torch.nn.Module, got {type(model).__name__} (for a Keras "
                            "model use tb_bnstats.BNStatsCallback)")
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"loss_fn must be callable as loss_fn(output, y), got {loss_fn!r}")
        self.schedule = recorder.Schedule(
            log_dir, log_every_n_steps=log_every_n_steps, snapshot_every_n_steps=snapshot_every_n_steps,
            layers=layers, log_metrics=log_metrics, flush_secs=flush_secs, verbose=verbose, probe_data=probe_data,
            probe_every_n_steps=probe_every_n_steps, population_data=population_data,
            population_every_n_steps=population_every_n_steps, population_samples=population_samples,
            population_batch_size=population_batch_size, default_probe=False)
        self.log_dir = self.schedule.log_dir
        self.ranks = ddp_ranks.of(model)
        model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper holds the module
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = getattr(model.module, "_orig_mod", model.module)  # measured without DDP's collectives
        self.model = model
        self.loss_fn = loss_fn
        self._step = recorder.positive_int("start_step", start_step, allow_zero=True)
        self.closed = False
        self._recorder = rec = recorder.Recorder(self.schedule)
        if self.ranks is not None:
            # Every rank captures and joins the gather at each step; rank 0 alone writes (and measures).
            rec.writes = self.ranks.chief
            rec.say(f"rank {self.ranks.rank} of {self.ranks.world_size}: "
                    + ("writes the run" if self.ranks.chief else "rank 0 writes the run"))
            if any(isinstance(m, torch.nn.SyncBatchNorm) for m in self.model.modules()):
                self.schedule.probe_data = self.schedule.population_data = None  # their passes would sync alone
                rec.warn_once("SyncBatchNorm", "SyncBatchNorm under DDP: the probe and population measurements "
                              "are off (a pass on rank 0 alone would wait for the other ranks)")
        self.capture = rec.guard("instrumenting the model", TorchCapture, self.model, self.ranks)
        rec.attach(self.capture, type(self.model).__name__)
        if self.capture is not None and self.capture.untracked:
            rec.say(f"track_running_stats=False (no running statistics, batch moments in eval() too), not "
                    f"logged: {self.capture.untracked}")
        rec.begin(lambda: self._step)
        self._probe = None
        if self.schedule.probe_data is not None and rec.writer is not None:
            self._probe = rec.guard("preparing the train/inference probe", self._make_probe)
        rec.measure_model(self.model, self._probe)
        rec.epoch_begin()
        self._epoch_start = self._step

    @property
    def findings(self) -> "list[Finding] | None":
        """The diagnosis made at :meth:`close` (a list of
        :class:`tb_bnstats.diagnosis.finding.Finding`), None before (and
        on ranks other than 0)."""
        return self._recorder.findings

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
        if step is None:
            self._step += 1
        elif isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < self._step:
            rec.warn_once("step", f"step= must be an int that does not go back (after {self._step}), got "
                          f"{step!r}; counting on from {self._step}")
            self._step += 1
        else:
            self._step = int(step)
        values = ({"loss": loss} if loss is not None else {}) | metrics
        if self.capture is not None and self.capture.failed is None:
            ran = rec.guard("capturing the batch moments", self.capture.write_step, self._step, values)
            if ran is False and self.capture.names:
                rec.warn_once("finding BN forwards", "no BatchNorm module ran a training forward before step(): "
                              "was the model torch.compile'd and run before the monitor was made (make the "
                              "monitor first), or a model of the same class compiled earlier in this process "
                              "without it (torch.compiler.reset() before compiling this one)? Or is every BN "
                              "module in eval() under torch.no_grad()?")
        rec.execution_ended()
        rec.steps_done(self._step - self._epoch_start)

    def epoch_end(self, **val_metrics: float) -> None:
        """Optional: an epoch ended. Drains what was kept, runs the probe and
        population measurements, logs ``val_metrics`` (numbers, e.g.
        ``loss=0.3, accuracy=0.9``) as the validation split at this step."""
        if self.closed:
            return
        rec = self._recorder
        rec.epoch_end({k: float(v) for k, v in val_metrics.items()}, lambda: self._step)
        rec.epoch_begin()
        self._epoch_start = self._step

    def close(self) -> None:
        """Ends the run: everything drained and written, the probe and
        population measured once more, the diagnosis made (:attr:`findings`,
        printed with ``verbose=1``), the event file closed and every hook
        removed. Idempotent."""
        if self.closed:
            return
        self.closed = True
        rec = self._recorder
        try:
            rec.epoch_end({}, lambda: self._step)
            rec.end()
        finally:
            if self.capture is not None:
                self.capture.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
            return False
        self.closed = True  # training raised: write what was kept, no diagnosis
        try:
            self._recorder.abandon()
        finally:
            if self.capture is not None:
                self.capture.close()
        return False

    # -- measurements --------------------------------------------------------------

    def _named(self):
        from tb_bnstats.frameworks.torch import passes as torch_passes

        return [(n, m) for n, m in torch_passes.bn_layers(self.model) if self.schedule.selected(n)]

    def _make_probe(self):
        from tb_bnstats.frameworks.torch import passes as torch_passes
        from tb_bnstats.measure import gap

        x, y = gap.take_probe_batch(self.schedule.probe_data)
        return torch_passes.GapProbe(self.model, x, y, self._named(), loss_fn=self.loss_fn)
