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

import functools

from tb_bnstats.capture.keras import check_backend
from tb_bnstats.capture.keras.layers import find_batchnorm_layers


class MomentTap:
    """Temporarily wraps the ``call`` of each BN layer: measures the moments
    of its input with the layer's own ``_moments`` (the class method, past any
    instance wrapper such as tb_bnstats' capture, whose counters must not
    move) and calls the layer with ``training=True`` (``force_training=False``:
    with the mode the caller passes). While ``outputs`` is a dict it also
    receives each layer's output. Restores the layers' attributes exactly on
    exit."""

    def __init__(self, named_layers, force_training=True):
        self.named = named_layers
        self.force_training = bool(force_training)
        self.sink = None
        self.outputs = None
        self._saved = []

    def __enter__(self):
        from keras import backend, ops

        for name, layer in self.named:
            saved = {attr: layer.__dict__[attr] for attr in ("call", "_moments") if attr in layer.__dict__}
            self._saved.append((layer, saved))
            previous_call = layer.call
            class_moments = type(layer)._moments

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
                out = _call(inputs, training=True if self.force_training else training, mask=mask)
                if self.outputs is not None:
                    self.outputs[_name] = out
                return out

            layer.call = call
            # The training branch calls self._moments: bypass instance wrappers.
            layer._moments = class_moments.__get__(layer)
        return self

    def __exit__(self, *exc):
        for layer, saved in self._saved:
            for attr in ("call", "_moments"):
                if attr in saved:
                    layer.__dict__[attr] = saved[attr]
                else:
                    layer.__dict__.pop(attr, None)
        self._saved = []
        return False


class StatelessRunner:
    """Runs ``model`` on batches through ``stateless_call``, threading the
    non-trainable state (seed generators, BN averages) from batch to batch in
    host-side tensors that are never assigned to the model."""

    def __init__(self, model, training, tap=None):
        from keras import ops

        self.model, self.training, self.tap = model, bool(training), tap
        self.trainable = [v.value for v in model.trainable_variables]
        self.state = [ops.copy(v.value) for v in model.non_trainable_variables]

        def forward(x, trainable, state):
            if tap is not None:
                tap.sink = {}
            try:
                out, new_state = model.stateless_call(list(trainable), list(state), x, training=self.training)
                moments = dict(tap.sink) if tap is not None else {}
            finally:
                if tap is not None:
                    tap.sink = None
            return out, new_state, moments

        self._forward = compile_pass(forward, reduce_retracing=True)

    def __call__(self, x):
        x = to_tensors(x)
        with quiet_retracing():
            out, new_state, moments = self._forward(x, self.trainable, self.state)
        self.state = list(new_state)
        return out, moments


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

        return tf.function(fn, reduce_retracing=reduce_retracing)
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
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()
