"""PreciseBN on a PyTorch model: ``tb_bnstats.recalibrate`` closes the
train/inference gap of a momentum=0.01 run, writes population statistics in
PyTorch's convention (checked against numpy), and is all or nothing;
``population_stats`` and ``gap_report`` change nothing (buffers, modes,
torch's random stream)."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import tb_bnstats
import torch_scenarios as scenarios
from tb_bnstats.torch import BNStatsMonitor

F = nn.functional
GAP_SAMPLES = 512  # recalibrate's default gap_samples: the report is on the first 512 rows


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return scenarios.digits(n=896)


def short_run(x, y, logdir):
    """One epoch (28 steps) at momentum=0.01 (Keras' 0.99): the running
    statistics are 1 - 0.99**28 = 25% converged. Seed 2: inference-mode
    accuracy 0.54 against 0.88 in train mode."""
    model = scenarios.dense_model(momentum=0.01, seed=2)
    with BNStatsMonitor(model, logdir, snapshot_every_n_steps=0, verbose=0) as monitor:
        scenarios.train(model, x, y, monitor, epochs=1)
    assert [(f.code, f.layers) for f in monitor.findings] == [("BN001", ["bn1", "bn2"])]
    return model


def snapshot(model):
    """Every state_dict entry (cloned), every module's training flag and
    every BN module's track_running_stats."""
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [(name, m.training) for name, m in model.named_modules()],
            [(name, m.track_running_stats) for name, m in model.named_modules() if isinstance(m, _BatchNorm)])


def assert_unchanged(model, before):
    state, modes, tracking = before
    now = model.state_dict()
    assert list(now) == list(state)
    for key, value in state.items():
        assert now[key].dtype == value.dtype and torch.equal(now[key], value), key
    assert [(name, m.training) for name, m in model.named_modules()] == modes
    assert [(name, m.track_running_stats) for name, m in model.named_modules() if isinstance(m, _BatchNorm)] == tracking


def measure(model, x, y, batch_size=32):
    """Our own accuracy and mean cross entropy of ``x[:GAP_SAMPLES]``: train
    mode on batches of ``batch_size`` (each normalized with its own moments),
    eval mode on all rows, under torch.no_grad. The train-mode forwards move
    the running statistics: the state_dict and every mode are put back."""
    xs, ys = torch.as_tensor(x[:GAP_SAMPLES]), torch.as_tensor(y[:GAP_SAMPLES])
    saved = snapshot(model)
    try:
        with torch.no_grad():
            model.eval()
            out_eval = model(xs)
            model.train()  # after the eval pass: these forwards update the running statistics
            out_train = torch.cat([model(xs[i:i + batch_size]) for i in range(0, len(xs), batch_size)])
    finally:
        model.load_state_dict(saved[0])
        for name, flag in saved[1]:
            model.get_submodule(name).training = flag
    assert_unchanged(model, saved)
    return {mode: ((out.argmax(1) == ys).double().mean().item(), F.cross_entropy(out, ys).item())
            for mode, out in (("train", out_train), ("eval", out_eval))}


def test_recalibrate_closes_the_gap_of_a_short_momentum_0_01_run(data, tmp_path):
    x, y = data
    model = short_run(x, y, str(tmp_path / "s1"))
    model.eval()
    model.bn1.train()  # an odd mix of modes, which recalibrate must leave as it is
    updates = [int(model.bn1.num_batches_tracked), int(model.bn2.num_batches_tracked)]
    before = measure(model, x, y)
    assert before["eval"][0] < before["train"][0] - 0.25  # "far below": 0.54 against 0.88

    report = tb_bnstats.recalibrate(model, (x, y), num_samples=len(x), loss_fn=F.cross_entropy)
    after = measure(model, x, y)
    assert after["train"] == pytest.approx(before["train"], abs=1e-12)  # train mode ignores running stats
    # Population statistics close the gap: inference is no longer below training mode (it is often a
    # point or two above it: each train-mode batch of 32 is normalized with its own noisy moments).
    assert after["eval"][0] >= after["train"][0] - 0.01
    assert abs(after["eval"][0] - after["train"][0]) <= 0.01
    # The report measured what we measured, before and after.
    assert report.samples == len(x) and report.skipped == [] and sorted(report.layers) == ["bn1", "bn2"]
    for gap, ours in ((report.before, before), (report.after, after)):
        assert gap.samples == GAP_SAMPLES
        assert gap.accuracy_train_mode == pytest.approx(ours["train"][0], abs=1e-9)
        assert gap.accuracy_inference_mode == pytest.approx(ours["eval"][0], abs=1e-9)
        assert gap.loss_train_mode == pytest.approx(ours["train"][1], rel=1e-5)
        assert gap.loss_inference_mode == pytest.approx(ours["eval"][1], rel=1e-5)
    assert report.before.output_drift > report.after.output_drift
    # Modes as they were; num_batches_tracked left alone.
    assert not model.training and model.bn1.training and not model.bn2.training
    assert [int(model.bn1.num_batches_tracked), int(model.bn2.num_batches_tracked)] == updates


def test_recalibrated_buffers_are_the_population_moments(data, tmp_path):
    """running_mean / running_var equal, in numpy, the mean and the
    Bessel-corrected variance over all 896 rows of each BN module's input:
    bn1's is fc1(x); bn2's has bn1 normalizing each batch of 32 with its own
    moments (as PreciseBN and training do)."""
    x, y = data
    model = short_run(x, y, str(tmp_path / "s1"))
    stats = tb_bnstats.population_stats(model, (x, y), num_samples=len(x))
    reference = scenarios.dense_bn_inputs(model, x)
    tb_bnstats.recalibrate(model, (x, y), num_samples=len(x))
    n = len(x)
    for name in ("bn1", "bn2"):
        inputs = reference[name]
        mean, var = inputs.mean(0), inputs.var(0)
        assert stats[name].count == n and stats[name].samples == n and stats[name].batches == 28
        np.testing.assert_allclose(stats[name].mean, mean, rtol=1e-4, atol=1e-6 * np.abs(mean).max())
        np.testing.assert_allclose(stats[name].var, var, rtol=1e-4)  # biased, as documented
        module = model.get_submodule(name)
        assert module.running_mean.dtype == module.running_var.dtype == torch.float32
        np.testing.assert_allclose(module.running_mean.double().numpy(), mean, rtol=1e-4,
                                   atol=1e-6 * np.abs(mean).max())
        np.testing.assert_allclose(module.running_var.double().numpy(), var * n / (n - 1), rtol=1e-4)


class Interrupted(Exception):
    pass


def batches_then(x, y, fail_after, error):
    """Batches of 32 rows, then ``error`` raised from the generator."""
    for i, start in enumerate(range(0, len(x), 32)):
        if i == fail_after:
            raise error
        yield x[start:start + 32], y[start:start + 32]


def batches_then_wrong_shape(x, y, good):
    """``good`` batches, then one the model cannot take: the forward raises
    inside the measurement pass (BN modules switched to batch mode)."""
    for start in range(0, 32 * good, 32):
        yield x[start:start + 32], y[start:start + 32]
    yield x[:32, :63], y[:32]


@pytest.mark.parametrize("how", ["generator_error", "generator_keyboard_interrupt", "forward_error",
                                 "keyboard_interrupt_after_writing"])
def test_interrupted_recalibrate_restores_everything(data, tmp_path, how):
    x, y = data
    model = short_run(x, y, str(tmp_path / "s1"))
    model.train()
    model.bn2.eval()
    before = snapshot(model)
    seen = {}
    loss_fn = None
    if how == "generator_error":
        source, expected = batches_then(x, y, 10, Interrupted("data source failed")), Interrupted
    elif how == "generator_keyboard_interrupt":
        source, expected = batches_then(x, y, 10, KeyboardInterrupt()), KeyboardInterrupt
    elif how == "forward_error":
        source, expected = batches_then_wrong_shape(x, y, 10), RuntimeError
    else:
        source, expected = (x, y), KeyboardInterrupt
        calls = {"n": 0}
        saved_mean = before[0]["bn1.running_mean"]

        def loss_fn(out, target):  # a user's loss, interrupted (Ctrl-C) in the "after" report
            calls["n"] += 1
            if calls["n"] > 2 * (GAP_SAMPLES // 32):  # past both modes of every "before" batch
                seen["written"] = not torch.equal(model.bn1.running_mean, saved_mean)
                raise KeyboardInterrupt
            return F.cross_entropy(out, target)

    with pytest.raises(expected):
        tb_bnstats.recalibrate(model, source, num_samples=len(x), loss_fn=loss_fn)
    assert_unchanged(model, before)
    if how == "keyboard_interrupt_after_writing":
        assert seen["written"]  # the population statistics were in the buffers when it was interrupted


def dropout_model(x, y):
    model = scenarios.dense_model(dropout_before_bn2=True)
    scenarios.train(model, x[:320], y[:320], None, epochs=1)
    return model


def test_population_stats_and_gap_report_change_nothing(data):
    x, y = data
    model = dropout_model(x, y)
    model.eval()
    model.bn2.train()
    xs = torch.as_tensor(x[:64])
    # The check can fail: a train-mode forward with Dropout draws from torch's generator.
    rng = torch.get_rng_state()
    with torch.no_grad():
        model.drop.train()
        model.drop(xs)
        model.drop.eval()
    assert not torch.equal(torch.get_rng_state(), rng)

    before, rng = snapshot(model), torch.get_rng_state()
    for training in (False, True):  # Dropout off, and on (fvcore's choice)
        stats = tb_bnstats.population_stats(model, (x, y), num_samples=256, training=training)
        assert sorted(stats) == ["bn1", "bn2"] and stats["bn2"].samples == 256
        assert_unchanged(model, before)
        assert torch.equal(torch.get_rng_state(), rng)
    assert np.all(stats["bn2"].var > 0)
    report = tb_bnstats.gap_report(model, [(x[:64], y[:64]), (x[64:128], y[64:128])], loss_fn=F.cross_entropy)
    assert report.samples == 128 and report.loss_train_mode is not None and report.agreement is not None
    assert_unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), rng)
    # And diagnose_model, which runs both.
    tb_bnstats.diagnose_model(model, (x, y), num_samples=256)
    assert_unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), rng)
