"""The findings of Flax runs, in Flax's words: real training, the diagnosis
made at close from the logs written."""

import numpy as np
from flax_models import LinenNet, NnxNet, batches, data, linen_state, make_linen_step, nnx_optimizer, nnx_step

import tb_bnstats
from tb_bnstats.flax import BNStatsMonitor


def _nnx_run(log_dir, steps, **model):
    net = NnxNet(**model)
    optimizer = nnx_optimizer(net)
    x, y = data(n=16 * steps, seed=1)
    with BNStatsMonitor(net, log_dir, verbose=0) as monitor:
        for xb, yb in batches(x, y, steps=steps):
            monitor.step(loss=nnx_step(net, optimizer, xb, yb))
    return monitor.findings


def _codes(findings):
    return sorted({(f.code, f.severity) for f in findings})


def test_momentum_0_99_for_100_steps_is_bn001_in_flax_words(tmp_path):
    findings = _nnx_run(tmp_path / "run", 100, momentum=0.99)
    assert ("BN001", "error") in _codes(findings), _codes(findings)
    bn001 = [f for f in findings if f.code == "BN001"]
    assert {n for f in bn001 for n in f.layers} >= {"bn1"}
    message = bn001[0].message
    assert "at momentum=0.99;" in message and "Use momentum=0.9 for runs this short" in message, message
    assert "call tb_bnstats.recalibrate(model, batches)" in message, message


def test_a_healthy_run_finds_nothing(tmp_path):
    findings = _nnx_run(tmp_path / "run", 80, momentum=0.9)
    assert findings == [], [(f.code, f.message) for f in findings]


def test_use_running_average_true_in_training_is_bn002(tmp_path):
    findings = _nnx_run(tmp_path / "run", 20, frozen=True)
    hits = [f for f in findings if f.code == "BN002" and "bn1" in f.layers]
    assert hits and hits[0].severity == "error", _codes(findings)
    assert "use_running_average=True" in hits[0].message
    run = tb_bnstats.load(tmp_path)["run"]
    assert not run.layers["bn1"].info.trainable and run.layers["block.bn2"].info.trainable
    assert np.all(run.layers["bn1"].series["updates"] == 0)
    assert "block.bn2" not in {n for f in findings if f.code == "BN002" for n in f.layers}


def test_a_linen_step_that_drops_batch_stats_is_bn002_with_the_flax_fix(tmp_path):
    module = LinenNet()
    variables, state = linen_state(module)
    step_fn = make_linen_step(store=False)  # apply_gradients, but batch_stats never written back
    x, y = data(n=16 * 20, seed=1)
    with BNStatsMonitor((module, variables), tmp_path / "run", verbose=0) as monitor:
        for xb, yb in batches(x, y, steps=20):
            state, metrics = step_fn(state, xb, yb)
            monitor.step(state, **metrics)
    hits = [f for f in monitor.findings if f.code == "BN002"]
    assert {n for f in hits for n in f.layers} == {"bn1", "block.bn2"}, _codes(monitor.findings)
    assert all(f.severity == "error" for f in hits)
    assert "did not store it" in hits[0].message and "state.replace(batch_stats=updates['batch_stats'])" in \
        hits[0].message
    run = tb_bnstats.load(tmp_path)["run"]
    assert run.layers["bn1"].info.trainable and np.all(run.layers["bn1"].series["updates"] == 0)
    # The running statistics logged are the state's: still Flax's initial 0 / 1.
    assert np.all(run.layers["bn1"].snapshots["moving_mean"] == 0)
    assert np.all(run.layers["bn1"].snapshots["moving_var"] == 1)
