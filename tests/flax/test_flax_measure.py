"""The measurements on Flax models (tb_bnstats.frameworks.flax.passes):
``population_stats``, ``recalibrate``, ``gap_report`` and ``diagnose_model``
on an NNX module and on a Linen ``(module, variables)`` pair, and the
monitor's train/inference probe, each against an independent computation:
the model's own forward (eager, the BN inputs sowed by the model), numpy
moments, optax losses."""

import jax
import numpy as np
import optax
import pytest
from flax_models import LinenNet, NnxNet, data, linen_state, nnx_optimizer, nnx_step

import tb_bnstats
from flax import nnx
from tb_bnstats.flax import BNStatsMonitor


def loss_fn(out, y):
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()


def _leaves(tree):
    """Every array of ``tree`` (RNG keys and counts included) as numpy."""
    return [np.asarray(jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a)
            for a in jax.tree.leaves(tree)]


def _same(before, after):
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def _nnx_trained(steps=6, **kwargs):
    model = NnxNet(record=True, **kwargs)
    optimizer = nnx_optimizer(model)
    x, y = data(n=16 * steps, seed=3)
    for i in range(steps):
        nnx_step(model, optimizer, x[16 * i:16 * i + 16], y[16 * i:16 * i + 16])
    nnx.pop(model, nnx.Intermediate)
    return model


def _nnx_inputs(model, x, train):
    """Each BN's input in the model's own forward (a copy: training mode writes running statistics)."""
    ref = nnx.clone(model)
    ref.train() if train else ref.eval()
    out = ref(x)
    sown = nnx.pop(ref, nnx.Intermediate)
    return out, {"bn1": np.asarray(jax.tree.leaves(sown["bn1_in"])[0], np.float64),
                 "block.bn2": np.asarray(jax.tree.leaves(sown["block"]["bn2_in"])[0], np.float64)}


def _nnx_output(model, x, train):
    ref = nnx.clone(model)
    ref.train() if train else ref.eval()
    return ref(x)


def _linen_inputs(module, variables, x):
    _, sown = module.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"])
    sown = sown["intermediates"]
    return {"bn1": np.asarray(sown["bn1_in"][0], np.float64),
            "block.bn2": np.asarray(sown["block"]["bn2_in"][0], np.float64)}


def _pooled(inputs):
    """numpy's moments of every batch's BN input together, per channel."""
    whole = np.concatenate([i.reshape(-1, i.shape[-1]) for i in inputs])
    return whole.mean(0), whole.var(0), whole.shape[0]


def test_nnx_population_stats_equal_numpy_and_change_nothing():
    model = _nnx_trained()
    x, y = data(n=64, seed=4)
    before = _leaves(nnx.state(model))
    stats = tb_bnstats.population_stats(model, (x, y), num_samples=64, batch_size=16)
    _same(before, _leaves(nnx.state(model)))
    assert sorted(stats) == ["block.bn2", "bn1"]
    per_batch = [_nnx_inputs(model, x[i:i + 16], train=True)[1] for i in range(0, 64, 16)]
    for name, pop in stats.items():
        mean, var, count = _pooled([b[name] for b in per_batch])
        assert pop.count == count == 64 * 64 and pop.samples == 64 and pop.batches == 4 and pop.trainable
        np.testing.assert_allclose(pop.mean, mean, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(pop.var, var, rtol=1e-9)


def test_linen_population_stats_equal_numpy_and_change_nothing():
    module = LinenNet(record=True)
    variables, _ = linen_state(module)
    x, y = data(n=64, seed=4)
    before = _leaves(variables)
    stats = tb_bnstats.population_stats((module, variables), (x, y), num_samples=64, batch_size=16)
    _same(before, _leaves(variables))
    per_batch = [_linen_inputs(module, variables, x[i:i + 16]) for i in range(0, 64, 16)]
    for name, pop in stats.items():
        mean, var, count = _pooled([b[name] for b in per_batch])
        assert pop.count == count
        np.testing.assert_allclose(pop.mean, mean, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(pop.var, var, rtol=1e-9)


def _accuracy_and_loss(out, y):
    return float(np.mean(np.argmax(np.asarray(out), -1) == y)), float(loss_fn(out, y))


def test_nnx_recalibrate_writes_the_population_and_reports_the_gap():
    model = _nnx_trained(momentum=0.99)  # 6 steps at 0.99: the running statistics still near 0 / 1
    x, y = data(n=64, seed=4)
    xg, yg = x[:32], y[:32]
    # The report takes gap_data in batches of batch_size: training mode normalizes each with its own moments.
    acc_t, loss_t = _accuracy_and_loss(np.concatenate([_nnx_inputs(model, xg[i:i + 16], train=True)[0]
                                                       for i in (0, 16)]), yg)
    acc_i, loss_i = _accuracy_and_loss(_nnx_inputs(model, xg, train=False)[0], yg)
    report = tb_bnstats.recalibrate(model, (x, y), num_samples=64, batch_size=16, gap_data=(xg, yg), loss_fn=loss_fn)
    before, after = report.before, report.after
    assert before.accuracy_train_mode == acc_t and before.accuracy_inference_mode == acc_i
    assert before.loss_train_mode == pytest.approx(loss_t, rel=1e-6)
    assert before.loss_inference_mode == pytest.approx(loss_i, rel=1e-6)
    for name, layer in (("bn1", model.bn1), ("block.bn2", model.block.bn2)):
        pop = report.layers[name]
        np.testing.assert_array_equal(layer.mean[...], np.asarray(pop.mean, np.float32))
        np.testing.assert_array_equal(layer.var[...], np.asarray(pop.var, np.float32))
    acc_after, loss_after = _accuracy_and_loss(_nnx_inputs(model, xg, train=False)[0], yg)
    assert after.accuracy_inference_mode == acc_after
    assert after.loss_inference_mode == pytest.approx(loss_after, rel=1e-6)
    assert after.output_drift < before.output_drift / 4  # inference now normalizes as training does


def test_linen_recalibrate_and_gap_report():
    module = LinenNet(record=True, momentum=0.99)
    variables, _ = linen_state(module)
    x, y = data(n=64, seed=4)
    report = tb_bnstats.recalibrate((module, variables), (x, y), num_samples=64, batch_size=16, loss_fn=loss_fn)
    mean, _, _ = _pooled([_linen_inputs(module, variables, x[i:i + 16])["bn1"] for i in range(0, 64, 16)])
    np.testing.assert_allclose(variables["batch_stats"]["bn1"]["mean"], mean, rtol=1e-6, atol=1e-6)
    out = module.apply(variables, x[:32], train=False)
    gap = tb_bnstats.gap_report((module, variables), [(x[:32], y[:32])], loss_fn=loss_fn)
    acc, loss = _accuracy_and_loss(out, y[:32])
    assert gap.accuracy_inference_mode == acc and report.after.output_drift < report.before.output_drift / 4
    assert gap.loss_inference_mode == pytest.approx(loss, rel=1e-6)


class DropNet(nnx.Module):
    """Dense -> Dropout -> BatchNorm: dropout widens the BN input in training only."""

    def __init__(self, rate):
        rngs = nnx.Rngs(0)
        self.fc = nnx.Linear(8, 32, rngs=rngs)
        self.drop = nnx.Dropout(rate, rngs=rngs)
        self.bn = nnx.BatchNorm(32, momentum=0.9, rngs=rngs)
        self.out = nnx.Linear(32, 4, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.bn(self.drop(self.fc(x)))))


@pytest.mark.parametrize("rate", [0.5, 0.0])
def test_diagnose_model_finds_dropout_before_bn(rate):
    model = DropNet(rate)
    optimizer = nnx_optimizer(model, lr=0.01)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (64 * 16, 8)).astype(np.float32)
    y = rng.integers(0, 4, 64 * 16).astype(np.int32)
    for i in range(64):
        nnx_step(model, optimizer, x[16 * i:16 * i + 16], y[16 * i:16 * i + 16])
    before = _leaves(nnx.state(model))
    found = tb_bnstats.diagnose_model(model, (x, y), num_samples=512, batch_size=16)
    _same(before, _leaves(nnx.state(model)))
    codes = {f.code for f in found}
    assert codes == ({"BN004"} if rate else set()), [(f.code, f.message) for f in found]
    if rate:
        ratio = found[0].evidence["bn"]["train_vs_inference_log_var_ratio"]
        # Dropout(0.5) doubles the second moment of its input: the variance nearly so.
        assert 0.5 < ratio < np.log(2) + 0.1
        assert "nnx.Dropout" in found[0].message


def test_the_monitor_probes_an_nnx_model(tmp_path):
    model = NnxNet()
    optimizer = nnx_optimizer(model)
    x, y = data(n=160, seed=5)
    xv, yv = x[128:], y[128:]
    with BNStatsMonitor(model, tmp_path / "run", probe_data=(xv, yv), probe_every_n_steps=4, loss_fn=loss_fn,
                        population_data=(x[:128], y[:128]), population_every_n_steps=4, measure_budget=None,
                        verbose=0) as monitor:
        for i in range(8):
            monitor.step(loss=nnx_step(model, optimizer, x[16 * i:16 * i + 16], y[16 * i:16 * i + 16]))
    run = tb_bnstats.load(tmp_path)["run"]
    steps, accuracy = run.metrics["probe_inference/accuracy"]
    assert list(steps)[-1] == 8
    # At the last step: the model as it is now, in inference mode on the probe batch.
    acc, loss = _accuracy_and_loss(_nnx_output(model, xv, train=False), yv)
    assert accuracy[-1] == pytest.approx(acc)
    assert run.metrics["probe_inference/loss"][1][-1] == pytest.approx(loss, rel=1e-5)
    acc_t, loss_t = _accuracy_and_loss(_nnx_output(model, xv, train=True), yv)
    assert run.metrics["probe_train/loss"][1][-1] == pytest.approx(loss_t, rel=1e-5)
    stats = tb_bnstats.population_stats(model, (x[:128], y[:128]), num_samples=128, batch_size=32)
    layer = run.layers["bn1"]
    np.testing.assert_allclose(layer.series["population_mean"][-1], stats["bn1"].mean.mean(), rtol=1e-5)


def test_a_linen_monitor_refuses_the_probe(tmp_path):
    module = LinenNet()
    variables, _ = linen_state(module)
    with pytest.raises(ValueError, match="NNX models only"):
        BNStatsMonitor((module, variables), tmp_path / "run", probe_data=data())
