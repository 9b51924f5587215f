"""The Flax monitor (NNX and Linen) against independent computations on the
same batches: real training in real ``jit`` steps, logs read back through
TensorBoard's data provider, each BN's real input sowed by the model."""

import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax_models import (
    BN,
    LinenNet,
    NnxNet,
    batches,
    data,
    linen_recorded_inputs,
    linen_state,
    make_linen_step,
    nnx_optimizer,
    nnx_recorded_inputs,
    nnx_step,
    numpy_moments,
)

import tb_bnstats
from tb_bnstats.flax import BNStatsMonitor

STEPS = 8


def _check(run, inputs, running, momentum=0.9):
    assert sorted(run.layers) == sorted(BN)
    assert [run.layers[n].info.depth for n in BN] == [0, 1]  # the order the step ran them
    for name in BN:
        logged = run.layers[name]
        info = logged.info
        assert info.framework == "flax" and not info.moving_var_unbiased and info.momentum == pytest.approx(momentum)
        assert info.trainable and info.replicas == 1
        assert list(logged.snapshot_steps) == list(range(1, STEPS + 1))
        for i in range(STEPS):
            mean, var = numpy_moments(inputs[i][name])
            scale = np.abs(inputs[i][name]).max()
            np.testing.assert_allclose(logged.snapshots["batch_mean"][i], mean, rtol=0, atol=2e-6 * scale)
            np.testing.assert_allclose(logged.snapshots["batch_var"][i], var, rtol=1e-5, atol=2e-6 * scale**2)
            np.testing.assert_array_equal(logged.snapshots["moving_mean"][i], running[i][name][0])
            np.testing.assert_array_equal(logged.snapshots["moving_var"][i], running[i][name][1])
        np.testing.assert_array_equal(logged.series["updates"], np.arange(1, STEPS + 1))
        np.testing.assert_allclose(logged.series["convergence"], 1 - momentum ** np.arange(1, STEPS + 1), rtol=1e-6)


def test_nnx_logged_moments_equal_numpy_moments_of_the_real_input(tmp_path):
    model = NnxNet(record=True)
    optimizer = nnx_optimizer(model)
    x, y = data()
    inputs, running, losses = [], [], []
    with BNStatsMonitor(model, tmp_path / "run", snapshot_every_n_steps=1, verbose=0) as monitor:
        for xb, yb in batches(x, y, steps=STEPS):
            loss = nnx_step(model, optimizer, xb, yb)
            monitor.step(loss=loss)
            inputs.append(nnx_recorded_inputs(model))
            running.append({"bn1": (np.asarray(model.bn1.mean[...]), np.asarray(model.bn1.var[...])),
                            "block.bn2": (np.asarray(model.block.bn2.mean[...]),
                                          np.asarray(model.block.bn2.var[...]))})
            losses.append(float(loss))
    run = tb_bnstats.load(tmp_path)["run"]
    _check(run, inputs, running)
    steps, values = run.metrics["train/loss"]
    assert list(steps) == list(range(1, STEPS + 1))
    np.testing.assert_allclose(values, losses, rtol=1e-6)
    assert monitor.capture.reads <= 2  # the ring read in blocks, not per step
    assert not hasattr(model.bn1, "tb_bnstats_moments")  # the side channel removed at close


def test_linen_logged_moments_equal_numpy_moments_of_the_real_input(tmp_path):
    module = LinenNet(record=True)
    variables, state = linen_state(module)
    step_fn = make_linen_step(record=True)
    x, y = data()
    inputs, running, losses = [], [], []
    with BNStatsMonitor((module, variables), tmp_path / "run", snapshot_every_n_steps=1, verbose=0) as monitor:
        for xb, yb in batches(x, y, steps=STEPS):
            state, metrics = step_fn(state, xb, yb)
            inputs.append(linen_recorded_inputs(metrics))
            monitor.step(state, **metrics)
            stats = state.batch_stats
            running.append({"bn1": (np.asarray(stats["bn1"]["mean"]), np.asarray(stats["bn1"]["var"])),
                            "block.bn2": (np.asarray(stats["block"]["bn2"]["mean"]),
                                          np.asarray(stats["block"]["bn2"]["var"]))})
            losses.append(float(metrics["loss"]))
    run = tb_bnstats.load(tmp_path)["run"]
    _check(run, inputs, running)
    np.testing.assert_allclose(run.metrics["train/loss"][1], losses, rtol=1e-6)


def _nnx_losses(monitor_dir=None):
    model = NnxNet()
    optimizer = nnx_optimizer(model)
    x, y = data()
    monitor = BNStatsMonitor(model, monitor_dir, verbose=0) if monitor_dir else None
    losses = []
    for xb, yb in batches(x, y, steps=STEPS):
        loss = nnx_step(model, optimizer, xb, yb)
        if monitor:
            monitor.step(loss=loss)
        losses.append(np.asarray(loss))
    if monitor:
        monitor.close()
    return np.array(losses), jax.tree.leaves(jax.device_get(__import__("flax").nnx.state(model)))


def _linen_losses(monitored):
    module = LinenNet()
    variables, state = linen_state(module)
    step_fn = make_linen_step(monitored=monitored is not None)
    x, y = data()
    monitor = BNStatsMonitor((module, variables), monitored, verbose=0) if monitored else None
    losses = []
    for xb, yb in batches(x, y, steps=STEPS):
        state, metrics = step_fn(state, xb, yb)
        if monitor:
            monitor.step(state, **metrics)
        losses.append(np.asarray(metrics["loss"]))
    if monitor:
        monitor.close()
    return np.array(losses), jax.tree.leaves(jax.device_get((state.params, state.batch_stats)))


@pytest.mark.parametrize("train", [_nnx_losses, _linen_losses], ids=["nnx", "linen"])
def test_training_is_bit_identical_with_and_without_the_monitor(tmp_path, train):
    plain_losses, plain_state = train(None)
    losses, state = train(str(tmp_path / "run"))
    np.testing.assert_array_equal(losses, plain_losses)
    assert len(state) == len(plain_state)  # nothing of the monitor left in the model's state
    for a, b in zip(state, plain_state):
        np.testing.assert_array_equal(a, b)
    assert tb_bnstats.load(tmp_path)["run"].layers["bn1"].series["updates"][-1] == STEPS


def test_a_flax_process_imports_no_other_framework(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(__import__('os').path.dirname(__file__))!r})
        from flax_models import NnxNet, nnx_optimizer, nnx_step, data, batches
        from tb_bnstats.flax import BNStatsMonitor
        model = NnxNet(); opt = nnx_optimizer(model); x, y = data()
        with BNStatsMonitor(model, {str(tmp_path / "run")!r}, verbose=0, probe_data=(x[:16], y[:16]),
                            probe_every_n_steps=1, measure_budget=None) as monitor:
            for xb, yb in batches(x, y, steps=3):
                monitor.step(loss=nnx_step(model, opt, xb, yb))
        import tb_bnstats
        tb_bnstats.recalibrate(model, (x, y), num_samples=32, batch_size=16)
        bad = sorted(m for m in ("tensorflow", "keras", "torch", "tf_keras") if m in sys.modules)
        assert not bad, bad
        print("clean")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr[-2000:]


def test_bad_input_is_refused_at_construction(tmp_path):
    with pytest.raises(TypeError, match="nnx.Module or a Linen"):
        BNStatsMonitor(object(), tmp_path / "run")
    with pytest.raises(TypeError):
        BNStatsMonitor(NnxNet(), tmp_path / "run", no_such_option=1)
    with pytest.raises(ValueError, match="loss_fn"):
        BNStatsMonitor(NnxNet(), tmp_path / "run", loss_fn=1)
