"""The PyTorch monitor against independent computations on the same batches:
real training, logs read back through TensorBoard's data provider."""

import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import tb_bnstats
from tb_bnstats.torch import BNStatsMonitor
from torch_models import RESNET_BN, InputRecorder, SmallResNet, assert_close, bessel, channel_axes, data, train

torch.set_num_threads(1)


def _dense():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(192, 12, bias=False), nn.BatchNorm1d(12), nn.ReLU(),
                         nn.Linear(12, 4))


def _dense_momentum_0_01():
    """Below MIN_MOMENTUM_TO_INVERT: the moments are computed from the input, not read off the update."""
    model = _dense()
    model[2].momentum = 0.01
    return model


class _Sequence(nn.Module):
    """BatchNorm1d on [N, C, L] input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Conv1d(3, 6, 1)
        self.norm = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 4)

    def forward(self, x):
        return self.out(self.norm(self.proj(x.flatten(2))).mean(2))


def _resnet():
    torch.manual_seed(0)
    return SmallResNet()


def _check_against_recorder(run, recorder, names, momentum=0.9):
    assert sorted(run.layers) == sorted(names)
    assert [run.layers[n].info.depth for n in names] == list(range(len(names)))  # forward order
    for name in names:
        logged = run.layers[name]
        info = logged.info
        assert info.framework == "pytorch" and info.moving_var_unbiased and info.momentum == pytest.approx(momentum)
        steps = logged.snapshot_steps
        assert list(steps) == list(range(1, len(recorder.inputs) + 1))
        for i in range(len(steps)):
            x = recorder.inputs[i][name]
            axes = channel_axes(x)
            n = x.size / x.shape[1]
            scale = np.abs(x).max()
            assert_close(logged.snapshots["batch_mean"][i], x.mean(axis=axes), scale)
            # Logged in running_var's convention: the Bessel-corrected batch variance.
            assert_close(logged.snapshots["batch_var"][i], bessel(x.var(axis=axes), n), scale**2)
            mean, var, tracked = recorder.running[i][name]
            np.testing.assert_allclose(logged.snapshots["moving_mean"][i], mean, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(logged.snapshots["moving_var"][i], var, rtol=1e-6, atol=1e-7)
            assert logged.series["updates"][i] == tracked
        t = logged.series["updates"]
        np.testing.assert_allclose(logged.series["convergence"], 1 - momentum**t, rtol=1e-6)


@pytest.mark.parametrize("make,names,momentum", [
    (_dense, ["2"], 0.9), (_dense_momentum_0_01, ["2"], 0.99), (_Sequence, ["norm"], 0.9), (_resnet, RESNET_BN, 0.9)],
    ids=["BatchNorm1d", "BatchNorm1d-momentum-0.01", "BatchNorm1d-sequence", "resnet"])
def test_logged_moments_equal_numpy_moments_of_the_real_input(tmp_path, make, names, momentum):
    model = make()
    x, y = data(n=64)
    recorder = InputRecorder(model)
    with BNStatsMonitor(model, tmp_path / "run", snapshot_every_n_steps=1, verbose=0) as monitor:
        losses = train(model, x, y, batch=16, epochs=2, monitor=monitor, recorder=recorder)
    run = tb_bnstats.load(tmp_path)["run"]
    _check_against_recorder(run, recorder, names, momentum)
    steps, values = run.metrics["train/loss"]
    assert list(steps) == list(range(1, 9))
    np.testing.assert_allclose(values, losses, rtol=1e-6)


def test_torch_compile_logs_the_same_moments(tmp_path):
    model = _resnet()
    x, y = data(n=48)
    recorder = InputRecorder(model)
    monitor = BNStatsMonitor(model, tmp_path / "run", snapshot_every_n_steps=1, verbose=0)
    compiled = torch.compile(model)
    train(model, x, y, batch=16, epochs=2, monitor=monitor, recorder=recorder, compiled=compiled)
    monitor.close()
    _check_against_recorder(tb_bnstats.load(tmp_path)["run"], recorder, RESNET_BN)
    assert all(not m._forward_hooks for m in model.modules())


def test_training_is_bit_identical_with_and_without_the_monitor(tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        x, y = data(n=64)
        plain = _resnet()
        keys = list(plain.state_dict())
        expected = train(plain, x, y, batch=16, epochs=2)
        watched = _resnet()
        monitor = BNStatsMonitor(watched, tmp_path / "run", verbose=0, probe_data=(x[:16], y[:16]),
                                 probe_every_n_steps=2, population_data=(x, y), population_every_n_steps=3,
                                 population_samples=32, loss_fn=nn.functional.cross_entropy)
        assert list(watched.state_dict()) == keys  # nothing added to the state
        got = train(watched, x, y, batch=16, epochs=2, monitor=monitor)
        monitor.close()
    finally:
        torch.use_deterministic_algorithms(False)
    assert got == expected
    for (k, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), k
    assert all(not m._forward_hooks for m in watched.modules())  # close() removed every hook
    run = tb_bnstats.load(tmp_path)["run"]
    assert "probe_output_drift" in run.layers["bn"].series and "population_mean" in run.layers["bn"].series


def test_pytorch_conventions(tmp_path):
    """momentum=None is a cumulative average; track_running_stats=False has no
    running statistics (not logged, said); a module in eval() during training
    does not update; several forwards per step count as several updates."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 4, 3)
            self.cumulative = nn.BatchNorm2d(4, momentum=None)
            self.untracked = nn.BatchNorm2d(4, track_running_stats=False)
            self.frozen = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.frozen(self.untracked(self.cumulative(self.conv(x)))).mean((2, 3)))

    model = Net()
    model.frozen.eval()  # the fine-tuning trick: kept in eval() while the rest trains
    frozen_before = (model.frozen.running_mean.clone(), model.frozen.running_var.clone())
    x, y = data(n=64)
    recorder = InputRecorder(model)
    model.train = lambda mode=True: model  # keep the eval() above through train()'s model.train()
    with BNStatsMonitor(model, tmp_path / "run", snapshot_every_n_steps=1, verbose=1) as monitor:
        train(model, x, y, batch=8, epochs=1, monitor=monitor, recorder=recorder, accumulate=2)
    assert monitor.capture.untracked == ["untracked"]
    run = tb_bnstats.load(tmp_path)["run"]
    assert sorted(run.layers) == ["cumulative", "frozen"]
    cumulative, frozen = run.layers["cumulative"], run.layers["frozen"]
    assert cumulative.info.momentum is None
    np.testing.assert_array_equal(cumulative.series["updates"], [2, 4, 6, 8])  # two forwards per step
    np.testing.assert_array_equal(cumulative.series["convergence"], 1.0)
    # The cumulative average is the mean of every micro-batch's Bessel-corrected moments.
    conv_out = [recorder.inputs[i]["cumulative"] for i in range(4)]
    last = conv_out[-1]
    assert_close(cumulative.snapshots["batch_mean"][-1], last.mean(axis=(0, 2, 3)), np.abs(last).max())
    assert not frozen.info.trainable
    np.testing.assert_array_equal(frozen.series["updates"], 0)
    assert torch.equal(model.frozen.running_mean, frozen_before[0])
    codes = {(f.code, tuple(f.layers)) for f in monitor.findings}
    assert all(code != "BN002" or layers == ("frozen",) for code, layers in codes)


def test_lazy_sync_and_custom_batchnorm_classes_are_found(tmp_path):
    class TimmStyleBN(nn.BatchNorm2d):
        """A custom BN class: a subclass of _BatchNorm."""

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LazyBatchNorm2d(), nn.Conv2d(4, 4, 1), nn.SyncBatchNorm(4),
                          nn.Conv2d(4, 4, 1), TimmStyleBN(4), nn.InstanceNorm2d(4), nn.Flatten(), nn.LazyLinear(4))
    x, y = data(n=32)
    recorder = InputRecorder(model)
    with BNStatsMonitor(model, tmp_path / "run", snapshot_every_n_steps=1, verbose=0) as monitor:
        train(model, x, y, batch=16, epochs=1, monitor=monitor, recorder=recorder)
    run = tb_bnstats.load(tmp_path)["run"]
    _check_against_recorder(run, recorder, ["1", "3", "5"])
    assert run.layers["3"].info.synchronized and run.layers["5"].info.layer_class == "TimmStyleBN"


@pytest.mark.parametrize("autocast,channels_last", [(torch.bfloat16, False), (torch.float16, False), (None, True)],
                         ids=["autocast-bf16", "autocast-fp16", "channels_last"])
def test_autocast_and_channels_last(tmp_path, autocast, channels_last):
    model = _resnet()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x, y = data(n=32)
    recorder = InputRecorder(model)
    with BNStatsMonitor(model, tmp_path / "run", snapshot_every_n_steps=1, verbose=0) as monitor:
        train(model, x, y, batch=16, epochs=1, monitor=monitor, recorder=recorder, autocast=autocast,
              channels_last=channels_last)
    _check_against_recorder(tb_bnstats.load(tmp_path)["run"], recorder, RESNET_BN)


def test_explicit_steps_metrics_and_a_restored_run(tmp_path):
    model = _dense()
    x, y = data(n=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with BNStatsMonitor(model, tmp_path / "first", verbose=0) as monitor:
        for i in range(4):
            loss = nn.functional.cross_entropy(model(x[16 * i:16 * (i + 1)]), y[16 * i:16 * (i + 1)])
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss=loss, step=10 * (i + 1), lr=0.05, grad_norm=torch.tensor(2.0 * i))
        monitor.epoch_end(loss=0.5, accuracy=0.75)
    run = tb_bnstats.load(tmp_path)["first"]
    assert list(run.layers["2"].steps) == [10, 20, 30, 40]
    np.testing.assert_allclose(run.metrics["train/lr"][1], 0.05)
    np.testing.assert_allclose(run.metrics["train/grad_norm"][1], [0, 2, 4, 6])
    assert list(run.metrics["val/accuracy"][0]) == [40]
    # A full state_dict restored into a fresh model: the update counts go on.
    restored = _dense()
    restored.load_state_dict(model.state_dict())
    with BNStatsMonitor(restored, tmp_path / "second", start_step=40, verbose=0) as monitor:
        train(restored, x[:32], y[:32], batch=16, monitor=monitor)
    second = tb_bnstats.load(tmp_path)["second"]
    assert list(second.layers["2"].steps) == [41, 42]
    np.testing.assert_array_equal(second.layers["2"].series["updates"], [5, 6])
    assert second.train_begins[-1]["resumed"] == ["2"] and second.train_begins[-1]["moving_at_initializer"] == []


def test_a_failing_capture_warns_once_and_training_goes_on(tmp_path, monkeypatch, caplog):
    from tb_bnstats.frameworks.torch.capture import modules

    x, y = data(n=64)
    expected = train(_dense(), x, y, batch=16)

    def broken(*args):
        raise RuntimeError("moments exploded")

    monkeypatch.setattr(modules, "channel_moments", broken)
    monkeypatch.setattr(modules, "moments_of_update", broken)
    model = _dense()
    with caplog.at_level(logging.WARNING, logger="tb_bnstats"):
        with BNStatsMonitor(model, tmp_path / "run", verbose=0) as monitor:
            got = train(model, x, y, batch=16, monitor=monitor)
    assert got == expected
    warned = [r for r in caplog.records if "moments exploded" in r.getMessage()]
    assert len(warned) == 1 and "training continues" in warned[0].getMessage()


def test_an_unwritable_log_dir_warns_and_training_goes_on(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    x, y = data(n=32)
    model = _dense()
    with pytest.warns(RuntimeWarning, match="opening the log directory failed"):
        with BNStatsMonitor(model, blocker / "run", verbose=0) as monitor:
            losses = train(model, x, y, batch=16, monitor=monitor)
    assert len(losses) == 2 and int(model[2].num_batches_tracked) == 2


def test_bad_arguments_fail_at_construction(tmp_path):
    model = _dense()
    with pytest.raises(TypeError, match="torch.nn.Module"):
        BNStatsMonitor("not a model", tmp_path)
    with pytest.raises(ValueError, match="log_every_n_steps"):
        BNStatsMonitor(model, tmp_path, log_every_n_steps=0)
    with pytest.raises(ValueError, match="loss_fn"):
        BNStatsMonitor(model, tmp_path, loss_fn=3)
    with pytest.raises(ValueError, match="probe_every_n_steps needs probe_data"):
        BNStatsMonitor(model, tmp_path, probe_every_n_steps=5)
    with pytest.raises(ValueError, match="start_step"):
        BNStatsMonitor(model, tmp_path, start_step=-1)
    assert all(not m._forward_hooks for m in model.modules())  # nothing left behind by the failures


def test_a_pytorch_process_never_imports_tensorflow_keras_or_jax(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from torch_models import SmallResNet, data, train
        import tb_bnstats
        from tb_bnstats.torch import BNStatsMonitor
        torch.manual_seed(0)
        model = SmallResNet()
        x, y = data(n=64)
        with BNStatsMonitor(model, {str(tmp_path / "run")!r}, verbose=0, probe_data=(x, y),
                            population_data=(x, y), population_samples=32,
                            loss_fn=torch.nn.functional.cross_entropy) as monitor:
            train(model, x, y, batch=16, epochs=2, monitor=monitor)
        tb_bnstats.recalibrate(model, (x, y), num_samples=32, loss_fn=torch.nn.functional.cross_entropy)
        tb_bnstats.diagnose_model(model, (x, y), num_samples=32)
        found = sorted(m for m in ("tensorflow", "keras", "jax") if m in sys.modules)
        print("IMPORTED", found)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "IMPORTED []" in out.stdout, out.stdout
    run = tb_bnstats.load(tmp_path)["run"]
    assert sorted(run.layers) == sorted(RESNET_BN) and len(run.layers["bn"].steps) == 8


def test_reads_are_few(tmp_path):
    """Nothing is read from the device per step: a drain reads each ring's two tensors once."""
    model = _dense()
    x, y = data(n=96)
    with BNStatsMonitor(model, tmp_path / "run", verbose=0, flush_secs=3600) as monitor:
        train(model, x, y, batch=4, epochs=2, monitor=monitor)  # 48 steps, one ring of 256 rows
        assert monitor.capture.reads == 0
    assert monitor.capture.reads <= 4  # the close's drains


def test_steps_with_other_metrics_or_modules_are_logged_in_order(tmp_path):
    """A new layout (other metrics, a module that runs only sometimes) gets a
    ring of its own; the drain merges them by step, every step once."""

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(192, 6)
            self.always = nn.BatchNorm1d(6)
            self.sometimes = nn.BatchNorm1d(6)
            self.use_both = False

        def forward(self, x):
            h = self.always(self.fc(x.flatten(1)))
            return self.sometimes(h) if self.use_both else h

    model = Branchy()
    x, y = data(n=16 * 6, classes=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with BNStatsMonitor(model, tmp_path / "run", verbose=0, flush_secs=3600) as monitor:
        for i in range(6):
            model.use_both = i % 2 == 1
            loss = nn.functional.cross_entropy(model(x[16 * i:16 * (i + 1)]), y[16 * i:16 * (i + 1)])
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss=loss, **({"extra": 1.0} if i >= 3 else {}))
            if i == 3:
                monitor.epoch_end()  # a drain in the middle: the earlier layouts' rings go
    run = tb_bnstats.load(tmp_path)["run"]
    assert list(run.layers["always"].steps) == [1, 2, 3, 4, 5, 6]
    assert list(run.layers["sometimes"].steps) == [2, 4, 6]
    np.testing.assert_array_equal(run.layers["sometimes"].series["updates"], [1, 2, 3])
    assert list(run.metrics["train/loss"][0]) == [1, 2, 3, 4, 5, 6]
    assert list(run.metrics["train/extra"][0]) == [4, 5, 6]
    assert len(monitor.capture._rings) <= 2


def test_pretrained_running_statistics_are_a_start_not_a_bias(tmp_path):
    """Running statistics loaded without ``num_batches_tracked`` (0) but not
    at 0 / 1: a pretrained start. The count starts at 0 from them, the
    debiased estimate is the average of the new batches alone, and the
    distance moved from them is logged; a frozen module (eval() and
    requires_grad False) is frozen on purpose."""
    model = _dense()
    bn = model[2]
    with torch.no_grad():
        bn.running_mean.copy_(torch.linspace(-1, 1, 12))
        bn.running_var.copy_(torch.linspace(0.5, 2, 12))
    start_mean, start_var = bn.running_mean.double().numpy().copy(), bn.running_var.double().numpy().copy()
    x, y = data(n=64)
    with BNStatsMonitor(model, tmp_path / "run", snapshot_every_n_steps=1, verbose=0) as monitor:
        train(model, x, y, batch=16, epochs=1, monitor=monitor)
    run = tb_bnstats.load(tmp_path)["run"]
    assert run.train_begins[0]["pretrained"] == ["2"]
    logged = run.layers["2"]
    t = int(logged.series["updates"][-1])
    assert t == 4
    w = 0.9 ** t
    running_mean = bn.running_mean.double().numpy()
    np.testing.assert_allclose(logged.snapshots["debiased_mean"][-1], (running_mean - w * start_mean) / (1 - w),
                               rtol=1e-5, atol=1e-6)
    assert logged.series["start_mean_gap/p50"][-1] == pytest.approx(
        np.median(np.abs(running_mean - start_mean) / np.sqrt(start_var + bn.eps)), rel=1e-5)
    assert not logged.info.frozen

    frozen = _dense()
    frozen[2].eval()
    frozen[2].requires_grad_(False)
    frozen.train = lambda mode=True: frozen  # keep the eval() above through train()'s model.train()
    with BNStatsMonitor(frozen, tmp_path / "frozen", snapshot_every_n_steps=0, verbose=0) as monitor:
        train(frozen, x, y, batch=16, epochs=1, monitor=monitor)
    info = tb_bnstats.load(tmp_path)["frozen"].layers["2"].info
    assert info.frozen and not info.trainable
