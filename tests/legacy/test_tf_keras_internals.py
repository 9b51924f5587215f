"""The private tf_keras (Keras 2) API tb_bnstats relies on
(:mod:`tb_bnstats.frameworks.keras.internals`): each symbol is there on the
installed tf-keras and behaves as the tf_keras capture uses it; with a
tf-keras whose internals changed, the callback warns once and ``fit`` runs
unchanged, with nothing written."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import tb_bnstats
from tb_bnstats.frameworks.keras import internals

keras2 = tf.keras  # tf_keras under TF_USE_LEGACY_KERAS=1 (conftest)
BASE = "tf_keras.src.layers.normalization.batch_normalization.BatchNormalizationBase"


def _bn(**kwargs):
    layer = keras2.layers.BatchNormalization(**kwargs)
    return layer


def test_every_tf_keras_symbol_is_there():
    assert internals.check(internals.TF_KERAS) == []


def test_the_base_class_is_that_of_both_batchnorm_layers():
    (base,) = internals.tf_keras_batchnorm_classes()
    assert issubclass(keras2.layers.BatchNormalization, base)
    assert issubclass(tf.compat.v1.layers.BatchNormalization, base)


def test_moments_returns_the_batch_mean_and_variance():
    x = np.random.default_rng(0).normal(2.0, 3.0, (16, 3)).astype("float32")
    layer = _bn()
    layer.build((None, 3))
    mean, var = internals.moments(layer)(tf.constant(x), [0], False)
    np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(var.numpy(), x.var(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_the_layer_calls_what_set_installs(fused):
    """2-D (non-fused): the layer calls ``_moments``; 4-D fused: ``_fused_batch_norm``."""
    layer, seen = _bn(fused=fused or None), []
    shape = (4, 2, 2, 3) if fused else (4, 3)
    layer.build(shape)
    original_moments, original_fused = internals.moments(layer), internals.fused_batch_norm(layer)

    def moments(inputs, reduction_axes, keep_dims, mask=None):
        seen.append("moments")
        return original_moments(inputs, reduction_axes, keep_dims, mask=mask)

    def fused_batch_norm(inputs, mask, training):
        seen.append("fused")
        return original_fused(inputs, mask, training)

    internals.set_moments(layer, moments)
    internals.set_fused_batch_norm(layer, fused_batch_norm)
    layer(np.ones(shape, "float32"), training=True)
    assert seen and seen[0] == ("fused" if fused else "moments")


def test_flatten_layers_finds_nested_layers():
    inner = keras2.Sequential([keras2.layers.Dense(3), keras2.layers.BatchNormalization(name="inner_bn")],
                              name="inner")
    inputs = keras2.Input((4,))
    model = keras2.Model(inputs, inner(keras2.layers.BatchNormalization(name="outer_bn")(inputs)))
    names = {layer.name for layer in internals.flatten_layers(model)}
    assert {"inner", "inner_bn", "outer_bn"} <= names and model.name not in names


def small_model(seed=0):
    keras2.utils.set_random_seed(seed)
    inputs = keras2.Input((6,))
    h = keras2.layers.BatchNormalization(name="bn")(keras2.layers.Dense(5, name="dense")(inputs))
    model = keras2.Model(inputs, keras2.layers.Dense(2, name="head")(keras2.layers.ReLU()(h)))
    model.compile(keras2.optimizers.SGD(0.05), "mse")
    return model


def _losses(callbacks):
    rng = np.random.default_rng(1)
    x, y = rng.normal(1.0, 2.0, (64, 6)).astype("float32"), rng.normal(size=(64, 2)).astype("float32")
    model, seen = small_model(3), []

    class Losses(keras2.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(logs["loss"]))

    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[Losses()] + callbacks)
    return seen, model


def test_a_missing_symbol_turns_monitoring_off_and_fit_runs_unchanged(tmp_path, monkeypatch):
    """A tf-keras without ``_fused_batch_norm`` (a 2-D model never calls it:
    tf-keras itself trains)."""
    without, _ = _losses([])
    (base,) = internals.tf_keras_batchnorm_classes()
    monkeypatch.delattr(base, "_fused_batch_norm")
    missing = internals.check(internals.TF_KERAS)
    assert [s.name for s, _ in missing] == [BASE + "._fused_batch_norm"]
    callback = tb_bnstats.BNStatsCallback(tmp_path / "run", verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with_cb, model = _losses([callback])
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning) and "tb_bnstats" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    message = str(ours[0].message)
    assert "_fused_batch_norm" in message and internals.TESTED_TF_KERAS in message
    assert internals.framework_version(internals.TF_KERAS) in message
    assert with_cb == without
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*"))
    assert "call" not in model.get_layer("bn").__dict__  # no layer wrapped
    with pytest.raises(internals.MissingInternal, match="_fused_batch_norm"):
        internals.fused_batch_norm(model.get_layer("bn"))
