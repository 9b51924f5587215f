"""Small Keras models and helpers shared by the capture tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402


@keras.saving.register_keras_serializable(package="tb_bnstats_tests")
class BlockWithBN(keras.layers.Layer):
    """A custom layer holding a BN inside (found through attribute tracking)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(units)
        self.bn = keras.layers.BatchNormalization(momentum=0.9, name="inner_bn")

    def call(self, x, training=None):
        return keras.ops.relu(self.bn(self.dense(x), training=training))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="tb_bnstats_tests")
class InferenceModeBN(keras.layers.Layer):
    """The classic bug: a BN always called with training=False. Keras 3.15's
    functional graph does not keep training=False given when building it;
    inside a layer's call it holds."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.bn = keras.layers.BatchNormalization(name="bn")

    def call(self, x):
        return self.bn(x, training=False)


def conv_net(jit_compile="auto", momentum=0.99, seed=0, **bn_kwargs):
    """Conv -> BN -> nested Sequential(conv, BN) -> custom block (Dense, BN) -> head."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization(momentum=momentum, name="bn1", **bn_kwargs)(x)
    x = keras.layers.ReLU()(x)
    nested = keras.Sequential(
        [keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(momentum=momentum, name="bn2", **bn_kwargs)],
        name="nested",
    )
    x = nested(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = BlockWithBN(5, name="block")(x)
    out = keras.layers.Dense(3)(x)
    model = keras.Model(inp, out, name="conv_net")
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=jit_compile)
    return model


def data(n=64, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(1.5, 2.0, size=(n, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, size=n)
    return x, y


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def deterministic():
    """The running backend's determinism switches (JAX on a CPU is deterministic)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True)


def sync(model):
    """Puts the training state back into the model's variables: with JAX they
    are held apart during ``fit`` (Keras' ``jax_state_sync``)."""
    getattr(model, "jax_state_sync", lambda: None)()


def capture_state(model):
    """What the running backend's capture keeps for ``model`` (update counts,
    rows written, every ring's rows), as numpy arrays: a measurement must
    leave all of it unchanged."""
    from tb_bnstats.frameworks.keras.capture import backend_module

    module = backend_module()
    hook = module._HOOKS[model]
    values = [np.array([module._SLOTS[layer].count() for layer in bn_layers(model) if layer in module._SLOTS]),
              np.array(hook.written())]
    for rows, _ in hook.read_rings():
        values += [rows.n, rows.step, rows.counts, rows.values, rows.moments]
    return values


def bn_layers(model):
    return [l for l in model._flatten_layers(include_self=False) if isinstance(l, keras.layers.BatchNormalization)]


def _bn_train_mode(layer, h):
    """A BN layer's training-mode output computed in numpy from the batch
    moments (touches no Keras state)."""
    h = np.asarray(h, np.float64)
    axes = tuple(range(h.ndim - 1))
    mean, var = h.mean(axis=axes), h.var(axis=axes)
    gamma, beta = layer.gamma.numpy().astype(np.float64), layer.beta.numpy().astype(np.float64)
    return ((h - mean) / np.sqrt(var + layer.epsilon) * gamma + beta).astype(np.float32)


def conv_net_bn_inputs(model, x):
    """The input of each BN layer of :func:`conv_net` in a training step on
    batch ``x``, computed layer by layer with BN done in numpy."""
    conv1 = model.layers[1]
    nested = model.get_layer("nested")
    block = model.get_layer("block")
    h1 = to_numpy(conv1(x))
    h = np.maximum(_bn_train_mode(model.get_layer("bn1"), h1), 0)
    h2 = to_numpy(nested.layers[0](h))
    h = _bn_train_mode(nested.layers[1], h2).mean(axis=(1, 2))
    h3 = to_numpy(block.dense(h))
    return [h1, h2, h3]


class BNInputRecorder(keras.callbacks.Callback):
    """Independently records, before each step, each BN layer's real input for
    that step's batch (see :func:`conv_net_bn_inputs`), and after each step
    the moving variables. Needs ``shuffle=False`` and the batch size."""

    def __init__(self, x, batch_size):
        super().__init__()
        self.x, self.batch_size = x, batch_size
        self.inputs, self.moving = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.batch_in_epoch = 0

    def on_train_batch_begin(self, batch, logs=None):
        start = self.batch_in_epoch * self.batch_size
        batch_x = self.x[start:start + self.batch_size]
        sync(self.model)
        self.inputs.append([np.asarray(h, np.float64) for h in conv_net_bn_inputs(self.model, batch_x)])

    def on_train_batch_end(self, batch, logs=None):
        self.batch_in_epoch += 1
        sync(self.model)
        self.moving.append([(l.moving_mean.numpy().astype(np.float64), l.moving_variance.numpy().astype(np.float64))
                            for l in bn_layers(self.model)])
