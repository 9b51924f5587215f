"""The Keras callback on tf_keras (Keras 2) models, against numpy moments of
the layers' real inputs: fused and non-fused kernels, renorm, a virtual
batch size; and a run that trains exactly as without it."""

import numpy as np
import pytest
import tensorflow as tf

import tb_bnstats

keras2 = tf.keras  # tf_keras under TF_USE_LEGACY_KERAS=1 (conftest)
BATCH = 16


def test_tf_keras_is_what_tf_keras_means():
    assert keras2.__name__.startswith("tf_keras"), keras2.__name__


def conv_net(seed=0, momentum=0.99, **bn):
    """conv -> BN (4-D: fused unless told) -> dense -> BN (2-D: non-fused) -> softmax."""
    keras2.utils.set_random_seed(seed)
    inputs = keras2.Input((8, 8, 3))
    h = keras2.layers.Conv2D(4, 3, name="conv")(inputs)
    h = keras2.layers.BatchNormalization(momentum=momentum, name="bn_conv", **bn)(h)
    h = keras2.layers.Flatten()(keras2.layers.ReLU()(h))
    h = keras2.layers.Dense(6, name="dense")(h)
    h = keras2.layers.BatchNormalization(momentum=momentum, name="bn_dense",
                                         **{k: v for k, v in bn.items() if k != "fused"})(h)
    outputs = keras2.layers.Dense(3, activation="softmax", name="head")(keras2.layers.ReLU()(h))
    model = keras2.Model(inputs, outputs)
    model.compile(keras2.optimizers.SGD(0.05), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def data(n=64, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(1.5, 2.0, size=(n, 8, 8, 3)).astype("float32"), rng.integers(0, 3, size=n)


class BNInputs(keras2.callbacks.Callback):
    """Before each step: the BN layers' inputs on that step's batch (the
    weights the step runs with); after it: their moving statistics."""

    def __init__(self, x, names):
        super().__init__()
        self.x, self.names, self.inputs, self.moving = x, names, [], []

    def on_train_begin(self, logs=None):
        layers = [self.model.get_layer(n) for n in self.names]
        self.probe = keras2.Model(self.model.inputs, [layer.input for layer in layers])
        self.layers = layers

    def on_train_batch_begin(self, batch, logs=None):
        # In training mode (upstream BN layers normalize with the batch's moments), the moving statistics
        # put back after: tf_keras updates them on every training-mode call.
        saved = [v.numpy() for v in self.model.non_trainable_weights]
        inputs = self.probe(self.x[batch * BATCH:(batch + 1) * BATCH], training=True)
        for v, value in zip(self.model.non_trainable_weights, saved):
            v.assign(value)
        self.inputs.append([np.asarray(t, np.float64) for t in inputs])

    def on_train_batch_end(self, batch, logs=None):
        self.moving.append([(layer.moving_mean.numpy().ravel(), layer.moving_variance.numpy().ravel())
                            for layer in self.layers])


@pytest.mark.parametrize("variant", ["fused", "non_fused", "renorm", "virtual_batch"])
def test_logged_moments_equal_numpy_moments_of_the_real_input(tmp_path, variant):
    bn = {"fused": {}, "non_fused": {"fused": False}, "renorm": {"renorm": True},
          "virtual_batch": {"virtual_batch_size": 4}}[variant]
    x, y = data()
    model = conv_net(**bn)
    names = ["bn_conv", "bn_dense"]
    assert model.get_layer("bn_conv").fused == (variant == "fused")
    recorder = BNInputs(x, names)
    cb = tb_bnstats.BNStatsCallback(tmp_path / "run", verbose=0, snapshot_every_n_steps=1)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[recorder, cb])
    run = tb_bnstats.load(tmp_path)["run"]
    assert sorted(run.layers) == names
    for k, name in enumerate(names):
        logged, layer = run.layers[name], model.get_layer(name)
        assert list(logged.snapshot_steps) == [1, 2, 3, 4]
        assert logged.info.moving_var_unbiased == bool(layer.fused) and logged.info.framework == "tf_keras"
        assert logged.info.ema_of == ("stddev" if variant == "renorm" else "variance")
        for i in range(4):
            h = recorder.inputs[i][k]
            if variant == "virtual_batch":
                # tf_keras reshapes the batch to [virtual_batch_size, B / virtual_batch_size, ...] and
                # normalizes along axis 0: ghost batch j holds rows j, j + B/4, ...; the moving averages
                # take the mean of the ghost batches' moments.
                ghosts = h.reshape((4, -1) + h.shape[1:])
                axes = (0,) + tuple(range(2, ghosts.ndim - 1))
                mean, var = ghosts.mean(axis=axes).mean(axis=0), ghosts.var(axis=axes).mean(axis=0)
            else:
                axes = tuple(range(h.ndim - 1))
                mean, var = h.mean(axis=axes), h.var(axis=axes)
            scale = np.abs(h).max()
            n = h.size / h.shape[-1]
            # The log holds the variance the moving one averages: var_B * n / (n - 1) for the fused kernel.
            comparable = var * n / (n - 1) if layer.fused else var
            np.testing.assert_allclose(logged.snapshots["batch_mean"][i], mean, rtol=1e-5, atol=1e-5 * scale)
            np.testing.assert_allclose(logged.snapshots["batch_var"][i], comparable, rtol=1e-5, atol=1e-5 * scale**2)
            moving_mean, moving_var = recorder.moving[i][k]
            np.testing.assert_allclose(logged.snapshots["moving_mean"][i], moving_mean, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(logged.snapshots["moving_var"][i], moving_var, rtol=1e-6, atol=1e-7)
            if layer.fused and variant == "fused":
                # The fused kernel averages var_B * n / (n - 1): the moving variance's update says so.
                before = recorder.moving[i - 1][k][1] if i else np.ones(h.shape[-1])
                np.testing.assert_allclose(moving_var, 0.99 * before + 0.01 * var * n / (n - 1), rtol=1e-5)
        np.testing.assert_array_equal(logged.series["updates"], [1, 2, 3, 4])


class SubclassedNet(keras2.Model):
    """:func:`conv_net` as a subclassed model: its layers are built (and
    tf_keras picks the fused kernel) only at the first train step."""

    def __init__(self, momentum):
        super().__init__()
        self.conv = keras2.layers.Conv2D(4, 3, name="conv")
        self.bn_conv = keras2.layers.BatchNormalization(momentum=momentum, name="bn_conv")
        self.dense = keras2.layers.Dense(6, name="dense")
        self.bn_dense = keras2.layers.BatchNormalization(momentum=momentum, name="bn_dense")
        self.head = keras2.layers.Dense(3, activation="softmax", name="head")

    def call(self, x, training=None):
        h = keras2.layers.Flatten()(tf.nn.relu(self.bn_conv(self.conv(x), training=training)))
        return self.head(tf.nn.relu(self.bn_dense(self.dense(h), training=training)))


@pytest.mark.parametrize("kind", ["functional", "subclassed"])
def test_a_healthy_fused_run_shows_no_variance_gap_and_no_finding(tmp_path, kind):
    """Momentum 0.9, 2 epochs of 64-sample batches on one fixed distribution:
    the moving variance (of Bessel-corrected variances) matches the batches'
    once compared like with like -- also when the layers are built in the
    first train step, after the callback found them (subclassed)."""
    rng = np.random.default_rng(0)
    x = rng.normal(1.5, 2.0, size=(1024, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, size=1024)
    if kind == "functional":
        model = conv_net(momentum=0.9)
    else:
        keras2.utils.set_random_seed(0)
        model = SubclassedNet(momentum=0.9)
        model.compile(keras2.optimizers.SGD(0.05), "sparse_categorical_crossentropy", metrics=["accuracy"])
        assert not model.built
    cb = tb_bnstats.BNStatsCallback(tmp_path / "run", verbose=0)
    model.fit(x, y, batch_size=64, epochs=3, verbose=0, callbacks=[cb])
    layer = tb_bnstats.load(tmp_path)["run"].layers["bn_conv"]
    assert layer.info.moving_var_unbiased
    tail = layer.series["log_var_ratio/mean"][-10:]
    n = 64 * 6 * 6
    # Uncorrected, the gap would be log(n / (n - 1)) on every step; corrected it is noise around 0.
    assert abs(np.median(tail)) < 0.5 * np.log(n / (n - 1)) + 0.02
    assert cb.findings == [], [f.message for f in cb.findings]


class CondNet(keras2.Model):
    """conv -> BN (fused) called inside a ``tf.cond`` (a nested graph of the
    train step) -> head."""

    def __init__(self):
        super().__init__()
        self.conv = keras2.layers.Conv2D(4, 3, name="conv")
        self.bn = keras2.layers.BatchNormalization(momentum=0.9, name="bn")
        self.head = keras2.layers.Dense(3, activation="softmax", name="head")
        self.use_bn = tf.Variable(True, trainable=False)

    def call(self, x, training=None):
        h = self.conv(x)
        h = tf.cond(self.use_bn, lambda: self.bn(h, training=training), lambda: tf.identity(h))
        return self.head(keras2.layers.Flatten()(h))


def test_a_fused_layer_inside_a_tf_cond_is_logged_with_its_values_per_channel(tmp_path):
    """The moments and values per channel of a layer in a nested graph reach
    the row through variables: each step's logged moments equal numpy moments
    of the layer's input (learning rate 0: the same conv output every epoch)."""
    x, y = data()
    keras2.utils.set_random_seed(0)
    model = CondNet()
    model(x[:2])  # built eagerly (its variables made outside the cond)
    model.compile(keras2.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    assert model.bn.fused
    cb = tb_bnstats.BNStatsCallback(tmp_path / "run", verbose=0, snapshot_every_n_steps=1)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    logged = tb_bnstats.load(tmp_path)["run"].layers["bn"]
    assert logged.info.moving_var_unbiased
    np.testing.assert_array_equal(logged.series["updates"], [1, 2, 3, 4])
    for i in range(4):
        h = np.asarray(model.conv(x[i * BATCH:(i + 1) * BATCH]), np.float64)
        n = h.size / h.shape[-1]
        axes = (0, 1, 2)
        np.testing.assert_allclose(logged.snapshots["batch_mean"][i], h.mean(axis=axes), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(logged.snapshots["batch_var"][i], h.var(axis=axes) * n / (n - 1), rtol=1e-5,
                                   atol=1e-5)


def test_the_callback_does_not_change_training(tmp_path):
    def losses(with_callback):
        tf.config.experimental.enable_op_determinism()
        x, y = data()
        model = conv_net(seed=3)
        seen = []
        cbs = [keras2.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(float(logs["loss"])))]
        if with_callback:
            cbs.append(tb_bnstats.BNStatsCallback(tmp_path / "run", verbose=0))
        model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, shuffle=False, callbacks=cbs)
        return seen, model

    without, plain = losses(False)
    with_cb, model = losses(True)
    assert with_cb == without  # bit-identical, step by step
    assert [w.name for w in model.weights] == [w.name for w in plain.weights]
    for a, b in zip(model.weights, plain.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    model.save_weights(str(tmp_path / "w.h5"))
    plain.load_weights(str(tmp_path / "w.h5"))  # the instrumented model's checkpoint loads into a plain one


def test_a_layer_frozen_or_called_in_inference_mode_is_logged_not_updating(tmp_path):
    x, y = data()
    model = conv_net()
    model.get_layer("bn_dense").trainable = False
    model.compile(keras2.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    cb = tb_bnstats.BNStatsCallback(tmp_path / "run", verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[cb])
    run = tb_bnstats.load(tmp_path)["run"]
    assert run.layers["bn_dense"].info.frozen
    np.testing.assert_array_equal(run.layers["bn_dense"].series["updates"], 0)
    np.testing.assert_array_equal(run.layers["bn_conv"].series["updates"], np.arange(1, 9))
