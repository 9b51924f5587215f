"""PyTorch's fine-tuning traps, on small real runs: BN modules "frozen" with
``requires_grad_(False)`` but left in ``train()`` (BN016, with how far their
statistics moved), the same modules put in ``eval()`` (BN010 instead), a
module frozen by construction as torchvision's ``FrozenBatchNorm2d`` (found by
duck typing, logged as frozen, BN010), an ``AveragedModel`` evaluated without
``update_bn`` (BN017) and after it (nothing), and gradient accumulation (one
logged step per optimizer step, every micro-batch counted). Numbers are
checked against numpy on our own copies of the buffers and inputs."""

import numpy as np
import pytest
import torch
from torch import nn

import tb_bnstats
import torch_scenarios as scenarios
from tb_bnstats.torch import BNStatsMonitor


class DuckFrozenBN(nn.Module):
    """A FrozenBatchNorm2d-like module (torchvision's has the same buffers and
    forward): weight, bias, running_mean, running_var as buffers, no momentum."""

    def __init__(self, mean, var, eps=1e-5):
        super().__init__()
        c = len(mean)
        self.register_buffer("weight", torch.ones(c))
        self.register_buffer("bias", torch.zeros(c))
        self.register_buffer("running_mean", torch.as_tensor(mean, dtype=torch.float32).clone())
        self.register_buffer("running_var", torch.as_tensor(var, dtype=torch.float32).clone())
        self.eps = eps

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return x * scale + (self.bias - self.running_mean * scale)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pretrained():
    """A DenseNet trained 2 epochs on the digits (its state_dict: the
    "pretrained" weights and statistics) and the new task's data: the same
    digits as ``x * 1.5 + 0.5``."""
    x, y = scenarios.digits(n=896)
    model = scenarios.dense_model(seed=0)
    scenarios.train(model, x, y, None, epochs=2)
    return model.state_dict(), (x * 1.5 + 0.5, y)


def fine_tune(state, data, logdir, eval_bn, steps=40):
    """The pretrained model with requires_grad_(False) on both BN modules,
    trained ``steps`` steps on the new data (``eval_bn``: the BN modules put
    in eval() after model.train()). Returns (model, statistics before)."""
    model = scenarios.dense_model(seed=0)
    model.load_state_dict(state)
    before = {n: (getattr(model, n).running_mean.double().numpy().copy(),
                  getattr(model, n).running_var.double().numpy().copy()) for n in ("bn1", "bn2")}
    for n in ("bn1", "bn2"):
        getattr(model, n).requires_grad_(False)
    x, y = (torch.as_tensor(a) for a in data)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with BNStatsMonitor(model, logdir, snapshot_every_n_steps=0, verbose=0) as monitor:
        model.train()
        if eval_bn:
            model.bn1.eval()
            model.bn2.eval()
        for i in range(steps):
            idx = slice(32 * i % 864, 32 * i % 864 + 32)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss=loss)
    return model, before


def test_requires_grad_false_in_train_is_bn016_with_how_far_the_statistics_moved(pretrained, tmp_path):
    state, data = pretrained
    model, before = fine_tune(state, data, str(tmp_path / "run"), eval_bn=False)
    runs = tb_bnstats.load(str(tmp_path))
    infos = {n: layer.info for n, layer in runs["run"].layers.items()}
    assert all(i.affine_frozen and i.trainable and not i.frozen for i in infos.values())
    findings = [f for f in tb_bnstats.diagnose(runs) if f.code == "BN016"]
    by_layer = {name: f for f in findings for name in f.layers}
    assert sorted(by_layer) == ["bn1", "bn2"], [str(f) for f in findings]
    # bn1 sees the shifted inputs directly: its statistics moved far (a warning); bn2, behind it, little (info).
    assert by_layer["bn1"].severity == "warning" and by_layer["bn2"].severity == "info"
    for name in ("bn1", "bn2"):
        f = by_layer[name]
        module = getattr(model, name)
        mean0, var0 = before[name]
        eps = float(module.eps)
        moved = np.median(np.abs(module.running_mean.double().numpy() - mean0) / np.sqrt(var0 + eps))
        ev = f.evidence[name]
        assert ev["updates"] == int(module.num_batches_tracked)
        assert ev["start_mean_gap_p50"] == pytest.approx(moved, rel=1e-3)
        assert f"{moved:.2f} std" in f.messages[name]
    f = by_layer["bn1"]
    assert f.evidence["bn1"]["start_mean_gap_p50"] > 0.25  # the "far" test a warning needs
    assert "eval()" in f.message and "FrozenBatchNorm2d" in f.message and "requires_grad=False" in f.message


def test_the_same_modules_in_eval_are_bn010_not_bn016(pretrained, tmp_path):
    state, data = pretrained
    model, before = fine_tune(state, data, str(tmp_path / "run"), eval_bn=True)
    for name in ("bn1", "bn2"):
        assert np.array_equal(getattr(model, name).running_mean.double().numpy(), before[name][0])
    runs = tb_bnstats.load(str(tmp_path))
    assert all(layer.info.frozen and not layer.info.affine_frozen for layer in runs["run"].layers.values())
    codes = {f.code for f in tb_bnstats.diagnose(runs)}
    assert "BN010" in codes and "BN016" not in codes


def test_a_frozen_batchnorm_module_is_found_by_duck_typing_logged_and_its_shift_found(tmp_path):
    """Statistics "pretrained" on other data (mean 0, var 1) for inputs far
    from them: the module is logged as frozen with its batch moments, and
    BN010 names it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16, bias=False), DuckFrozenBN(np.zeros(16), np.ones(16)), nn.ReLU(),
                          nn.Linear(16, 10))
    seen = []
    model[1].register_forward_hook(lambda m, args, out: seen.append(args[0].detach().double().numpy()))
    x, y = (torch.as_tensor(a) for a in scenarios.digits(n=640))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with BNStatsMonitor(model, str(tmp_path / "run"), snapshot_every_n_steps=0, verbose=0) as monitor:
        for i in range(20):
            loss = nn.functional.cross_entropy(model(x[32 * i:32 * i + 32]), y[32 * i:32 * i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss=loss)
    layer = tb_bnstats.load(str(tmp_path))["run"].layers["1"]
    assert layer.info.frozen and not layer.info.trainable and layer.info.layer_class == "DuckFrozenBN"
    assert layer.info.momentum is None and layer.info.epsilon == 1e-5
    assert list(layer.steps) == list(range(1, 21))
    assert np.all(layer.series["updates"] == 0)
    # running_var as PyTorch keeps it (Bessel-corrected): the batch variance is logged comparable to it.
    assert layer.series["batch_mean"][-1] == pytest.approx(seen[-1].mean(0).mean(), rel=1e-5)
    assert layer.series["batch_var"][-1] == pytest.approx(seen[-1].var(0, ddof=1).mean(), rel=1e-4)
    found = [f for f in tb_bnstats.diagnose(str(tmp_path)) if f.code == "BN010"]
    assert found and found[0].layers == ["1"] and found[0].severity == "warning"
    assert "DuckFrozenBN" in found[0].message


def train_swa():
    """SWA on a DenseNet: one epoch of Adam, then two of SGD at a high
    constant learning rate (0.2, momentum 0.9) averaged at every step by an
    ``AveragedModel`` (``use_buffers=False``, the default: its buffers are
    copies of the trained model's, statistics of the last weights)."""
    x, y = scenarios.digits(n=896)
    model = scenarios.dense_model(seed=0)
    swa = torch.optim.swa_utils.AveragedModel(model)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(3):
        for start in range(0, 896, 32):
            loss = nn.functional.cross_entropy(model(xt[start:start + 32]), yt[start:start + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if epoch >= 1:
                swa.update_parameters(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    return swa, (x, y)


def test_an_averaged_model_without_update_bn_is_bn017_and_not_after_it():
    swa, (x, y) = train_swa()
    findings = tb_bnstats.diagnose_model(swa, (x, y), num_samples=512)
    bn017 = [f for f in findings if f.code == "BN017"]
    assert bn017 and sorted(bn017[0].layers) == ["module.bn1", "module.bn2"]
    # The number: the averaged model's own batch moments (numpy, from its weights) against its buffers.
    inputs = scenarios.dense_bn_inputs(swa.module, x[:512])
    for name in ("bn1", "bn2"):
        module = getattr(swa.module, name)
        mean = inputs[name].mean(0)
        gap = np.median(np.abs(mean - module.running_mean.double().numpy())
                        / np.sqrt(inputs[name].var(0) + module.eps))
        assert bn017[0].evidence[f"module.{name}"]["population_mean_gap_p50"] == pytest.approx(gap, rel=1e-3)
    assert "update_bn" in bn017[0].message and "use_buffers=True" in bn017[0].message
    loader = torch.utils.data.DataLoader(torch.as_tensor(x), batch_size=32)
    torch.optim.swa_utils.update_bn(loader, swa)
    assert not [f for f in tb_bnstats.diagnose_model(swa, (x, y), num_samples=512) if f.code == "BN017"]
    # A trained model that is not an averaged one is not asked (no BN017 on the source model).
    assert not [f for f in tb_bnstats.diagnose_model(swa.module, (x, y), num_samples=512, averaged=False)
                if f.code == "BN017"]


def test_an_ema_copy_kept_in_eval_is_bn017_when_asked():
    """An EMA copy of the weights (timm's ModelEma style without the buffers)
    is a plain module: ``averaged=True`` asks."""
    swa, (x, y) = train_swa()
    ema = scenarios.dense_model(seed=0)
    ema.load_state_dict({k: v for k, v in swa.module.state_dict().items() if "running" not in k}, strict=False)
    ema.eval()
    found = [f for f in tb_bnstats.diagnose_model(ema, (x, y), num_samples=512, averaged=True) if f.code == "BN017"]
    assert found and sorted(found[0].layers) == ["bn1", "bn2"]


def test_gradient_accumulation_logs_one_step_per_optimizer_step_and_counts_every_micro_batch(tmp_path):
    """4 micro-batches of 8 per optimizer step: the step's moments are the
    last micro-batch's, num_batches_tracked (updates) counts 4 per step and
    convergence is 1 - 0.9**updates."""
    x, y = scenarios.digits(n=640)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    model = scenarios.dense_model(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    last_inputs = []
    model.fc1.register_forward_hook(lambda m, args, out: last_inputs.append(out.detach().double().numpy()))
    steps = 12
    with BNStatsMonitor(model, str(tmp_path / "run"), snapshot_every_n_steps=0, verbose=0) as monitor:
        for step in range(steps):
            opt.zero_grad()
            for micro in range(4):
                start = (4 * step + micro) * 8
                loss = nn.functional.cross_entropy(model(xt[start:start + 8]), yt[start:start + 8]) / 4
                loss.backward()
            opt.step()
            monitor.step(loss=loss * 4)
    layer = tb_bnstats.load(str(tmp_path))["run"].layers["bn1"]
    assert list(layer.steps) == list(range(1, steps + 1))
    assert list(layer.series["updates"]) == [4 * (s + 1) for s in range(steps)]
    assert int(model.bn1.num_batches_tracked) == 4 * steps
    np.testing.assert_allclose(layer.series["convergence"], 1 - 0.9 ** (4 * np.arange(1, steps + 1)), rtol=1e-6)
    # The last micro-batch of the last step (bn1's input is fc1's output).
    assert layer.series["batch_mean"][-1] == pytest.approx(last_inputs[-1].mean(0).mean(), rel=1e-5, abs=1e-6)
    assert layer.info.batch_samples == 8
