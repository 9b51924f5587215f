"""Diagnosis of PyTorch runs: one small real PyTorch run per failure scenario
(tests/pytorch/torch_scenarios.py, logged by ``tb_bnstats.torch.BNStatsMonitor``)
must produce exactly its finding on its modules, in PyTorch's words, healthy
runs none. Evidence numbers are recomputed from our own forward hooks."""

import math

import numpy as np
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

import tb_bnstats
import torch_scenarios as scenarios
from tb_bnstats import diagnosis


class BNInputs:
    """Our own forward hooks on every BN module of a model: at each forward
    with gradients (the training loop's), the input's biased per-channel
    moments in float64, the values per channel, and the running statistics
    right after the module ran (updated ones) with ``num_batches_tracked``."""

    def __init__(self, model):
        self.rows, self.handles = {}, []
        for name, module in model.named_modules():
            if isinstance(module, _BatchNorm):
                self.rows[name] = []
                self.handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def keep(module, args, output):
            if not torch.is_grad_enabled():
                return
            x = args[0].detach().double()
            dims = [0, *range(2, x.dim())]
            self.rows[name].append({
                "mean": x.mean(dims).numpy(), "var": x.var(dims, unbiased=False).numpy(),
                "n": x.numel() // x.shape[1], "eps": float(module.eps),
                "running_mean": module.running_mean.detach().double().numpy().copy(),
                "running_var": module.running_var.detach().double().numpy().copy(),
                "updates": int(module.num_batches_tracked)})

        return keep

    def remove(self):
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="session")
def suite(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("torch_diagnosis_logs"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the numbers the scenarios were tuned on; and 2 shared cores
    models, monitors, inputs = {}, {}, {}
    try:
        for name in scenarios.SCENARIOS:
            def hook(model, name=name):
                inputs[name] = BNInputs(model)

            models[name], monitors[name] = scenarios.run_scenario(name, logdir, on_model=hook)
            inputs[name].remove()
    finally:
        torch.set_num_threads(threads)
    return logdir, models, monitors, {name: rec.rows for name, rec in inputs.items()}, tb_bnstats.load(logdir)


def _produced(findings, run):
    return {(f.code, f.severity): f.layers for f in findings if f.run == run}


def _finding(suite, run, code):
    found = [f for f in tb_bnstats.diagnose(suite[4], run=run) if f.code == code]
    assert len(found) == 1, found
    return found[0]


def _gaps(row, bessel=True):
    """Per-channel ``|mu_B - mu_R| / sqrt(var_B + eps)`` and
    ``log((var_B + eps) / (var_R + eps))`` of one recorded step, the batch
    variance Bessel-corrected as PyTorch's running_var averages it."""
    n, eps = row["n"], row["eps"]
    var = row["var"] * (n / (n - 1.0) if bessel else 1.0)
    return (np.abs(row["mean"] - row["running_mean"]) / np.sqrt(var + eps),
            np.log((var + eps) / (row["running_var"] + eps)))


def _tail_medians(rows):
    """The tail medians of the per-step channel medians of the mean gap and
    of |log var ratio| (what BN001 / BN002 read)."""
    per_step = [_gaps(r) for r in rows]
    return (float(np.median(scenarios.tail(np.median(g, -1) for g, _ in per_step))),
            float(np.median(scenarios.tail(np.median(np.abs(lv), -1) for _, lv in per_step))))


def _converged(rows, momentum):
    return [r for r in rows if 1.0 - momentum ** r["updates"] >= 0.95]


# -- every scenario ------------------------------------------------------------------------


@pytest.mark.parametrize("run", list(scenarios.EXPECTED))
def test_each_scenario_produces_exactly_its_finding(suite, run):
    _, _, monitors, _, runs = suite
    findings = tb_bnstats.diagnose(runs)
    assert _produced(findings, run) == scenarios.EXPECTED[run]
    for f in findings:
        assert f.code in diagnosis.CODES and f.severity in diagnosis.SEVERITIES
        assert f.scenario == diagnosis.CODES[f.code].scenario
        assert set(f.evidence) == set(f.layers) and f.message.startswith(f.layers[0] + ":")
        for keras_words in ("trainable=False", "training=False", "training=None", "tf.train", "fit(shuffle",
                            "non-trainable"):
            assert keras_words not in f.message, (f.code, f.message)
    # The monitor diagnosed the same from memory at close(), and stored it in the logs.
    assert {(f.code, f.severity): f.layers for f in monitors[run].findings} == scenarios.EXPECTED[run]
    stored = runs[run].stored_findings
    assert stored is not None
    assert {(d["code"], d["severity"]): d["layers"] for d in stored} == scenarios.EXPECTED[run]
    # The step axis is the training loop's: one logged step per optimizer step.
    for layer in runs[run].layers.values():
        assert list(layer.steps) == sorted(set(layer.steps)) and layer.steps[-1] == monitors[run]._step
        assert layer.info.framework == "pytorch" and layer.info.moving_var_unbiased


# healthy_gap's pooled features' variance falls ~2.7x while it trains and the average lags it (a real signed
# gap, log ratio ~-0.14 on bn3, that must not read as noise: BN005's noise floor), not a Bessel artefact.
@pytest.mark.parametrize("run", [r for r in scenarios.EXPECTED if r.startswith("healthy") and "gap" not in r])
def test_healthy_runs_have_no_variance_gap_from_bessel(suite, run):
    """PyTorch's running_var averages var_B * n / (n - 1): compared as such,
    a healthy converged run shows no variance gap, and the logged momentum is
    Keras' 0.9 for PyTorch's default 0.1."""
    _, models, _, inputs, runs = suite
    for name, layer in runs[run].layers.items():
        module = models[run].get_submodule(name)
        assert module.momentum == 0.1 and layer.info.momentum == pytest.approx(0.9)
        assert layer.info.layer_class == type(module).__name__
        updates = layer.series["updates"]
        assert updates[-1] == int(module.num_batches_tracked) == len(inputs[run][name]) == 84
        signed = scenarios.tail(layer.series["log_var_ratio/mean"])
        assert abs(np.median(signed)) < 0.1, (name, np.median(signed))
        mine = [float(np.mean(_gaps(r)[1])) for r in inputs[run][name]]
        np.testing.assert_allclose(layer.series["log_var_ratio/mean"], mine, rtol=1e-3, atol=1e-4)


# -- the evidence and the words, per scenario ------------------------------------------------


def test_bn001_momentum_0_01_in_pytorch_words(suite):
    _, models, _, inputs, _ = suite
    run = "s1_momentum_0.01"
    f = _finding(suite, run, "BN001")
    assert f.severity == "error" and f.layers == ["bn1", "bn2"]
    for name in f.layers:
        ev, module = f.evidence[name], models[run].get_submodule(name)
        assert module.momentum == 0.01 and ev["momentum"] == pytest.approx(0.99)
        assert ev["updates"] == int(module.num_batches_tracked) == len(inputs[run][name]) == 84
        assert ev["convergence"] == pytest.approx(1 - 0.99 ** 84, abs=1e-6)
        assert ev["updates_for_95"] == math.ceil(math.log(0.05) / math.log(0.99)) == 299
        gap_mean, gap_log_var = _tail_medians(inputs[run][name])
        assert ev["mean_gap_p50"] == pytest.approx(gap_mean, rel=1e-3)
        assert ev["abs_log_var_ratio_p50"] == pytest.approx(gap_log_var, rel=1e-3)
        assert max(gap_mean, gap_log_var) > 0.25  # "far": what makes it an error
    assert "momentum=0.01 (PyTorch's weight of the new batch; Keras' 0.99)" in f.message
    assert "57% converged after 84 updates" in f.message and "95% needs 299" in f.message
    # The suggestion is PyTorch's argument (0.1), not Keras' (0.9).
    assert "Use momentum=0.1 for runs this short" in f.message and "momentum 0.9" not in f.message
    assert "tb_bnstats.recalibrate(model, loader)" in f.message


def test_bn002_module_in_eval_says_eval_not_trainable(suite):
    _, models, _, inputs, _ = suite
    run = "s2_bn_in_eval"
    f = _finding(suite, run, "BN002")
    assert f.severity == "error" and f.layers == ["bn2"]
    ev = f.evidence["bn2"]
    bn2 = models[run].bn2
    assert ev["updates"] == int(bn2.num_batches_tracked) == 0 and ev["convergence"] == 0.0
    assert torch.equal(bn2.running_mean, torch.zeros(32)) and torch.equal(bn2.running_var, torch.ones(32))
    rows = inputs[run]["bn2"]
    assert len(rows) == 84 and all(r["updates"] == 0 for r in rows)
    gap_mean, gap_log_var = _tail_medians(rows)
    assert ev["mean_gap_p50"] == pytest.approx(gap_mean, rel=1e-3)
    assert ev["abs_log_var_ratio_p50"] == pytest.approx(gap_log_var, rel=1e-3)
    assert int(models[run].bn1.num_batches_tracked) == 84  # the module left in train() did update
    assert "the module was in eval() mode during training" in f.message
    assert "keep the BN modules in train() mode" in f.message and "model.train()" in f.message


def test_bn003_momentum_0_9_is_keras_0_1(suite):
    _, models, _, _, _ = suite
    f = _finding(suite, "s4_momentum_0.9", "BN003")
    assert f.severity == "warning" and f.layers == ["bn1", "bn2"]
    for name in f.layers:
        ev = f.evidence[name]
        assert ev["momentum"] == pytest.approx(0.1) and ev["effective_window"] == pytest.approx(1 / 0.9)
        assert ev["updates"] == int(models["s4_momentum_0.9"].get_submodule(name).num_batches_tracked) == 84
    assert "momentum=0.9 (PyTorch's weight of the new batch; Keras' 0.1)" in f.message
    assert "averages over 1.11 batches" in f.message
    assert "PyTorch's momentum is the weight of the new batch" in f.message


def test_bn005_batch_4_and_the_bessel_correction(suite):
    """With 4 values per channel the correction is log(4/3) = 0.29: the
    logged variance ratio uses it (an uncorrected comparison would be 0.29
    lower), and the evidence is the converged steps' medians."""
    _, models, _, inputs, _ = suite
    run = "s6_batch_4"
    f = _finding(suite, run, "BN005")
    assert f.severity == "warning" and f.layers == ["bn1", "bn2"]
    for name in f.layers:
        ev = f.evidence[name]
        rows = _converged(inputs[run][name], 0.9)
        assert all(r["n"] == 4 for r in inputs[run][name])
        assert ev["updates"] == int(models[run].get_submodule(name).num_batches_tracked) == 128
        assert ev["converged_steps"] == len(rows) == 128 - 28
        assert ev["mean_gap_p50"] == pytest.approx(np.median([np.median(_gaps(r)[0]) for r in rows]), rel=1e-3)
        signed = float(np.median([np.mean(_gaps(r)[1]) for r in rows]))
        uncorrected = float(np.median([np.mean(_gaps(r, bessel=False)[1]) for r in rows]))
        assert ev["log_var_ratio_mean"] == pytest.approx(signed, rel=1e-3, abs=1e-4)
        assert ev["log_var_ratio_mean"] - uncorrected > 0.25
    assert "nn.GroupNorm" in f.message and "per GPU" in f.message


def _detrended_autocorrelation(v, w=9):
    v = np.asarray(v, np.float64)
    trend = np.convolve(np.pad(v, (w // 2, w - 1 - w // 2), mode="edge"), np.ones(w) / w, mode="valid")
    d = v - trend
    d = d - d.mean()
    return float(np.dot(d[1:], d[:-1]) / np.dot(d, d))


def test_bn006_sorted_data(suite):
    _, models, _, inputs, _ = suite
    run = "s7_sorted"
    f = _finding(suite, run, "BN006")
    assert f.severity == "warning" and f.layers == ["bn1"]
    ev = f.evidence["bn1"]
    rows = _converged(inputs[run]["bn1"], 0.9)
    steps = 3 * math.ceil(1797 / 64)
    assert ev["updates"] == int(models[run].bn1.num_batches_tracked) == len(inputs[run]["bn1"]) == steps
    assert ev["converged_steps"] == len(rows) == steps - 28
    assert ev["mean_gap_p50"] == pytest.approx(np.median([np.median(_gaps(r)[0]) for r in rows]), rel=1e-3)
    drift = _detrended_autocorrelation([np.mean(r["mean"] - r["running_mean"]) for r in rows])
    assert ev["drift_autocorrelation"] == pytest.approx(drift, abs=1e-3) and drift >= 0.4
    assert "DataLoader(..., shuffle=True)" in f.message


def test_bn008_state_dict_without_buffers(suite):
    _, models, monitors, inputs, runs = suite
    run = "s3_buffers_not_restored"
    f = _finding(suite, run, "BN008")
    assert f.severity == "error" and f.layers == ["bn1", "bn2"]
    for name in f.layers:
        ev = f.evidence[name]
        module = models[run].get_submodule(name)
        assert ev["restored_at_step"] == scenarios.S3_FIRST_STEPS == 28
        # The fresh module counted its updates from 0 while the step axis went on from 28.
        assert ev["updates_since_restore"] == int(module.num_batches_tracked) == len(inputs[run][name]) == 28
        assert ev["convergence"] == pytest.approx(1 - 0.9 ** 28, abs=1e-6)
        assert inputs[run][name][0]["updates"] == 1
        assert (ev["init_mean"], ev["init_var"]) == (0.0, 1.0)
        assert list(runs[run].layers[name].steps) == list(range(1, 57))
    assert monitors[run]._step == 56
    assert "the run resumed at step 28" in f.message
    assert "model.state_dict()" in f.message and "num_batches_tracked" in f.message


# -- dropout before BN: found on the live model ------------------------------------------------


def test_s5_dropout_before_bn_is_found_on_the_live_model(suite):
    _, models, _, _, _ = suite
    x, y = scenarios.digits(n=896)
    model = models["s5_dropout_before_bn"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    found = tb_bnstats.diagnose_model(model, (x, y), num_samples=512)
    assert [(f.code, f.severity, f.layers) for f in found] == [("BN004", "warning", ["bn2"])]
    ev = found[0].evidence["bn2"]
    assert 0.5 < ev["train_vs_inference_log_var_ratio"] < math.log(2) + 0.2  # dropout 0.5: up to log 2
    # The inference-side population of bn2's input, in numpy: the first 512 digits in batches of 32,
    # bn1 on each batch's moments, Dropout off.
    pop_var = scenarios.dense_bn_inputs(model, x[:512])["bn2"].var(0)
    eps = model.bn2.eps
    moving = model.bn2.running_var.double().numpy()
    assert ev["moving_vs_inference_log_var_ratio"] == pytest.approx(
        float(np.mean(np.log((moving + eps) / (pop_var + eps)))), rel=1e-4)
    assert ev["samples"] == 512
    assert "nn.Dropout" in found[0].message
    # Nothing in the model or in torch's random stream moved, and modes are as they were.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    for healthy in ("healthy_dense_s0", "healthy_conv_s0"):
        xs = x.reshape(-1, 1, 8, 8) if "conv" in healthy else x
        assert tb_bnstats.diagnose_model(models[healthy], (xs, y), num_samples=512) == []
