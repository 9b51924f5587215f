"""``BNStatsMonitor``: tb_bnstats for a Flax training loop (NNX or Linen).

It makes the Flax capture (:mod:`tb_bnstats.frameworks.flax.capture`) and
hands the loop's steps to the framework-neutral
:class:`tb_bnstats.recorder.Recorder` through
:class:`tb_bnstats.loop.StepLoopMonitor`. Nothing here imports TensorFlow,
Keras or PyTorch. It never stops training: a monitoring failure is a warning.
"""

import os
from collections.abc import Callable
from typing import Any

from tb_bnstats.frameworks.flax.capture import COLLECTION, FlaxCapture
from tb_bnstats.loop import StepLoopMonitor
from tb_bnstats.options import PROBE_OFF, Options, positive_int
from tb_bnstats.recorder import Capabilities


class BNStatsMonitor(StepLoopMonitor):
    """Logs every Flax BatchNorm layer's batch moments against its running
    statistics, every training step, for TensorBoard's BN Convergence tab.

    NNX (the train step unchanged)::

        from tb_bnstats.flax import BNStatsMonitor

        with BNStatsMonitor(model, "logs/run1") as monitor:   # model: an nnx.Module
            for batch in batches:
                loss = train_step(model, optimizer, batch)     # your @nnx.jit step
                monitor.step(loss=loss)

    Linen (two lines of the standard ``TrainState`` step change: ``mutable``
    asks for the moments, and the step returns them among its metrics)::

        logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x,
                                         train=True, mutable=["batch_stats", "bn_stats"])    # changed
        ...
        metrics = {"loss": loss, "bn_stats": updates["bn_stats"]}                            # changed

        with BNStatsMonitor((model, variables), "logs/run1") as monitor:
            for batch in batches:
                state, metrics = train_step(state, batch)
                monitor.step(state, **metrics)

    Every ``nnx.BatchNorm`` / ``nn.BatchNorm`` is found (NNX: in the module
    graph; Linen: in ``variables["batch_stats"]``) and named by its path
    (``block1.bn``). Make the monitor before the step's first call (a step
    traced before is traced again once: the model's graph changed). The
    moments are those the layer normalized with, kept on the device; the
    running statistics are the model's (NNX) or the train state's (Linen)
    after the step, and a layer's update count grows when those changed:
    a step that does not store the update logs no update (BN002).
    Flax's conventions go into the log as they are: ``momentum`` is the
    weight kept on the old average, the running variance averages biased
    batch variances.

    Several devices: a step under ``jax.jit`` with the batch sharded over a
    mesh logs the global batch's moments (what the layer normalized with),
    as one batch. A Linen step under ``jax.pmap`` (its ``bn_stats`` and the
    state's ``batch_stats`` stacked on a leading device axis) logs each
    device's slice's moments and running statistics (the replica series),
    the global batch's moments as the devices' pooled, and the layers as
    synchronized when they have ``axis_name``. A metric returned per device
    (a vector) is logged as its mean.

    The step rule, closing and the ``with`` block are those of
    :class:`tb_bnstats.loop.StepLoopMonitor`.

    Args:
        model: an ``nnx.Module``, or a Linen ``(module, variables)`` pair
            (``variables`` as ``module.init`` returned them, with
            ``batch_stats``).
        log_dir: directory of this run's event files (TensorBoard's run).
        start_step: the optimizer steps taken before this run (a resumed
            run); :meth:`step` without ``step=`` counts on from here.
        **options: the recording options, each a field of
            :class:`tb_bnstats.Options` (``log_every_n_steps``,
            ``snapshot_every_n_steps``, ``layers`` -- layer paths or glob
            patterns --, ``log_metrics``, ``flush_secs``, ``verbose``; NNX
            also ``probe_data`` -- a held-out batch ``(x, y)`` for the
            train/inference probe --, ``probe_every_n_steps``,
            ``population_data``, ``population_every_n_steps``,
            ``population_samples``, ``population_batch_size``).
        loss_fn: ``loss_fn(output, y)``, for the probe's loss in both modes
            (NNX).

    Raises:
        TypeError: ``model`` is neither an ``nnx.Module`` nor a Linen pair,
            or an unknown keyword argument.
        ValueError: an argument out of its range, or ``probe_data`` /
            ``population_data`` for a Linen pair (the monitor does not hold
            the train state between steps: measure it with
            ``tb_bnstats.gap_report`` / ``population_stats``).
    """

    def __init__(self, model: Any, log_dir: str | os.PathLike[str], *, start_step: int = 0,
                 loss_fn: Callable[[Any, Any], Any] | None = None, **options: Any) -> None:
        from tb_bnstats.frameworks.flax import is_linen_pair, owns

        if not owns(model):
            raise TypeError(f"BNStatsMonitor needs an nnx.Module or a Linen (module, variables) pair, got "
                            f"{type(model).__name__} (import flax before making the monitor)")
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"loss_fn must be callable as loss_fn(output, y), got {loss_fn!r}")
        linen = is_linen_pair(model)
        for name in ("probe_data", "population_data"):
            if linen and options.get(name) is not None:
                raise ValueError(f"{name}: the monitor measures NNX models only; for a Linen pair call "
                                 "tb_bnstats.gap_report / population_stats((module, variables), ...) on the "
                                 "train state's variables")
        super().__init__(Options.of("BNStatsMonitor", log_dir, options, default_probe=False))
        steps_before = positive_int("start_step", start_step, allow_zero=True)
        self.model = model
        self.loss_fn = loss_fn
        rec = self._recorder
        self.capture = rec.guard("instrumenting the model", FlaxCapture, model, rec.warn_once)
        name = type(model[0] if isinstance(model, tuple) else model).__name__
        rec.attach(self.capture, name)
        self._begin(steps_before, Capabilities(probe=not linen, population=not linen))
        self._probe = None
        if not linen:
            if rec.run.probe_source is not PROBE_OFF and rec.writer is not None:
                self._probe = rec.guard("preparing the train/inference probe", self._make_probe)
            rec.measure_model(self.model, self._probe)
        rec.epoch_begin()

    def _make_probe(self) -> Any:
        from tb_bnstats.frameworks.flax import passes
        from tb_bnstats.measure import gap

        x, y = gap.take_probe_batch(self.options.probe_batches)
        named = [(n, layer) for n, layer in passes.bn_layers(self.model) if self.options.selected(n)]
        return passes.GapProbe(self.model, x, y, named, loss_fn=self.loss_fn)

    def step(self, state: Any = None, *, loss: Any = None, step: int | None = None, **metrics: Any) -> None:
        """Logs the training step just taken: its batch moments, the running
        statistics now, and ``loss`` and ``metrics`` (arrays or numbers; not
        read back here).

        Args:
            state: Linen: the train state after the step (with
                ``batch_stats``), or a variables dict. NNX: leave it out.
            loss: the step's loss (optional).
            step: the optimizer's step count after this step; by default one
                more than the last (``start_step`` + steps so far).
            **metrics: other scalars of the step; Linen's ``bn_stats``
                (``updates["bn_stats"]``) is the moments, not a metric.
        """
        if self.closed:
            return
        rec = self._recorder
        step = self._next_step(step)
        moments = metrics.pop(COLLECTION, None)
        # Scalars; a pmapped step's per-device vector of a scalar is logged as its mean.
        values = ({"loss": loss} if loss is not None else {}) | {k: v for k, v in metrics.items()
                                                                   if len(getattr(v, "shape", ())) <= 1}
        capture = self.capture
        if capture is not None:
            if capture.api == "linen" and moments is None:
                rec.warn_once("bn_stats", "step() got no bn_stats: the Linen step must apply with "
                              f"mutable=['batch_stats', '{COLLECTION}'] and return updates['{COLLECTION}'] among "
                              "its metrics (monitor.step(state, **metrics))")
            else:
                ran = rec.guard("capturing the batch moments", capture.write_step, step, values, state, moments)
                if ran is False and capture.names:
                    rec.warn_once("finding BN calls", "no BatchNorm layer ran in training mode in a step traced "
                                  "since the monitor was made: was the step traced before (call it after making "
                                  "the monitor) or does it call the layers with use_running_average=True outside "
                                  "a gradient?")
        self._step_taken(step)

    def epoch_end(self, **val_metrics: float) -> None:
        """Optional: an epoch ended. Drains what was kept and logs
        ``val_metrics`` (numbers) as the validation split at this step."""
        if not self.closed:
            self._epoch_end(val_metrics)

    def _release(self) -> None:
        if self.capture is not None:
            self.capture.close()
