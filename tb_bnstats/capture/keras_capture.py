"""Captures Keras 3 BatchNormalization moments inside the train step.

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
traces it, so evaluation and prediction graphs are left untouched. The
wrappers add no weights: ``model.weights``, ``save`` and ``load_weights`` are
unchanged. TensorFlow backend only (the seam for JAX/torch is this module).
"""

import functools
import logging
import threading
import weakref

import numpy as np

from tb_bnstats import metadata
from tb_bnstats.capture import LayerMoments, Reading

logger = logging.getLogger("tb_bnstats")

_state = threading.local()
_PROBES = weakref.WeakKeyDictionary()  # BN layer -> _LayerProbe
_HOOKS = weakref.WeakKeyDictionary()  # model -> _TrainStepHook


def _in_train_step():
    return getattr(_state, "train_step_depth", 0) > 0


def find_batchnorm_layers(model):
    """Every ``keras.layers.BatchNormalization`` (subclasses included) at any
    depth -- nested Functional/Sequential models, custom layers, subclassed
    models -- as ``[(unique_name, layer)]`` in tracking order. Names are
    Keras' layer paths, made unique with a ``#k`` suffix if needed."""
    import keras

    found, seen, used = [], set(), set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) and id(layer) not in seen:
            seen.add(id(layer))
            name = getattr(layer, "path", None) or layer.name
            base, k = name, 2
            while name in used:
                name, k = f"{base}#{k}", k + 1
            used.add(name)
            found.append((name, layer))
    return found


class _LayerProbe:
    """Untracked variables holding one layer's last captured moments, made
    the first time the layer runs (a subclassed model builds its layers only
    then; under a trace, ``init_scope`` makes them outside the graph)."""

    def __init__(self, layer):
        self.layer = layer
        self.hooks = weakref.WeakSet()
        self.channels = None

    def ensure_variables(self):
        if self.channels is not None:
            return
        import tensorflow as tf

        layer = self.layer
        with tf.init_scope():
            channels = int(layer.moving_mean.shape[0])
            self.batch_mean = tf.Variable(tf.zeros([channels]), trainable=False, name="tb_bnstats_batch_mean")
            self.batch_var = tf.Variable(tf.zeros([channels]), trainable=False, name="tb_bnstats_batch_var")
            self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="tb_bnstats_updates")
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
            self.updates.assign_add(1)


class _TrainStepHook:
    """Marks the model's train step and records the order BN layers run in."""

    def __init__(self, model):
        self.execution_order = []  # BN layers, first call first, as traced
        original = model.train_step

        @functools.wraps(original)
        def train_step(*args, **kwargs):
            _state.train_step_depth = getattr(_state, "train_step_depth", 0) + 1
            try:
                return original(*args, **kwargs)
            finally:
                _state.train_step_depth -= 1

        model.train_step = train_step

    def saw(self, layer):
        if not any(layer is seen for seen in self.execution_order):
            self.execution_order.append(layer)


def _instrument_layer(layer, hook):
    """Installs the two wrappers on ``layer`` once; returns its probe."""
    from keras import backend, ops

    probe = _PROBES.get(layer)
    if probe is not None:
        probe.hooks.add(hook)
        return probe
    probe = _LayerProbe(layer)
    probe.hooks.add(hook)
    original_moments = layer._moments
    original_call = layer.call

    def _moments(inputs, mask):
        mean, variance = original_moments(inputs, mask)
        probe.record(mean, variance, updating=True)
        return mean, variance

    @functools.wraps(original_call)
    def call(inputs, training=None, mask=None):
        if _in_train_step():
            probe.ensure_variables()
            for h in probe.hooks:
                h.saw(layer)
            if not (training and layer.trainable):
                x = ops.cast(inputs, backend.result_type(inputs.dtype, "float32"))
                mean, variance = original_moments(x, mask)
                probe.record(mean, variance, updating=False)
        return original_call(inputs, training=training, mask=mask)

    layer._moments = _moments
    layer.call = call
    _PROBES[layer] = probe
    return probe


def _layer_info(name, layer, depth):
    return metadata.LayerInfo(
        name=name,
        channels=int(layer.moving_mean.shape[0]),
        momentum=float(layer.momentum),
        epsilon=float(layer.epsilon),
        init_mean=float(np.mean(_PROBES[layer].init_mean)),
        init_var=float(np.mean(_PROBES[layer].init_var)),
        ema_of="stddev" if getattr(layer, "renorm", False) else "variance",
        moving_var_unbiased=False,  # Keras 3 averages the biased batch variance
        depth=depth,
        layer_class=type(layer).__name__,
        framework="keras",
        trainable=bool(layer.trainable),
        synchronized=bool(getattr(layer, "synchronized", False)),
        renorm=bool(getattr(layer, "renorm", False)),
    )


class KerasCapture:
    """Instruments ``model`` (idempotent) and reads its BN moments.

    ``read()`` returns the moments of the last training step, with ``step`` =
    the optimizer's iteration count after that step.
    """

    def __init__(self, model):
        import keras

        if keras.backend.backend() != "tensorflow":
            raise NotImplementedError(
                f"tb_bnstats captures BN moments with the TensorFlow backend; KERAS_BACKEND is "
                f"{keras.backend.backend()!r}")
        self.model = model
        self._named = find_batchnorm_layers(model)
        hook = _HOOKS.get(model)
        if hook is None:
            hook = _HOOKS[model] = _TrainStepHook(model)
            # A train function traced before this hook existed would bypass it.
            model.train_function = None
        self._hook = hook
        new_layers = [layer for _, layer in self._named if layer not in _PROBES]
        self._probes = {name: _instrument_layer(layer, hook) for name, layer in self._named}
        if new_layers:
            model.train_function = None
        self._read_fn = None

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
        infos = [_layer_info(name, layer, order[id(layer)]) for name, layer in self._ran()]
        return sorted(infos, key=lambda info: info.depth)

    def not_run(self):
        """Names of BN layers found in the model that the train step never ran."""
        ran = {name for name, _ in self._ran()}
        return [name for name, _ in self._named if name not in ran]

    def _build_read_fn(self, named):
        import tensorflow as tf

        layers = [layer for _, layer in named]
        probes = [self._probes[name] for name, _ in named]
        iterations = self.model.optimizer.iterations

        @tf.function(autograph=False)
        def read():
            floats = tf.concat(
                [tf.zeros([0])] + [tf.reshape(tf.cast(tf.convert_to_tensor(v), tf.float32), [-1])
                                   for layer, p in zip(layers, probes)
                                   for v in (p.batch_mean, p.batch_var, layer.moving_mean, layer.moving_variance)],
                axis=0)
            ints = tf.stack([p.updates for p in probes] + [p.updating for p in probes]
                            + [tf.cast(tf.convert_to_tensor(iterations), tf.int64)])
            return floats, ints

        return read

    def read(self) -> Reading:
        """The moments of the last training step of every layer that ran."""
        named = self._ran()
        if self._read_fn is None or self._read_fn[0] != [name for name, _ in named]:
            self._read_fn = ([name for name, _ in named], self._build_read_fn(named))
        floats, ints = (t.numpy() for t in self._read_fn[1]())
        n = len(named)
        out, offset = {}, 0
        for i, (name, _) in enumerate(named):
            probe = self._probes[name]
            c = probe.channels
            chunk = floats[offset:offset + 4 * c].astype(np.float64).reshape(4, c)
            offset += 4 * c
            out[name] = LayerMoments(
                batch_mean=chunk[0], batch_var=chunk[1], moving_mean=chunk[2], moving_var=chunk[3],
                updates=int(ints[i]), updating=bool(ints[n + i]),
                init_mean=probe.init_mean, init_var=probe.init_var,
            )
        return Reading(step=int(ints[-1]), layers=out)
