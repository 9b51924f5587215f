"""Flax over two forced host devices (the lane's conftest): the standard Linen
``TrainState`` step under ``jax.pmap(..., axis_name="batch")`` (Flax's
ImageNet example), the BatchNorms with and without ``axis_name``. Each
device's slice's moments, the global batch's and each device's running
statistics against numpy on the BN's real input (sowed by the model in the
same step), and the replica findings as for Keras' DataParallel."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax_models import BN, LinenNet, TrainState

import tb_bnstats
from flax import jax_utils
from tb_bnstats.flax import BNStatsMonitor

DEVICES = 2
PER_DEVICE = 8


def pmap_step(record=False, monitored=True):
    """Flax's pmapped step: gradients and loss averaged over "batch"; the two
    changed lines of the monitor as on one device."""
    mutable = ["batch_stats"] + (["bn_stats"] if monitored else []) + (["intermediates"] if record else [])

    def train_step(state, x, y):
        def loss_fn(params):
            logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x, train=True,
                                             mutable=mutable)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=jax.lax.pmean(grads, "batch"))
        state = state.replace(batch_stats=updates["batch_stats"])
        metrics = {"loss": jax.lax.pmean(loss, "batch")}
        if monitored:
            metrics["bn_stats"] = updates["bn_stats"]
        if record:
            metrics["inputs"] = updates["intermediates"]
        return state, metrics

    return jax.pmap(train_step, axis_name="batch")


def device_batches(steps, seed=0):
    """Each device its own shard: device 0's images ~ N(2, 1), device 1's ~
    N(-2, 3) (data split by source, not shuffled across devices)."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = np.stack([rng.normal(2.0, 1.0, (PER_DEVICE, 8, 8, 3)), rng.normal(-2.0, 3.0, (PER_DEVICE, 8, 8, 3))])
        yield x.astype(np.float32), rng.integers(0, 4, (DEVICES, PER_DEVICE)).astype(np.int32)


def train(log_dir, axis_name, steps, record=False):
    module = LinenNet(record=record, axis_name=axis_name)
    variables = module.init(jax.random.key(0), jnp.zeros((2, 8, 8, 3)), train=False)
    state = jax_utils.replicate(TrainState.create(apply_fn=module.apply, params=variables["params"],
                                                  batch_stats=variables["batch_stats"], tx=optax.sgd(0.05)))
    step_fn = pmap_step(record=record, monitored=log_dir is not None)
    monitor = BNStatsMonitor((module, variables), log_dir, snapshot_every_n_steps=1, verbose=0) if log_dir else None
    seen = []
    for x, y in device_batches(steps):
        state, metrics = step_fn(state, x, y)
        if record:
            sown = metrics.pop("inputs")
            seen.append({"inputs": {"bn1": np.asarray(sown["bn1_in"][0]),
                                    "block.bn2": np.asarray(sown["block"]["bn2_in"][0])},
                         "stats": jax.device_get(state.batch_stats), "loss": np.asarray(metrics["loss"])})
        if monitor:
            monitor.step(state, **metrics)
    if monitor:
        monitor.close()
    return monitor, seen, state


def _flat(x):
    return np.asarray(x, np.float64).reshape(-1, x.shape[-1])


@pytest.mark.parametrize("axis_name", [None, "batch"], ids=["unsynchronized", "synchronized"])
def test_each_device_and_the_global_batch_against_numpy(tmp_path, axis_name):
    steps = 4
    _, seen, _ = train(tmp_path / "run", axis_name, steps, record=True)
    run = tb_bnstats.load(tmp_path)["run"]
    for name in BN:
        layer = run.layers[name]
        info = layer.info
        assert info.replicas == DEVICES and info.moving_per_replica
        assert info.synchronized is (axis_name is not None)
        assert list(layer.replica_steps) == list(range(1, steps + 1))
        for k in range(steps):
            x = seen[k]["inputs"][name]  # [devices, per device, h, w, c]: each device's BN input
            parts, whole = [_flat(p) for p in x], _flat(x)
            scale = np.abs(x).max()
            np.testing.assert_allclose(layer.replica_snapshots["batch_mean"][k], [p.mean(0) for p in parts],
                                       rtol=0, atol=2e-6 * scale)
            np.testing.assert_allclose(layer.replica_snapshots["batch_var"][k], [p.var(0) for p in parts],
                                       rtol=1e-5, atol=2e-6 * scale ** 2)
            # The global batch: the devices' moments pooled.
            np.testing.assert_allclose(layer.snapshots["batch_mean"][k], whole.mean(0), rtol=0, atol=4e-6 * scale)
            np.testing.assert_allclose(layer.snapshots["batch_var"][k], whole.var(0), rtol=1e-5,
                                       atol=4e-6 * scale ** 2)
            # Each device's running statistics, as the replicated train state holds them after the step.
            stats = seen[k]["stats"]
            for part in name.split("."):
                stats = stats[part]
            np.testing.assert_array_equal(layer.replica_snapshots["moving_mean"][k], stats["mean"])
            np.testing.assert_array_equal(layer.replica_snapshots["moving_var"][k], stats["var"])
            np.testing.assert_array_equal(layer.snapshots["moving_mean"][k], stats["mean"][0])
        assert (layer.series["replica_samples/min"] == PER_DEVICE * 8 * 8).all()  # values per channel per device
        np.testing.assert_array_equal(layer.series["updates"], np.arange(1, steps + 1))
        if axis_name:  # synchronized: every device averaged the global moments into equal statistics
            np.testing.assert_allclose(np.diff(layer.replica_snapshots["moving_mean"], axis=1), 0, atol=1e-5)
    steps_logged, losses = run.metrics["train/loss"]
    np.testing.assert_allclose(losses, [s["loss"].mean() for s in seen], rtol=1e-6)


def test_training_is_bit_identical_with_and_without_the_monitor(tmp_path):
    _, _, plain = train(None, None, 3)
    _, _, monitored = train(tmp_path / "run", None, 3)
    for a, b in zip(jax.tree.leaves(jax.device_get((plain.params, plain.batch_stats))),
                    jax.tree.leaves(jax.device_get((monitored.params, monitored.batch_stats)))):
        np.testing.assert_array_equal(a, b)


def test_unsynchronized_devices_on_different_shards_are_bn013_bn014_bn015(tmp_path):
    monitor, _, _ = train(tmp_path / "run", None, 40)
    found = {(f.code, layer) for f in monitor.findings for layer in f.layers}
    assert {("BN013", "bn1"), ("BN014", "bn1"), ("BN015", "bn1")} <= found, \
        [(f.code, f.layers, f.message) for f in monitor.findings]
    bn013 = next(f for f in monitor.findings if f.code == "BN013")
    assert "axis_name=" in bn013.message and "2 replicas" in bn013.message, bn013.message
    bn015 = next(f for f in monitor.findings if f.code == "BN015")
    assert "jax.lax.pmean(batch_stats, axis_name)" in bn015.message, bn015.message


def test_synchronized_devices_raise_none_of_them(tmp_path):
    monitor, _, _ = train(tmp_path / "run", "batch", 40)
    codes = {f.code for f in monitor.findings}
    assert not codes & {"BN013", "BN014", "BN015"}, [(f.code, f.layers, f.message) for f in monitor.findings]
    layer = tb_bnstats.load(tmp_path)["run"].layers["bn1"]
    assert layer.info.synchronized and layer.info.replicas == DEVICES
    # The same data: the devices' slices still differ (what BN013 reads), but each normalized with the global batch.
    assert np.median(layer.series["replica_mean_gap/p50"][-10:]) > 0.25
