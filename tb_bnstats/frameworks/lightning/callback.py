"""``BNStatsCallback``: tb_bnstats in PyTorch Lightning's ``Trainer``.

A Lightning ``Callback`` that makes a :class:`tb_bnstats.torch.BNStatsMonitor`
on the ``LightningModule`` when ``fit`` takes its first training batch, hands
it each optimizer step at ``trainer.global_step``, and closes it when ``fit``
ends. Everything it logs and finds is the monitor's; this module decides only
what the loop decides (the directory, the step, the probe's batch, where the
messages go). It imports Lightning (``lightning.pytorch``, else the older
``pytorch_lightning``) and torch, never TensorFlow, Keras or JAX.
"""

import logging
from collections.abc import Mapping
from typing import Any

from tb_bnstats.frameworks.torch.deferred import DeferredMonitor
from tb_bnstats.frameworks.torch.monitor import BNStatsMonitor

try:  # Lightning 2's namespace; the older package has the same classes under pytorch_lightning
    from lightning.pytorch import LightningModule
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.utilities import rank_zero_only

    LIGHTNING = "lightning.pytorch"
except ImportError:  # pragma: no cover - exercised where only pytorch_lightning is installed
    try:
        from pytorch_lightning import LightningModule
        from pytorch_lightning.callbacks import Callback
        from pytorch_lightning.loggers import TensorBoardLogger
        from pytorch_lightning.utilities import rank_zero_only

        LIGHTNING = "pytorch_lightning"
    except ImportError as exc:
        raise ImportError("tb_bnstats.lightning needs PyTorch Lightning: pip install 'tb_bnstats[lightning]' "
                          "(lightning>=2.4), or pytorch_lightning") from exc

# Lightning's own logger: its messages print at the trainer's verbosity.
_log = logging.getLogger(LIGHTNING)


def _say(message: str) -> None:
    """``message`` in Lightning's logging, on the global rank zero only (as
    Lightning's own messages: under DDP every rank runs the callback)."""
    if rank_zero_only.rank == 0:
        _log.info(message)


class _LightningMonitor(BNStatsMonitor):
    """The PyTorch monitor with its messages (what was found, the diagnosis)
    in Lightning's logging, from the global rank zero."""

    say_to = staticmethod(_say)


class BNStatsCallback(DeferredMonitor, Callback):
    """Logs every BatchNorm module's batch moments against its running
    statistics at every optimizer step of ``Trainer.fit``, for TensorBoard's
    BN Convergence tab, and diagnoses the run when ``fit`` ends.

    Example::

        from tb_bnstats.lightning import BNStatsCallback

        trainer = lightning.pytorch.Trainer(max_epochs=5, callbacks=[BNStatsCallback()])
        trainer.fit(model, train_loader, val_loader)
        # then: tensorboard --logdir lightning_logs   and open the "BN Convergence" tab

    Where: without ``log_dir``, the run is the directory of the trainer's
    ``TensorBoardLogger`` (``lightning_logs/version_N``, Lightning's default
    logger when TensorBoard is installed), so the tab and the scalars the
    module logs with ``self.log`` are one run; without a TensorBoard logger,
    ``trainer.log_dir``.

    Steps: a training step is logged at ``trainer.global_step``, the number
    of optimizer steps taken, after each batch that stepped an optimizer.
    With ``accumulate_grad_batches=k`` that is one step per k batches, and
    the moments logged are those of the last micro-batch (each micro-batch
    counts as an update of the running statistics, as BatchNorm does). With
    several optimizers (manual optimization), ``global_step`` counts each
    ``optimizer.step()``: a batch that steps two optimizers moves it by two,
    and is logged once, at the count after it, each BN module with the
    moments of its last training forward in the batch.
    Resuming ``fit`` from a checkpoint restores ``global_step``: the run
    goes on from there (into the same directory when the logger's
    ``version`` is given, as a resumed run's usually is).

    What is not training is not logged: the sanity check, validation,
    ``validate``, ``test`` and ``predict`` run in ``eval()`` without
    gradients, and the monitor exists only from the first training batch to
    the end of ``fit``.

    The probe (the train/inference gap on one batch): by default the first
    training batch, when the module defines ``forward`` and the batch is
    ``(x, y)`` or ``x`` (``forward(x)`` gives class scores for the accuracy;
    ``loss_fn(output, y)`` adds the loss). ``probe_data`` gives held-out data
    instead, ``probe_data=False`` none.

    Several processes (DDP): every rank makes its monitor at the first
    batch and rank 0 alone writes (:class:`tb_bnstats.torch.BNStatsMonitor`):
    the global batch's moments, rank 0's buffers. Messages come from rank 0.
    The diagnosis is printed when ``fit`` ends through Lightning's logger
    (``verbose=0``: not printed; :attr:`findings` holds it either way).

    Args:
        log_dir: the run's directory; None (default): the trainer's
            TensorBoard logger's, as above.
        loss_fn: ``loss_fn(output, y)``, for the probe's loss in both modes.
        **options: the recording options of :class:`tb_bnstats.Options`
            (``log_every_n_steps``, ``snapshot_every_n_steps``, ``layers``,
            ``log_metrics``, ``flush_secs``, ``verbose``, ``probe_data``,
            ``probe_every_n_steps``, ``population_data``, ...).

    Raises:
        TypeError: an unknown keyword argument.
        ValueError: an argument out of its range.
    """

    _logged = 0  # the last step logged (or the step fit began at)

    # -- the run's directory, step and probe ------------------------------------------

    def run_dir(self, trainer: Any) -> str:
        """The directory the run is logged into (see the class). Call it on
        every rank: it is rank 0's, broadcast.

        Returns:
            ``log_dir``, else the first TensorBoard logger's ``log_dir``,
            else ``trainer.log_dir``.
        """
        if self.log_dir is not None:
            return self.log_dir
        tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tensorboard is None:
            return str(trainer.log_dir)
        return str(trainer.strategy.broadcast(tensorboard.log_dir))

    def _probe_batch(self, pl_module: Any, batch: Any) -> Any:
        """The default probe's batch, ``(x, y)`` / ``x``, or None."""
        if "probe_data" in self.options:
            return None
        if type(pl_module).forward is LightningModule.forward:
            reason = "the module defines no forward()"
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            return tuple(batch)
        elif _is_tensor(batch):
            return batch
        else:
            reason = f"its batch is a {type(batch).__name__}, not (x, y) or x"
        if self.options.get("verbose", 1):
            _say(f"tb_bnstats: no train/inference probe ({reason}); pass probe_data=(x, y) for one")
        return None

    # -- Lightning's hooks -------------------------------------------------------------

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """A new ``fit``: a new monitor at its first training batch."""
        self.monitor = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        """The first training batch of a ``fit``: the monitor is made
        (before the batch's forward), from the step ``fit`` resumed at."""
        if self.monitor is not None:
            return
        self._logged = int(trainer.global_step)
        self.monitor = _LightningMonitor(pl_module, self.run_dir(trainer), loss_fn=self.loss_fn,
                                         start_step=self._logged,
                                         training_batch=self._probe_batch(pl_module, batch), **self.options)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """A batch that stepped an optimizer is logged at ``global_step``."""
        monitor = self.monitor
        step = int(trainer.global_step)
        if monitor is None or monitor.closed or step <= self._logged:
            return  # an accumulating micro-batch: the optimizer has not stepped
        self._logged = step
        loss: Any = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not _is_tensor(loss):
            monitor.step(step=step)
            return
        if pl_module.automatic_optimization and trainer.accumulate_grad_batches > 1:
            loss = loss * trainer.accumulate_grad_batches  # Lightning divides it: the last micro-batch's loss
        monitor.step(loss=loss.detach(), step=step)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """The epoch's steps drained, the probe and population measured."""
        self._epoch_end()

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """The run is written and diagnosed, the hooks removed."""
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """``fit`` raised: what was kept is written, with no diagnosis."""
        if self.monitor is not None:
            self.monitor.__exit__(type(exception), exception, exception.__traceback__)


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)
