"""``BNStatsCallback``: the Keras hooks of tb_bnstats. It makes the Keras
capture (:mod:`tb_bnstats.frameworks.keras.capture`) and the Keras measurements
(:mod:`tb_bnstats.measure`), and hands Keras' training events to the
framework-neutral :class:`tb_bnstats.recorder.Recorder`, which decides what
to log and logs it. It never stops training: a monitoring failure is a
warning."""

import functools
import os
import warnings
import weakref
from typing import TYPE_CHECKING, Any

import keras

from tb_bnstats import recorder
from tb_bnstats.frameworks.keras import capture as keras_capture
from tb_bnstats.frameworks.keras import internals
from tb_bnstats.frameworks.keras.capture import tf_keras
from tb_bnstats.frameworks.keras.capture.layers import steps_per_execution
from tb_bnstats.options import PROBE_OFF, Options
from tb_bnstats.recorder import Capabilities

if TYPE_CHECKING:
    from tb_bnstats.diagnosis.finding import Finding


def _compiled(model):
    """What a compiled pass of the probe depends on besides shapes: the
    model's compiled loss and metrics (``compile`` makes new ones)."""
    return (id(internals.compiled_loss(model)), id(internals.compiled_metrics(model)))


class BNStatsCallback(keras.callbacks.Callback):
    """Logs every BatchNormalization layer's batch moments against its moving
    averages, every training step, for TensorBoard's BN Convergence tab.

    Example::

        model.fit(x, y, epochs=5, callbacks=[tb_bnstats.BNStatsCallback("logs/run1")])
        # then: tensorboard --logdir logs   and open the "BN Convergence" tab

    Args:
        log_dir: directory of this run's event files (TensorBoard's run).
        **options: the recording options, each a field of
            :class:`tb_bnstats.Options`, where each is described:
            ``log_every_n_steps``, ``snapshot_every_n_steps``, ``layers``,
            ``log_metrics``, ``flush_secs``, ``verbose``, ``probe_data``
            (None, the default: the first 256 training samples the train
            step runs on), ``probe_every_n_steps``, ``population_data``,
            ``population_every_n_steps``, ``population_samples``,
            ``population_batch_size``.

    The step is the optimizer's iteration count after the step, so it goes on
    across ``fit`` calls and after restoring a checkpoint (``model.save`` /
    ``load_model``, or ``load_weights`` into a built optimizer). Each layer's
    update count ``t`` (convergence ``1 - m**t``, debiased estimate) goes on
    too: in the same process it simply continues; in a model restored with
    its moving statistics, it starts from the optimizer's step (an estimate:
    one update per training step) with the initializers' values as the
    starting point. A trainable layer found at its initial values after
    training steps is recorded and diagnosed (BN008).

    Works under Keras' TensorFlow, JAX and torch backends (one capture
    module each, :mod:`tb_bnstats.frameworks.keras.capture`), and for tf_keras (Keras
    2) models: ``tf.keras`` under ``TF_USE_LEGACY_KERAS=1``, or ``import
    tf_keras`` (:mod:`tb_bnstats.frameworks.keras.capture.tf_keras`; the probe and
    population statistics are Keras 3's only, and off there).

    Cost: each training step writes its moments into a ring buffer on the
    device (no device-to-host read per step, so the step never waits for
    the host); every step, also under ``steps_per_execution`` > 1, has its
    own row. The host reads the ring in one read every K steps (K from
    :data:`tb_bnstats.capture.rows.RING_BYTES`, at most 256) or
    ``flush_secs``, at each epoch end and at train end, and a background
    thread computes and writes the records. When training raises inside
    the train function (a data error, ``KeyboardInterrupt``) the ring is
    drained and the file closed before the exception goes on; a run left
    open by another callback's exception is drained at the next ``fit`` or
    when the interpreter exits.

    Raises:
        TypeError: an unknown keyword argument.
        ValueError: an argument out of its range, a stride given without its
            data, or a Keras backend tb_bnstats does not capture yet.
    """

    def __init__(self, log_dir: str | os.PathLike[str], **options: Any) -> None:
        super().__init__()
        keras_capture.check_backend()
        self.options = Options.of("BNStatsCallback", log_dir, options)
        self.log_dir = self.options.log_dir
        self._recorder = recorder.Recorder(self.options)
        self._probe = None  # the GapProbe, kept (traced) across fits of the same model
        self._internals_missing: dict[str, list] = {}  # what internals.check found, per kind of model

    # tf_keras' CallbackList asks these of every callback (a Keras 3 callback has none): the one batch
    # hook used is on_train_batch_begin, and the logs may stay tensors (no per-step device-to-host sync).
    _supports_tf_logs = True

    def _implements_train_batch_hooks(self):
        return True

    def _implements_test_batch_hooks(self):
        return False

    def _implements_predict_batch_hooks(self):
        return False

    @property
    def findings(self) -> "list[Finding] | None":
        """The diagnosis of the last fit (a list of
        :class:`tb_bnstats.diagnosis.finding.Finding`), None before."""
        return self._recorder.findings

    # -- Keras hooks -----------------------------------------------------------

    # Monitoring off for the current model: the installed Keras lacks private API the capture uses
    # (_internals_changed); every hook then returns at once and fit runs unchanged.
    _off = False

    def _internals_changed(self, model):
        """Checks the private Keras API the capture relies on
        (:mod:`tb_bnstats.frameworks.keras.internals`) for ``model``'s kind
        (Keras 3 on the running backend, or tf_keras), once per kind: when
        some is missing or changed, warns once (``RuntimeWarning``) and
        turns monitoring off."""
        framework = internals.TF_KERAS if tf_keras.is_tf_keras_model(model) else internals.KERAS3
        checked = self._internals_missing
        if framework not in checked:
            checked[framework] = internals.check(framework)
            if checked[framework]:
                warnings.warn(internals.missing_message(checked[framework], framework), RuntimeWarning, stacklevel=3)
        self._off = bool(checked[framework])
        return self._off

    def set_model(self, model):
        super().set_model(model)
        if self._internals_changed(model):
            return
        # Keras calls this before it makes the train function: instrument now.
        capture = self._recorder.guard("instrumenting the model", keras_capture.capture_for, model)
        if self._probe is not None and (self._probe.model is not model or self._probe.compiled != _compiled(model)):
            self._probe = None  # made again at train begin: another model, or compiled again (its traces are stale)
        self._recorder.attach(capture, model.name)

    def on_train_begin(self, logs=None):
        if self._off:
            return
        options, rec = self.options, self._recorder
        index, count = rec.guard("asking for the processes", keras_capture.processes) or (0, 1)
        measures = options.probe_source is not PROBE_OFF or options.population_data is not None
        # A tf_keras model has no measurement passes; with several processes every one runs the same
        # instrumented step and process 0 alone writes: a measurement pass on one would wait for the others.
        legacy = tf_keras.is_tf_keras_model(self.model)
        passes = not legacy and count == 1
        if measures and legacy:
            rec.say("a tf_keras model: the train/inference probe and population statistics are off (Keras 3 "
                    "models only); tb_bnstats.recalibrate and gap_report take Keras 3 or PyTorch models")
        if count > 1:
            rec.say(f"process {index} of {count}: " + ("writes the run" if index == 0 else "process 0 writes the run")
                    + "; the probe and population statistics are off with several processes")
        run = rec.begin(self._optimizer_step, steps_per_execution(self.model),
                        Capabilities(writes=index == 0, probe=passes, population=passes))
        if rec.writer is not None:
            rec.guard("watching the train function for exceptions", self._drain_when_training_raises)
        if run.probe_source is not PROBE_OFF and self._probe is None and rec.writer is not None:
            self._probe = rec.guard("preparing the train/inference probe", self._make_probe)
        rec.measure_model(self.model, self._probe if run.probe_source is not PROBE_OFF else None)

    def _drain_when_training_raises(self):
        """Wraps the model's train function (Keras made it before
        ``on_train_begin``): the recorders learn when each execution ended
        (the wall time of its steps), and an exception raised in it first
        drains and writes what the capture kept (:meth:`Recorder.abandon`)."""
        train_function = self.model.train_function
        recorders = getattr(train_function, "_tb_bnstats_recorders", None)
        if recorders is None:
            original, recorders = train_function, weakref.WeakSet()
            end_of_data = keras_capture.end_of_data_errors()

            @functools.wraps(original)
            def train_function(*args):  # (iterator) in TensorFlow, (state, iterator) in JAX, (data) in torch
                try:
                    logs = original(*args)
                    for rec in recorders:
                        rec.execution_ended()
                    return logs
                except end_of_data:
                    raise  # how Keras learns that a dataset ended: the epoch ends normally
                except BaseException:
                    for rec in list(recorders):
                        try:
                            rec.abandon()
                        except Exception:  # noqa: BLE001 - the user's exception goes on unchanged
                            pass
                    raise

            train_function._tb_bnstats_recorders = recorders
            self.model.train_function = train_function
        recorders.add(self._recorder)

    def _optimizer_step(self):
        return int(self.model.optimizer.iterations.numpy())

    def _make_probe(self):
        from tb_bnstats.frameworks.keras import passes as keras_passes
        from tb_bnstats.frameworks.keras.capture.layers import find_batchnorm_layers
        from tb_bnstats.measure import gap

        named = [(n, layer) for n, layer in find_batchnorm_layers(self.model) if self.options.selected(n)]
        if self.options.probe_batches is not None:
            x, y = gap.take_probe_batch(self.options.probe_batches)
            probe = keras_passes.GapProbe(self.model, x, y, named)
        else:  # the default: the first batch the train step runs on, kept by the capture
            probe = keras_passes.GapProbe(self.model, named_layers=named,
                                          batch_source=self._recorder.capture.first_batch)
        probe.compiled = _compiled(self.model)
        return probe

    def on_epoch_begin(self, epoch, logs=None):
        if self._off:
            return
        self._recorder.epoch_begin()

    # Not on_train_batch_end: a callback that defines it makes Keras convert
    # every step's logs to Python numbers on the training thread (a
    # device-to-host sync per step). The moments and logs of every step
    # come from the capture's ring instead.
    def on_train_batch_begin(self, batch, logs=None):
        # Keras passes the index of the first step of the next execution:
        # the steps this epoch has done.
        if batch > 0 and not self._off:
            self._recorder.steps_done(batch)

    def on_epoch_end(self, epoch, logs=None):
        if self._off:
            return
        val = {k[len("val_"):]: v for k, v in (logs or {}).items() if k.startswith("val_")}
        self._recorder.epoch_end(val, self._optimizer_step)

    def on_train_end(self, logs=None):
        if self._off:
            return
        self._recorder.end()
