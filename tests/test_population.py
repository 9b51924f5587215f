"""PreciseBN population statistics and recalibration, against numpy on the
same batches; recalibration is all-or-nothing."""

import os
import sys

import keras
import numpy as np
import pytest

import tb_bnstats
from keras_models import bn_layers, capture_state, conv_net, conv_net_bn_inputs, data
from tb_bnstats import quantities

pytestmark = pytest.mark.backend  # runs again under each Keras backend (Makefile, test-python)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "demo"))

NAMES = ["bn1", "nested/bn2", "block/inner_bn"]


def _variables(model):
    return [np.array(v.numpy(), copy=True) for v in model.variables]


def _assert_bit_identical(model, before):
    after = _variables(model)
    assert len(after) == len(before)
    for a, b in zip(after, before):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def test_pool_moments_is_the_law_of_total_variance():
    rng = np.random.default_rng(0)
    counts = np.array([16, 16, 16, 8, 3], np.float64)
    chunks = [rng.normal(rng.normal(5.0, 2.0), rng.uniform(0.5, 3.0), size=(int(n), 4)) for n in counts]
    means = np.stack([c.mean(0) for c in chunks])
    variances = np.stack([c.var(0) for c in chunks])
    mean, var, total = quantities.pool_moments(counts, means, variances)
    w = counts[:, None] / counts.sum()
    np.testing.assert_allclose(mean, (w * means).sum(0), rtol=1e-12)
    np.testing.assert_allclose(var, (w * (means**2 + variances)).sum(0) - ((w * means).sum(0)) ** 2, rtol=1e-9)
    allv = np.concatenate(chunks)
    np.testing.assert_allclose(var, allv.var(0), rtol=1e-12)
    assert total == counts.sum()


def test_population_stats_equal_numpy_over_the_same_batches_and_change_nothing(tmp_path):
    x, y = data(n=56)  # batches of 16, 16, 16 and 8: weighting by size matters
    model = conv_net()
    # Trained with the callback: its capture wrappers and counters must not move either.
    model.fit(x, y, batch_size=16, epochs=1, verbose=0,
              callbacks=[tb_bnstats.BNStatsCallback(tmp_path / "run", verbose=0)])
    captured = capture_state(model)
    before = _variables(model)
    stats = tb_bnstats.population_stats(model, (x, y), batch_size=16)
    _assert_bit_identical(model, before)
    for a, b in zip(capture_state(model), captured, strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(stats) == sorted(NAMES)
    inputs = [conv_net_bn_inputs(model, x[i:i + 16]) for i in range(0, 56, 16)]
    for k, name in enumerate(NAMES):
        per_batch = [np.asarray(b[k], np.float64).reshape(-1, b[k].shape[-1]) for b in inputs]
        pooled = np.concatenate(per_batch)
        np.testing.assert_allclose(stats[name].mean, pooled.mean(0), rtol=1e-5, atol=1e-5 * np.abs(pooled).max())
        np.testing.assert_allclose(stats[name].var, pooled.var(0), rtol=1e-5)
        assert stats[name].count == pooled.shape[0] and stats[name].batches == 4 and stats[name].samples == 56
    # num_samples stops after whole batches.
    assert tb_bnstats.population_stats(model, x, batch_size=16, num_samples=20)["bn1"].samples == 32


def _generator(x, y, fail_after, exc):
    for i in range(0, len(x), 16):
        if i // 16 == fail_after:
            raise exc
        yield x[i:i + 16], y[i:i + 16]


@pytest.mark.parametrize("exc", [ValueError("data broke"), KeyboardInterrupt()])
def test_recalibrate_interrupted_by_the_data_leaves_every_variable_bit_identical(exc):
    x, y = data(n=96)
    model = conv_net()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    before = _variables(model)
    with pytest.raises(type(exc)):
        tb_bnstats.recalibrate(model, _generator(x, y, fail_after=3, exc=exc))
    _assert_bit_identical(model, before)


def test_recalibrate_interrupted_while_writing_leaves_every_variable_bit_identical():
    x, y = data(n=64)
    model = conv_net(renorm=True)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    before = _variables(model)
    last = bn_layers(model)[-1].moving_variance
    original, calls = last.assign, []

    def assign(value):
        calls.append(1)
        if len(calls) == 1:  # the first write to it: earlier layers are already written
            raise KeyboardInterrupt
        return original(value)

    last.assign = assign
    with pytest.raises(KeyboardInterrupt):
        tb_bnstats.recalibrate(model, (x, y), batch_size=16)
    del last.assign
    _assert_bit_identical(model, before)
    # Uninterrupted, renorm layers get a consistent stddev.
    report = tb_bnstats.recalibrate(model, (x, y), batch_size=16)
    renorm = [(n, l) for n, l in zip(NAMES, bn_layers(model)) if l.renorm]
    assert len(renorm) == 2
    for name, layer in renorm:
        std = layer.moving_stddev.numpy().astype(np.float64)
        np.testing.assert_allclose(std, np.sqrt(report.layers[name].var + layer.epsilon), rtol=1e-6)
        np.testing.assert_allclose(layer.moving_variance.numpy(), report.layers[name].var, rtol=1e-4, atol=1e-6)


def test_classic_symptom_reproduced_and_repaired_by_numbers():
    import train as demo

    (x, y), (x_val, y_val) = demo.digits()
    model = demo.make_model(momentum=0.99)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # 44 steps: the averages are 36% converged
    val_before = model.evaluate(x_val, y_val, verbose=0)[1]
    report = tb_bnstats.recalibrate(model, (x, y))
    print(report)
    assert report.before.accuracy_train_mode > 0.9
    assert report.before.accuracy_gap > 0.5  # e.g. 0.99 in training mode, 0.24 in inference mode
    assert abs(report.after.accuracy_gap) <= 0.01
    assert report.after.accuracy_train_mode == report.before.accuracy_train_mode  # training mode untouched
    val_after = model.evaluate(x_val, y_val, verbose=0)[1]
    assert val_before < 0.5 < 0.9 < val_after
    assert sorted(report.layers) == ["block0_bn", "block1_bn", "block2_bn", "dense_bn"]


def test_frozen_layers_are_measured_but_not_recalibrated_by_default():
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    frozen = keras.layers.BatchNormalization(name="frozen")
    frozen.trainable = False
    h = frozen(keras.layers.Dense(6)(inp))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.BatchNormalization(name="live")(h)))
    x = np.random.default_rng(0).normal(3.0, 2.0, (64, 4)).astype("float32")
    stats = tb_bnstats.population_stats(model, x)
    assert set(stats) == {"frozen", "live"} and stats["frozen"].trainable is False
    report = tb_bnstats.recalibrate(model, x)
    assert report.skipped == ["frozen"]
    np.testing.assert_array_equal(frozen.moving_variance.numpy(), np.ones(6, np.float32))
    np.testing.assert_allclose(model.get_layer("live").moving_mean.numpy(), stats["live"].mean, rtol=1e-5, atol=1e-6)
