"""torchvision's and timm's models under tb_bnstats.torch.BNStatsMonitor:
``torchvision.ops.misc.FrozenBatchNorm2d`` (the BN of torchvision's detection
backbones) logged as frozen BN layers and their shift found (BN010), and
healthy torchvision / timm classifiers (weights=None, 60 steps at PyTorch's
default momentum) silent. Runs in the vision venv (torch + torchvision +
timm, no TensorFlow); nothing is downloaded."""

import numpy as np
import pytest
import torch
from torch import nn

torchvision = pytest.importorskip("torchvision")  # the vision lane's venv has it; the main venv does not
from torchvision.ops.misc import FrozenBatchNorm2d  # noqa: E402

import tb_bnstats  # noqa: E402
from tb_bnstats.torch import BNStatsMonitor  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def images(n, size, seed, scale=1.0, shift=0.0, classes=10):
    """Synthetic labelled images: a class-dependent pattern plus noise, as
    ``x * scale + shift``."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=gen)
    patterns = torch.randn(classes, 3, size, size, generator=torch.Generator().manual_seed(1234))
    x = 0.5 * patterns[y] + torch.randn(n, 3, size, size, generator=gen)
    return x * scale + shift, y


def train(model, monitor, steps, size, batch, seed, scale=1.0, shift=0.0, lr=1e-3):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(steps):
        x, y = images(batch, size, seed * 10_000 + step, scale, shift)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(loss=loss)


def test_frozen_batchnorm2d_in_a_torchvision_resnet_is_logged_and_its_shift_found(tmp_path):
    """A resnet18 built as torchvision's detection backbones are
    (``norm_layer=FrozenBatchNorm2d``), its statistics "pretrained" on
    unshifted images, fine-tuned on images shifted x1.5 + 0.5: every
    FrozenBatchNorm2d is logged as a frozen BN layer, never updated, the stem's
    batch moments equal numpy's on its input, and BN010 names the stem."""
    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None, num_classes=10)
    for module in source.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a cumulative average: the "pretrained" statistics of these batches
    with torch.no_grad():
        source.train()
        for i in range(4):
            source(images(32, 32, 100 + i)[0])
    model = torchvision.models.resnet18(weights=None, num_classes=10, norm_layer=FrozenBatchNorm2d)
    model.load_state_dict(source.state_dict())  # FrozenBatchNorm2d drops num_batches_tracked as it loads
    frozen = [n for n, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == 20 and "layer1.0.bn1" in frozen
    stem_inputs = []
    model.bn1.register_forward_hook(lambda m, args, out: stem_inputs.append(args[0].detach().double().numpy()))
    with BNStatsMonitor(model, str(tmp_path / "run"), snapshot_every_n_steps=0, verbose=0) as monitor:
        train(model, monitor, steps=12, size=32, batch=16, seed=1, scale=1.5, shift=0.5)
    run = tb_bnstats.load(str(tmp_path))["run"]
    assert sorted(run.layers) == sorted(frozen)
    for layer in run.layers.values():
        assert layer.info.layer_class == "FrozenBatchNorm2d" and layer.info.frozen and not layer.info.trainable
        assert list(layer.steps) == list(range(1, 13)) and np.all(layer.series["updates"] == 0)
    stem = run.layers["bn1"]
    x = stem_inputs[-1]
    assert stem.series["batch_mean"][-1] == pytest.approx(x.mean((0, 2, 3)).mean(), rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(stem.series["moving_mean"][-1], source.bn1.running_mean.double().mean(), rtol=1e-5)
    findings = tb_bnstats.diagnose(str(tmp_path))
    bn010 = {name: f for f in findings if f.code == "BN010" for name in f.layers}
    assert set(bn010) == set(frozen), [str(f) for f in findings]  # each one asked, and answered
    assert {f.severity for f in bn010.values()} >= {"warning"}  # the shift of the deeper layers is large
    assert all(name in bn010 and bn010[name].severity == "warning" for name in frozen if name.startswith("layer1"))
    assert "FrozenBatchNorm2d" in bn010["layer1.0.bn1"].messages["layer1.0.bn1"]
    assert not [f for f in findings if f.code in ("BN002", "BN016")]


def healthy_models():
    import timm

    return {
        "resnet18": lambda: torchvision.models.resnet18(weights=None, num_classes=10),
        "regnet_y_400mf": lambda: torchvision.models.regnet_y_400mf(weights=None, num_classes=10),
        "timm_efficientnet_b0": lambda: timm.create_model("efficientnet_b0", pretrained=False, num_classes=10),
    }


@pytest.mark.parametrize("name", ["resnet18", "regnet_y_400mf", "timm_efficientnet_b0"])
def test_healthy_torchvision_and_timm_models_raise_nothing(name, tmp_path):
    """weights=None, PyTorch's default momentum, shuffled synthetic batches
    of 16 images 64x64, Adam 1e-3, 60 steps: converged (0.9**60 left on the
    initial values) and no finding."""
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = healthy_models()[name]()
    with BNStatsMonitor(model, str(tmp_path / name), snapshot_every_n_steps=0, verbose=0) as monitor:
        train(model, monitor, steps=60, size=64, batch=16, seed=2)
    run = tb_bnstats.load(str(tmp_path))[name]
    assert len(run.layers) >= 20
    assert all(layer.series["convergence"][-1] > 0.99 for layer in run.layers.values())
    assert all(layer.info.batch_samples == 16 for layer in run.layers.values())
    findings = tb_bnstats.diagnose(str(tmp_path))
    assert findings == [], "\n".join(str(f) for f in findings)
