"""Captures Keras 3 BatchNormalization moments inside the train step, with the
TensorFlow backend.

How: each BN layer gets two instance-level wrappers, installed once per layer
(idempotent across ``fit`` calls and callbacks):

* ``layer._moments`` -- Keras calls it in training mode right before updating
  the moving averages; the wrapper stores the exact ``(mean, variance)`` the
  layer normalizes with into two untracked ``tf.Variable`` s and counts the
  update. No second forward pass; works under XLA (``jit_compile``).
* ``layer.call`` -- when the layer runs in inference mode *inside a training
  step* (called with ``training=False``, or frozen with ``trainable=False``),
  it stores the moments of the input the layer saw and flags "not updating".

``model.train_step`` is wrapped to mark "inside a training step" while Keras
traces it, so evaluation and prediction graphs are left untouched, and to
publish, at the end of each step, everything the callback reads into one
buffer variable (one device-to-host read per logged step). The
wrappers add no weights: ``model.weights``, ``save`` and ``load_weights`` are
unchanged. Another backend gets a module of its own beside this one, behind
the :class:`tb_bnstats.capture.Capture` protocol.

Resuming: the update counts live in this process, not in the checkpoint. At
each ``fit``'s start :meth:`KerasCapture.resume` compares every trainable
layer's moving statistics with its initializers' values: different after
optimizer steps > 0 means restored, and the count goes on from the step;
equal means they were lost on restore (S3).
"""

import functools
import logging
import threading
import weakref

import numpy as np

from tb_bnstats.capture import LayerMoments, Reading
from tb_bnstats.capture.keras.layers import find_batchnorm_layers, initializer_values, layer_info, mean_metrics

logger = logging.getLogger("tb_bnstats")

_state = threading.local()
_SLOTS = weakref.WeakKeyDictionary()  # BN layer -> _LayerSlot
_HOOKS = weakref.WeakKeyDictionary()  # model -> _TrainStepHook


def _in_train_step():
    return getattr(_state, "train_step_depth", 0) > 0


class _LayerSlot:
    """Untracked variables holding one layer's last captured moments and its
    update count, made at train begin for a built layer (:meth:`resume`) or
    the first time the layer runs (a subclassed model builds its layers only
    then; under a trace, ``init_scope`` makes them outside the graph)."""

    def __init__(self, layer):
        self._layer = weakref.ref(layer)  # _SLOTS' values must not keep their keys alive
        self.hooks = weakref.WeakSet()
        self.channels = None

    def ensure_variables(self):
        if self.channels is not None:
            return
        import tensorflow as tf

        layer = self._layer()
        with tf.init_scope():
            channels = int(layer.moving_mean.shape[0])
            self.batch_mean = tf.Variable(tf.zeros([channels]), trainable=False, name="tb_bnstats_batch_mean")
            self.batch_var = tf.Variable(tf.zeros([channels]), trainable=False, name="tb_bnstats_batch_var")
            self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="tb_bnstats_updates")
            # Set by resume(): the update count this process starts from.
            self.resume_base = tf.Variable(0, dtype=tf.int64, trainable=False, name="tb_bnstats_resume_base")
            self.updating = tf.Variable(0, dtype=tf.int64, trainable=False, name="tb_bnstats_updating")
            # The values the moving averages start from, as found: the
            # initializers' output on a fresh layer, pre-trained values otherwise.
            self.init_mean = np.array(layer.moving_mean.numpy(), np.float64)
            self.init_var = np.array(layer.moving_variance.numpy(), np.float64)
        self.channels = channels

    def record(self, mean, variance, updating):
        import tensorflow as tf

        self.ensure_variables()
        self.batch_mean.assign(tf.reshape(tf.cast(mean, tf.float32), [self.channels]))
        self.batch_var.assign(tf.reshape(tf.cast(variance, tf.float32), [self.channels]))
        self.updating.assign(1 if updating else 0)
        if updating:
            self.updates.assign(tf.maximum(self.updates, self.resume_base) + 1)

    def resume(self, iterations):
        """Continues the update count of a layer restored from a checkpoint.

        A layer whose trainable moving statistics differ from its
        initializers' values, in a run whose optimizer has done
        ``iterations`` > 0 steps, and for which this process has counted no
        update yet, was restored after training: its count goes on from
        ``iterations`` (an estimate: Keras updates a trainable layer once per
        training step) at its first update here, and the debiased estimate
        starts from the initializers' values, so ``1 - m**t`` continues where
        it was. Returns ``"resumed"``, ``"at_initializer"`` (statistics
        equal to the initial values after ``iterations`` steps: not restored)
        or None (nothing to say: a fresh run, a frozen layer, or a count
        already going on in this process)."""
        layer = self._layer()
        if iterations <= 0 or not layer.trainable:
            return None
        self.ensure_variables()
        init_mean, init_var = initializer_values(layer)
        if (np.array_equal(layer.moving_mean.numpy(), init_mean)
                and np.array_equal(layer.moving_variance.numpy(), init_var)):
            return "at_initializer"
        if int(self.updates.numpy()) > 0:
            return None
        if int(self.resume_base.numpy()) == 0:  # not already resumed (by another callback on the model)
            self.resume_base.assign(int(iterations))
            self.init_mean, self.init_var = np.asarray(init_mean, np.float64), np.asarray(init_var, np.float64)
        return "resumed"


class _TrainStepHook:
    """Wraps ``model.train_step``: marks "inside a training step", records the
    order BN layers run in, and at the end of each step publishes everything
    the callback reads -- the optimizer's iteration count, each layer's
    captured and moving moments and update count, the running-mean metrics'
    totals -- into one float64 buffer variable, so the host reads one
    variable per logged step."""

    def __init__(self, model):
        self.execution_order = []  # BN layers, first call first, as traced
        self.layout = None  # (names of layers, channels, metric names) of `buffer`
        self.buffer = None
        self._buffers = {}
        self._warned = False
        original = model.train_step
        model_ref = weakref.ref(model)

        @functools.wraps(original)
        def train_step(*args, **kwargs):
            _state.train_step_depth = getattr(_state, "train_step_depth", 0) + 1
            try:
                logs = original(*args, **kwargs)
            finally:
                _state.train_step_depth -= 1
            if not _in_train_step():
                self._publish_or_warn(model_ref())
            return logs

        model.train_step = train_step

    def saw(self, layer):
        if not any(layer is seen for seen in self.execution_order):
            self.execution_order.append(layer)

    def _publish_or_warn(self, model):
        try:
            self._publish(model)
        except Exception as exc:  # noqa: BLE001 - never break the user's train step
            if not self._warned:
                self._warned = True
                logger.warning("tb_bnstats: cannot publish BN statistics from this train step: %s", exc)

    def _publish(self, model):
        import tensorflow as tf

        layers = [layer for layer in self.execution_order if _SLOTS[layer].channels is not None]
        slots = [_SLOTS[layer] for layer in layers]
        metrics = mean_metrics(model)
        parts = [model.optimizer.iterations]
        for layer, p in zip(layers, slots):
            parts += [p.updates, p.updating, p.batch_mean, p.batch_var, layer.moving_mean, layer.moving_variance]
        for _, metric in metrics:
            parts += [metric.total, metric.count]
        values = tf.concat([tf.reshape(tf.cast(tf.convert_to_tensor(v), tf.float64), [-1]) for v in parts], axis=0)
        layout = (tuple(layers), tuple(p.channels for p in slots), tuple(name for name, _ in metrics))
        size = 1 + sum(2 + 4 * p.channels for p in slots) + 2 * len(metrics)
        if size not in self._buffers:
            with tf.init_scope():
                self._buffers[size] = tf.Variable(tf.zeros([size], tf.float64), trainable=False,
                                                  name="tb_bnstats_buffer")
        self._buffers[size].assign(values)
        self.buffer, self.layout = self._buffers[size], layout


def _never_raise(fn, *args):
    """Capture code runs inside the user's train step: a failure there is
    logged once and the step goes on without it."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        if not getattr(_state, "warned", False):
            _state.warned = True
            logger.warning("tb_bnstats: capture failed inside the train step, statistics will be missing: %s", exc)
        return None


def _instrument_layer(layer, hook):
    """Installs the two wrappers on ``layer`` once; returns its slot."""
    from keras import backend, ops

    slot = _SLOTS.get(layer)
    if slot is not None:
        slot.hooks.add(hook)
        return slot
    slot = _LayerSlot(layer)
    slot.hooks.add(hook)
    original_moments = layer._moments
    original_call = layer.call

    def _moments(inputs, mask):
        mean, variance = original_moments(inputs, mask)
        _never_raise(slot.record, mean, variance, True)
        return mean, variance

    def _note_ran():
        slot.ensure_variables()
        for h in slot.hooks:
            h.saw(layer)

    def _record_inference_mode(inputs, mask):
        _note_ran()
        x = ops.cast(inputs, backend.result_type(inputs.dtype, "float32"))
        mean, variance = original_moments(x, mask)
        slot.record(mean, variance, updating=False)

    @functools.wraps(original_call)
    def call(inputs, training=None, mask=None):
        if _in_train_step():
            if training and layer.trainable:
                _never_raise(_note_ran)
            else:
                _never_raise(_record_inference_mode, inputs, mask)
        return original_call(inputs, training=training, mask=mask)

    layer._moments = _moments
    layer.call = call
    _SLOTS[layer] = slot
    return slot


class TensorFlowCapture:
    """Instruments ``model`` (idempotent) and reads its BN moments: a
    :class:`tb_bnstats.capture.Capture`.

    ``read()`` returns the moments of the last training step, with ``step`` =
    the optimizer's iteration count after that step.
    """

    def __init__(self, model):
        self.model = model
        self._named = find_batchnorm_layers(model)
        hook = _HOOKS.get(model)
        if hook is None:
            hook = _HOOKS[model] = _TrainStepHook(model)
            # A train function traced before this hook existed would bypass it.
            model.train_function = None
        self._hook = hook
        new_layers = [layer for _, layer in self._named if layer not in _SLOTS]
        self._slots = {name: _instrument_layer(layer, hook) for name, layer in self._named}
        if new_layers:
            model.train_function = None

    @property
    def names(self):
        """Names of every BN layer found, in tracking order."""
        return [name for name, _ in self._named]

    def _ran(self):
        """``[(name, layer)]`` of the BN layers the traced train step ran."""
        ran = {id(layer) for layer in self._hook.execution_order}
        return [(name, layer) for name, layer in self._named if id(layer) in ran]

    def layer_infos(self):
        """LayerInfo of every layer that ran in the traced train step, in
        execution order (depth 0 = closest to the input)."""
        order = {id(layer): i for i, layer in enumerate(self._hook.execution_order)}
        infos = [layer_info(name, layer, order[id(layer)], self._slots[name].init_mean, self._slots[name].init_var)
                 for name, layer in self._ran()]
        return sorted(infos, key=lambda info: info.depth)

    def resume(self, iterations):
        """At train begin: :meth:`_LayerSlot.resume` on every built BN layer;
        returns ``{name: "resumed" | "at_initializer"}`` of the layers
        concerned (an unbuilt layer is counted from 0 when it runs)."""
        states = {}
        for name, layer in self._named:
            if getattr(layer, "moving_mean", None) is not None:
                state = self._slots[name].resume(iterations)
                if state is not None:
                    states[name] = state
        return states

    def not_run(self):
        """Names of BN layers found in the model that the train step never ran."""
        ran = {name for name, _ in self._ran()}
        return [name for name, _ in self._named if name not in ran]

    def read(self) -> Reading:
        """The state published by the last training step: moments of every
        layer that ran, and ``metric_totals`` ``{name: (total, count)}``."""
        hook = self._hook
        if hook.buffer is None:
            return None
        values = hook.buffer.numpy()
        layers, channels, metric_names = hook.layout
        names = {id(layer): name for name, layer in self._named}
        out, offset = {}, 1
        for layer, c in zip(layers, channels):
            updates, updating = int(values[offset]), bool(values[offset + 1])
            chunk = values[offset + 2:offset + 2 + 4 * c].reshape(4, c)
            offset += 2 + 4 * c
            if id(layer) in names:
                slot = self._slots[names[id(layer)]]
                out[names[id(layer)]] = LayerMoments(
                    batch_mean=chunk[0], batch_var=chunk[1], moving_mean=chunk[2], moving_var=chunk[3],
                    updates=updates, updating=updating, init_mean=slot.init_mean, init_var=slot.init_var)
        totals = {name: (values[offset + 2 * i], values[offset + 2 * i + 1]) for i, name in enumerate(metric_names)}
        return Reading(step=int(values[0]), layers=out, metric_totals=totals)
