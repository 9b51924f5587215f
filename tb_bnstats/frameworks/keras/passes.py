"""The Keras part of the measurements: forward passes that change nothing.

* :class:`MomentTap` wraps each BN layer's ``call`` for a while to hand out
  the exact moments of its input (Keras' own ``_moments``) and its output;
* :class:`StatelessRunner` runs the model through ``stateless_call``,
  threading non-trainable state (seed generators, BN averages) in tensors
  that are never assigned to the model;
* :func:`compile_pass`, :func:`to_tensors`, :func:`to_numpy` and
  :func:`sync_variables` are what depends on the backend: a pass is a
  ``tf.function`` with TensorFlow, ``jax.jit`` with JAX (the model's
  variables go in as arguments, so a compiled pass sees their current
  values), and runs eagerly under ``torch.no_grad()`` (and a fork of torch's random
  generators) with torch.
"""

import contextlib
import functools
import weakref

import numpy as np

from tb_bnstats import quantities
from tb_bnstats.frameworks.keras import internals
from tb_bnstats.frameworks.keras.capture import check_backend
from tb_bnstats.frameworks.keras.capture.layers import find_batchnorm_layers, index_by_identity
from tb_bnstats.measure import data as batches
from tb_bnstats.measure.gap import ProbeLayer, ProbeResult


class MomentTap:
    """Temporarily wraps the ``call`` of each BN layer: measures the moments
    of its input with the layer's own ``_moments`` (the class method, past any
    instance wrapper such as tb_bnstats' capture, whose counters must not
    move) and calls the layer with ``training=True`` (``force_training=False``:
    with the mode the caller passes). With ``frozen_batch_mode`` a frozen
    layer (``trainable=False``, which Keras keeps on its moving averages)
    normalizes with those batch moments too, as it will once recalibrated.
    While ``outputs`` is a dict it also receives each layer's output.
    Restores the layers' attributes exactly on exit."""

    def __init__(self, named_layers, force_training=True, frozen_batch_mode=False):
        self.named = named_layers
        self.force_training = bool(force_training)
        self.frozen_batch_mode = bool(frozen_batch_mode)
        self.sink = None
        self.outputs = None
        self._saved = []

    def __enter__(self):
        from keras import backend, ops

        for name, layer in self.named:
            saved = {attr: layer.__dict__[attr] for attr in ("call", internals.MOMENTS) if attr in layer.__dict__}
            self._saved.append((layer, saved))
            previous_call = layer.call
            class_moments = internals.class_moments(layer)

            def call(inputs, training=None, mask=None, _name=name, _layer=layer, _call=previous_call,
                     _moments=class_moments):
                if self.sink is not None:
                    x = ops.cast(inputs, backend.result_type(inputs.dtype, "float32"))
                    mean, var = _moments(_layer, x, mask)
                    channels = int(_layer.moving_mean.shape[0])
                    if mask is None:
                        count = ops.cast(ops.size(x) // channels, "float32")
                    else:  # Keras' mask covers every axis but the channels
                        count = ops.sum(ops.cast(mask, "float32"))
                    self.sink[_name] = (ops.reshape(mean, [channels]), ops.reshape(var, [channels]), count)
                if self.frozen_batch_mode and not _layer.trainable and not _layer.renorm:
                    out = _batch_normalized(_layer, inputs, _moments(_layer, inputs, mask))
                else:
                    out = _call(inputs, training=True if self.force_training else training, mask=mask)
                if self.outputs is not None:
                    self.outputs[_name] = out
                return out

            layer.call = call
            # The training branch calls self._moments: bypass instance wrappers.
            internals.set_moments(layer, class_moments.__get__(layer))
        return self

    def __exit__(self, *exc):
        for layer, saved in self._saved:
            for attr in ("call", internals.MOMENTS):
                if attr in saved:
                    layer.__dict__[attr] = saved[attr]
                else:
                    layer.__dict__.pop(attr, None)
        self._saved = []
        return False


def _batch_normalized(layer, inputs, moments):
    """``layer``'s output normalized with ``moments`` (Keras'
    ``BatchNormalization.call`` with batch moments, without the update)."""
    from keras import ops

    mean, var = moments
    return ops.cast(ops.batch_normalization(
        x=inputs, mean=mean, variance=var, axis=layer.axis, epsilon=layer.epsilon,
        offset=ops.cast(layer.beta, inputs.dtype) if layer.center else None,
        scale=ops.cast(layer.gamma, inputs.dtype) if layer.scale else None), layer.compute_dtype)


class StatelessRunner:
    """Runs ``model`` on batches through ``stateless_call``, threading the
    non-trainable state (seed generators, BN averages) from batch to batch in
    host-side tensors that are never assigned to the model.

    ``forward``: a pass made before by :func:`stateless_forward` for the
    same model, mode and tap, to reuse its trace (default: a new one)."""

    def __init__(self, model, training, tap=None, forward=None):
        from keras import ops

        self.model, self.training, self.tap = model, bool(training), tap
        self.trainable = [v.value for v in model.trainable_variables]
        self.state = [ops.copy(v.value) for v in model.non_trainable_variables]
        self._forward = forward or stateless_forward(weakref.ref(model), self.training, tap)

    def __call__(self, x):
        x = to_tensors(x)
        with quiet_retracing():
            out, new_state, moments = self._forward(x, self.trainable, self.state)
        self.state = list(new_state)
        return out, moments


def stateless_forward(model_ref, training, tap=None):
    """The compiled pass of :class:`StatelessRunner`: ``forward(x,
    trainable, state) -> (output, new state, {name: moments})`` through
    ``model_ref()``'s ``stateless_call`` in ``training`` mode, ``tap``
    (a :class:`MomentTap`, or None) handing out the BN layers' moments. The
    model is held by a weak reference: a pass kept in :data:`_KEPT` does not
    keep its model alive."""

    def forward(x, trainable, state):
        if tap is not None:
            tap.sink = {}
        try:
            out, new_state = model_ref().stateless_call(list(trainable), list(state), x, training=training)
            moments = dict(tap.sink) if tap is not None else {}
        finally:
            if tap is not None:
                tap.sink = None
        return out, new_state, moments

    return compile_pass(forward, reduce_retracing=True)


# {model: {key: what kept(model, key, make) made}}: compiled passes kept while their model lives, so that
# each is traced once, not at each measurement (the population measurement of every epoch, the checks on
# the model at the end of every fit).
_KEPT = weakref.WeakKeyDictionary()


def kept(model, key, make):
    """``make()``, made once per ``model`` and ``key`` and kept while the
    model lives (made anew each time for a model weak references cannot
    point at). What ``make`` returns must not hold the model but through a
    weak reference."""
    try:
        per_model = _KEPT.setdefault(model, {})
    except TypeError:
        return make()
    if key not in per_model:
        per_model[key] = make()
    return per_model[key]


class quiet_retracing:
    """Each call makes its own tf.function (the tap must be traced in): keep
    TensorFlow's "excessive retracing" warning about them out of the way."""

    def __enter__(self):
        import logging

        self._logger = logging.getLogger("tensorflow")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
        return False


def bn_layers(model):
    """``[(name, layer)]`` of the model's BN layers, named as tb_bnstats logs them.

    Raises:
        ValueError: the model is not built, or the Keras backend has no
            measurement support yet.
    """
    check_backend()
    if not model.built:
        raise ValueError("the model is not built: call it on data (or fit it) first")
    sync_variables(model)  # every measurement starts here
    return find_batchnorm_layers(model)


def compile_pass(fn, reduce_retracing=False):
    """``fn`` as one compiled pass of the running backend, traced once per
    input signature: ``tf.function`` (with ``reduce_retracing``: generalized
    shapes after a retrace), ``jax.jit``, or ``fn`` itself under
    ``torch.no_grad()`` with torch's random generators forked. ``fn`` must take every array it reads as an
    argument (a traced constant would not follow the model's updates)."""
    backend = check_backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # Under a name scope of its own: a layer named "_x" (Keras names a class "_X" so) is not a valid
        # root scope name, and Keras' own steps trace it under theirs.
        @functools.wraps(fn)
        def scoped(*args):
            with tf.name_scope("tb_bnstats"):
                return fn(*args)

        return tf.function(scoped, reduce_retracing=reduce_retracing)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    import torch

    @functools.wraps(fn)
    def without_gradients(*args):
        # Keras' torch Dropout without a seed draws from torch's global generator: the pass forks it,
        # so that training goes on with the random numbers it would have had.
        # Keras' torch backend runs on the current CUDA device when there is one: fork that one only.
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            return fn(*args)

    return without_gradients


def to_tensors(x):
    """A batch (array or structure of arrays) as backend tensors."""
    from keras import ops, tree

    return tree.map_structure(ops.convert_to_tensor, x)


def to_numpy(x):
    """A backend tensor as a numpy array (from any device)."""
    from keras import ops

    return ops.convert_to_numpy(x)


def sync_variables(model):
    """Makes the model's variables hold the training state before a pass
    reads or assigns them: with JAX, ``fit`` keeps the state apart from the
    variables during an epoch (it syncs them at each epoch's end) (Keras' ``jax_state_sync``, a no-op when they
    hold it already)."""
    internals.state_sync(model)


class GapProbe:
    """Runs batches through ``model`` in both modes.

    Args:
        model: a built Keras model.
        named_layers: ``[(name, bn_layer)]`` to measure
            (:func:`tb_bnstats.frameworks.keras.capture.layers.find_batchnorm_layers`).
        x, y: an optional fixed batch for :meth:`run` without arguments
            (the callback's probe batch).
        batch_source: instead of ``x, y``: a callable returning ``(x, y)``
            once the batch exists, None before (the first training batch,
            :meth:`tb_bnstats.frameworks.keras.capture.hooks.KerasCapture.first_batch`);
            asked until it answers.
        loss_fn: not taken: a Keras model's probe uses its compiled loss.

    Raises:
        ValueError: a ``loss_fn`` is given.
    """

    def __init__(self, model, x=None, y=None, named_layers=(), loss_fn=None, batch_source=None):
        if loss_fn is not None:
            raise ValueError("loss_fn is for PyTorch models; a Keras model's probe uses its compiled loss")
        self.model = model
        self._x = None if x is None else to_tensors(x)
        self._y = None if y is None else to_tensors(y)
        self._batch_source = batch_source if x is None else None
        self.tap = MomentTap(list(named_layers), force_training=False)
        self._fn = compile_pass(self._both_modes)

    def _fixed_batch(self):
        if self._x is None and self._batch_source is not None:
            batch = self._batch_source()
            if batch is not None:
                self._x, self._y = to_tensors(batch[0]), (None if batch[1] is None else to_tensors(batch[1]))
                self._batch_source = None
        return self._x, self._y

    @property
    def x(self):
        """The fixed batch's inputs (None while its source has none yet)."""
        return self._fixed_batch()[0]

    @property
    def y(self):
        """The fixed batch's labels, or None."""
        return self._fixed_batch()[1]

    def _both_modes(self, x, y, trainable, non_trainable, metrics_variables):
        """Traced once per batch shape: both passes, loss and metrics,
        per-layer moments and output norms, all from stateless calls on the
        variables' values given."""
        from keras import ops

        model, tap = self.model, self.tap
        trainable, non_trainable = list(trainable), list(non_trainable)
        moving = index_by_identity(model.non_trainable_variables)
        outputs = {}
        for mode in (True, False):
            tap.sink, tap.outputs = ({} if mode else None), {}
            y_pred, _ = model.stateless_call(trainable, non_trainable, x, training=mode)
            outputs[mode] = (y_pred, dict(tap.outputs), dict(tap.sink or {}))
            tap.sink = tap.outputs = None
        metrics = {mode: ({} if y is None else self._loss_and_metrics(trainable, non_trainable, list(metrics_variables),
                                                                       x, y, y_pred, mode))
                   for mode, (y_pred, _, _) in outputs.items()}

        def norms(a, b):
            a, b = ops.cast(a, "float32"), ops.cast(b, "float32")
            return ops.sum(ops.square(a - b)), ops.sum(ops.square(a))

        by_name = dict(tap.named)
        per_layer = {}
        for name, out_t in outputs[True][1].items():
            if name not in outputs[False][1] or name not in outputs[True][2]:
                continue
            mean, var, _ = outputs[True][2][name]
            layer = by_name[name]
            per_layer[name] = (mean, var, non_trainable[moving[id(layer.moving_mean)]],
                               non_trainable[moving[id(layer.moving_variance)]], norms(out_t, outputs[False][1][name]))
        y_t, y_i = batches.first_leaf(outputs[True][0]), batches.first_leaf(outputs[False][0])
        return metrics[True], metrics[False], per_layer, (y_t, y_i, norms(y_t, y_i))

    def _loss_and_metrics(self, trainable, non_trainable, metrics_variables, x, y, y_pred, training):
        from keras import ops

        model = self.model
        out = {}
        if internals.compiled_loss(model) is not None:
            loss, _ = model.stateless_compute_loss(trainable, non_trainable, metrics_variables,
                                                   x, y, y_pred, training=training)
            out["loss"] = loss
        compiled = internals.compiled_metrics(model)
        if compiled is not None and compiled.built:
            state = compiled.stateless_update_state([ops.zeros_like(v.value) for v in compiled.variables], y, y_pred)
            for k, v in compiled.stateless_result(state).items():
                out[k] = v
        return out

    def run(self, x=None, y=None) -> ProbeResult:
        """Both modes on ``(x, y)``, or on the fixed batch given at construction.

        Returns:
            :class:`ProbeResult`, or None when the fixed batch's source has
            none yet.
        """
        if x is None:
            x, y = self._fixed_batch()
            if x is None:
                return None
        else:
            x, y = to_tensors(x), (None if y is None else to_tensors(y))
        model = self.model
        sync_variables(model)
        values = lambda variables: [v.value for v in variables]  # noqa: E731
        with self.tap, quiet_retracing():
            train, inference, per_layer, (y_t, y_i, out_norms) = self._fn(
                x, y, values(model.trainable_variables), values(model.non_trainable_variables),
                values(model.metrics_variables))
        scalar = lambda d: {k: float(to_numpy(v)) for k, v in d.items() if np.size(to_numpy(v)) == 1}  # noqa: E731
        f64 = lambda t: np.asarray(to_numpy(t), np.float64).reshape(-1)  # noqa: E731
        layers = {name: ProbeLayer(f64(mean), f64(var), f64(mm), f64(mv), quantities.output_drift(*map(float, n)))
                  for name, (mean, var, mm, mv, n) in per_layer.items()}
        return ProbeResult(scalar(train), scalar(inference), layers, to_numpy(y_t), to_numpy(y_i),
                           tuple(float(v) for v in out_norms))


def is_frozen(layer):
    """Whether the layer is frozen (``trainable=False``: it normalizes with its moving averages)."""
    return not layer.trainable


def moving_statistics(layer):
    """``(moving_mean, moving_variance, epsilon)`` of a BN layer (float64)."""
    return (np.asarray(to_numpy(layer.moving_mean.value), np.float64),
            np.asarray(to_numpy(layer.moving_variance.value), np.float64), float(layer.epsilon))


@contextlib.contextmanager
def moment_passes(model, named, training, frozen_batch_mode=False):
    """The population measurement's passes: BN layers in training mode
    (:class:`MomentTap`; frozen ones too with ``frozen_batch_mode``), the
    others in ``training`` mode, through :class:`StatelessRunner`.

    The tap and its compiled pass are kept per model (:func:`kept`), keyed
    by the mode, the layers tapped and whether each is trainable, and the
    model's compiled loss and metrics: measuring again (every epoch, every
    ``fit``) reuses the trace.

    Yields:
        ``run(x) -> {name: (mean [C], var [C], n)}`` as numpy float64.
    """
    key = ("moment_passes", bool(training), bool(frozen_batch_mode),
           tuple((name, id(layer), bool(layer.trainable)) for name, layer in named),
           id(internals.compiled_loss(model)), id(internals.compiled_metrics(model)))

    def make():
        tap = MomentTap(named, frozen_batch_mode=frozen_batch_mode)
        return tap, stateless_forward(weakref.ref(model), bool(training), tap)

    tap, forward = kept(model, key, make)
    with tap:
        runner = StatelessRunner(model, training=training, tap=tap, forward=forward)

        def run(x):
            _, moments = runner(x)
            return {name: (np.asarray(to_numpy(mean), np.float64), np.asarray(to_numpy(var), np.float64),
                           float(to_numpy(count))) for name, (mean, var, count) in moments.items()}

        yield run


def write_population(layer, pop):
    """Writes population statistics into a BN layer's moving averages (and
    ``moving_stddev = sqrt(var + eps)`` for ``renorm=True`` layers, whose
    moving variance Keras derives from it as ``relu(std**2 - eps)``).

    Returns:
        ``undo()``, which puts every variable written back bit for bit.
    """
    dtype = np.dtype(layer.moving_mean.dtype)
    writes = [(layer.moving_mean, pop.mean.astype(dtype))]
    if getattr(layer, "renorm", False):
        std = np.sqrt(pop.var + layer.epsilon)
        writes.append((layer.moving_stddev, std.astype(np.dtype(layer.moving_stddev.dtype))))
        writes.append((layer.moving_variance, np.maximum(std * std - layer.epsilon, 0.0).astype(dtype)))
    else:
        writes.append((layer.moving_variance, pop.var.astype(dtype)))
    saved = [(var, np.array(var.numpy(), copy=True)) for var, _ in writes]

    def undo():
        for var, value in reversed(saved):
            var.assign(value)

    try:
        for var, value in writes:
            var.assign(value)
    except BaseException:
        undo()
        raise
    return undo
