"""docs/adding-a-framework.md, followed: a made-up framework (tests/toyfw/:
numpy layers, its capture, its adapter on StepLoopMonitor, its words) plus
one registry line logs runs that tb_bnstats.load reads back with the moments
its layers normalized with, the diagnosis finds its BN001 in its own words,
and a healthy run stays silent. Nothing of tb_bnstats is edited for it."""

import numpy as np
import pytest

import tb_bnstats
from tb_bnstats import frameworks

STEPS = 60


@pytest.fixture
def toy_registered(monkeypatch):
    """The one registry line (REGISTRY names modules: the toy is outside the package)."""
    monkeypatch.setattr(frameworks, "REGISTRY", (*frameworks.REGISTRY, "toyfw"))
    frameworks.registered.cache_clear()
    frameworks._words.cache_clear()
    yield
    frameworks.registered.cache_clear()
    frameworks._words.cache_clear()


def train(log_dir, keep, seed=0):
    """A toy net (scale -> ToyBatchNorm -> scale -> ToyBatchNorm) trained
    ``STEPS`` steps under ToyMonitor; returns each BN's numpy moments of its
    real input per step, computed here apart from the capture."""
    from toyfw.layers import ToyBatchNorm, ToyModel
    from toyfw.monitor import ToyMonitor

    rng = np.random.default_rng(seed)
    bn1, bn2 = ToyBatchNorm(3, keep=keep), ToyBatchNorm(2, keep=keep)
    model = ToyModel([("scale", lambda x: 2.0 * x + 1.0), ("bn1", bn1), ("mix", lambda x: x[:, :2] * 3.0),
                      ("bn2", bn2)])
    reference = {"bn1": [], "bn2": []}
    with ToyMonitor(model, log_dir, snapshot_every_n_steps=0, verbose=0) as monitor:
        for _ in range(STEPS):
            x = rng.normal(0.5, 1.5, (32, 3))
            h = 2.0 * x + 1.0
            reference["bn1"].append((h.mean(0), h.var(0)))
            h2 = ((h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5))[:, :2] * 3.0
            reference["bn2"].append((h2.mean(0), h2.var(0)))
            out = model(x)
            monitor.step(loss=float((out ** 2).mean()))
    return monitor, reference


def test_a_toy_framework_logs_reads_back_and_speaks_its_words(tmp_path, toy_registered):
    monitor, reference = train(tmp_path / "slow", keep=0.99)
    run = tb_bnstats.load(tmp_path / "slow")["slow"]
    assert sorted(run.layers) == ["bn1", "bn2"]
    for name in ("bn1", "bn2"):
        layer = run.layers[name]
        assert layer.info.framework == "toy" and layer.info.layer_class == "ToyBatchNorm"
        np.testing.assert_array_equal(layer.steps, np.arange(1, STEPS + 1))
        means = np.stack([m for m, _ in reference[name]])
        variances = np.stack([v for _, v in reference[name]])
        # Every step's moments (channel averages) and the last step's per channel, as numpy has them.
        np.testing.assert_allclose(layer.series["batch_mean"], means.mean(axis=1), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(layer.series["batch_var"], variances.mean(axis=1), rtol=1e-6)
        np.testing.assert_array_equal(layer.snapshot_steps, [STEPS])
        np.testing.assert_allclose(layer.snapshots["batch_mean"][-1], means[-1], rtol=1e-6, atol=1e-9)
        # The convergence the tab draws: 1 - keep^t, t the updates so far.
        np.testing.assert_allclose(layer.series["convergence"], 1 - 0.99 ** np.arange(1, STEPS + 1), rtol=1e-6)
    findings = tb_bnstats.diagnose(tmp_path)
    assert [(f.code, f.layers) for f in findings if f.severity == "error"] == [("BN001", ["bn1", "bn2"])]
    bn001 = next(f for f in findings if f.code == "BN001")
    assert "keep=0.99 (Toy's momentum)" in bn001.message  # the toy's words, not the generic ones
    assert monitor.findings is not None and {f.code for f in monitor.findings} == {f.code for f in findings}


def test_a_healthy_toy_run_raises_nothing(tmp_path, toy_registered):
    train(tmp_path / "healthy", keep=0.5)
    assert tb_bnstats.diagnose(tmp_path) == []


def test_without_its_registry_line_the_words_are_the_generic_ones(tmp_path, toy_registered, monkeypatch):
    """A log of a framework this installation does not know still reads and
    is diagnosed, in the log format's own words."""
    train(tmp_path / "slow", keep=0.99)
    monkeypatch.setattr(frameworks, "REGISTRY", tuple(m for m in frameworks.REGISTRY if m != "toyfw"))
    frameworks.registered.cache_clear()
    frameworks._words.cache_clear()
    from tb_bnstats import diagnosis

    computed = diagnosis.diagnose_run("slow", tb_bnstats.load(tmp_path / "slow")["slow"])  # not the stored ones
    bn001 = next(f for f in computed if f.code == "BN001")
    assert "momentum 0.99" in bn001.message and "Toy" not in bn001.message
