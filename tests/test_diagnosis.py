"""Diagnosis: one small real Keras run per failure scenario must produce
exactly its finding on its layers, healthy runs none (tests/diagnosis_scenarios.py)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import diagnosis_scenarios as scenarios
import tb_bnstats
from tb_bnstats import diagnosis
from tb_bnstats.write import summary


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("diagnosis_logs"))
    models, callbacks = {}, {}
    for name in scenarios.SCENARIOS:
        models[name], callbacks[name] = scenarios.run_scenario(name, logdir)
    return logdir, models, callbacks, tb_bnstats.load(logdir)


def _produced(findings, run):
    return {(f.code, f.severity): f.layers for f in findings if f.run == run}


@pytest.mark.parametrize("run", list(scenarios.EXPECTED))
def test_each_scenario_produces_exactly_its_finding(suite, run):
    logdir, _, callbacks, runs = suite
    findings = tb_bnstats.diagnose(runs)
    assert _produced(findings, run) == scenarios.EXPECTED[run]
    for f in findings:
        assert f.code in diagnosis.CODES and f.severity in diagnosis.SEVERITIES
        assert f.scenario == diagnosis.CODES[f.code].scenario
        assert set(f.evidence) == set(f.layers) and f.message.startswith(f.layers[0] + ":")
    # The callback diagnosed the same from memory at the end of fit, and stored it in the logs.
    from_callback = {(f.code, f.severity): f.layers for f in callbacks[run].findings}
    assert from_callback == scenarios.EXPECTED[run]
    stored = runs[run].stored_findings
    assert stored is not None
    assert {(d["code"], d["severity"]): d["layers"] for d in stored} == scenarios.EXPECTED[run]


def test_messages_carry_the_numbers_and_the_fix(suite):
    findings = tb_bnstats.diagnose(suite[3])
    s1 = next(f for f in findings if f.code == "BN001")
    ev = s1.evidence["bn1"]
    assert ev["momentum"] == 0.99 and ev["updates"] == 84 and ev["updates_for_95"] == 299
    assert abs(ev["convergence"] - (1 - 0.99**84)) < 1e-6
    assert "57% converged after 84 updates at momentum 0.99; 95% needs 299" in s1.message
    assert "momentum 0.9" in s1.message and "tb_bnstats.recalibrate" in s1.message
    s2 = next(f for f in findings if f.run == "s2_frozen")
    assert "trainable=False" in s2.message
    json.loads(diagnosis.to_json(findings))


def test_s5_dropout_before_bn_is_found_on_the_live_model(suite):

    x, y = scenarios.digits(n=896)
    found = tb_bnstats.diagnose_model(suite[1]["s5_dropout_before_bn"], (x, y), num_samples=512)
    assert [(f.code, f.severity, f.layers) for f in found] == [("BN004", "warning", ["bn2"])]
    assert found[0].evidence["bn2"]["train_vs_inference_log_var_ratio"] > 0.5  # dropout 0.5: up to log 2
    for healthy in ("healthy_dense_s0", "healthy_conv_s0"):
        xs = x.reshape(-1, 8, 8, 1) if "conv" in healthy else x
        assert tb_bnstats.diagnose_model(suite[1][healthy], xs, num_samples=256) == []


def test_variance_shift_rule_on_logged_series(tmp_path):
    """BN004 from logs: a moving variance fed from something narrower than the
    batches (here a hand-written BN averaging half the batch variance)."""
    rng = np.random.default_rng(0)
    with summary.Writer(tmp_path / "narrow") as w:
        mm, mv = np.zeros(8), np.ones(8)
        for step in range(1, 101):
            bm, bv = rng.normal(1.0, 0.05, 8), rng.uniform(1.9, 2.1, 8)
            mm, mv = 0.9 * mm + 0.1 * bm, 0.9 * mv + 0.1 * bv / 2
            w.layer_moments("bn", step, batch_mean=bm, batch_var=bv, moving_mean=mm, moving_var=mv,
                            updates=step, momentum=0.9, epsilon=1e-3)
    assert [(f.code, f.layers) for f in tb_bnstats.diagnose(tmp_path)] == [("BN004", ["bn"])]


def test_no_false_alarm_from_the_unbiased_variance_convention(tmp_path):
    """PyTorch-style moving variance of Bessel-corrected batch variances,
    batch of 16 per channel: quantities compare like with like."""
    rng = np.random.default_rng(1)
    n = 16
    with summary.Writer(tmp_path / "torch_style") as w:
        mm, mv = np.zeros(6), np.ones(6)
        for step in range(1, 151):
            sample = rng.normal(2.0, 1.5, (n, 6))
            bm, bv = sample.mean(0), sample.var(0)
            mm, mv = 0.9 * mm + 0.1 * bm, 0.9 * mv + 0.1 * bv * n / (n - 1)
            w.layer_moments("bn", step, batch_mean=bm, batch_var=bv, moving_mean=mm, moving_var=mv, updates=step,
                            momentum=0.9, epsilon=1e-5, moving_var_unbiased=True, samples_per_channel=n)
    assert tb_bnstats.diagnose(tmp_path) == []


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tb_bnstats.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_cli_exit_status_and_json(suite):
    logdir = suite[0]
    bad = _cli("diagnose", logdir, "--run", "s1_momentum_0.99")
    assert bad.returncode == 1, bad.stderr
    assert "BN001" in bad.stdout and "bn1, bn2" in bad.stdout
    healthy = _cli("diagnose", logdir, "--run", "healthy_conv_s0")
    assert healthy.returncode == 0, healthy.stderr
    assert "no BatchNormalization problem found" in healthy.stdout
    warn = _cli("diagnose", logdir, "--run", "s7_sorted", "--json", "--fail-on", "warning")
    assert warn.returncode == 1, warn.stderr
    assert [(d["code"], d["layers"]) for d in json.loads(warn.stdout)] == [("BN006", ["bn1"])]


def test_cli_in_process(suite, capsys):
    from tb_bnstats import cli

    logdir = suite[0]
    assert cli.main(["diagnose", logdir, "--run", "s7_sorted"]) == 0  # warnings do not fail by default
    assert cli.main(["diagnose", os.path.join(logdir, "missing")]) == 2
    assert cli.main(["diagnose", logdir, "--run", "no_such_run"]) == 2
    capsys.readouterr()
    assert cli.main(["diagnose", logdir, "--json"]) == 1  # error-level findings in the suite
    produced = {(d["run"], d["code"]) for d in json.loads(capsys.readouterr().out)}
    expected = {(run, code) for run, codes in scenarios.EXPECTED.items() for code, _ in codes}
    assert produced == expected


class NegatedAtInference(keras.layers.Layer):
    """A layer that behaves differently in the two modes for no BN reason."""

    def call(self, x, training=None):
        return x if training else -x


def test_a_gap_without_a_bn_cause_says_so_and_where_else_to_look(tmp_path):
    """BN012 about the run, no layer: the probe's two modes differ in
    accuracy while every BN layer's output is the same in both (a non-BN
    layer after them flips its sign at inference)."""
    x, y = scenarios.digits(n=512)
    keras.utils.set_random_seed(0)
    inp = keras.Input((64,))
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9, name="bn")(keras.layers.Dense(32)(inp)))
    model = keras.Model(inp, keras.layers.Dense(10)(NegatedAtInference()(h)))
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=6, verbose=0,
              callbacks=[tb_bnstats.BNStatsCallback(str(tmp_path / "flip"), verbose=0, **scenarios.EVERY_MEASUREMENT)])
    [finding] = tb_bnstats.diagnose(str(tmp_path))
    assert (finding.code, finding.severity, finding.layers) == ("BN012", "warning", [])
    ev = finding.evidence["run"]
    assert ev["accuracy_training_mode"] - ev["accuracy_inference_mode"] > 0.5
    assert "comes from other layers" in finding.message and "Dropout" in finding.message
    assert "probe_data=" in finding.message


def test_a_finding_over_many_layers_names_a_few_and_counts_the_rest():
    """121 layers (DenseNet121's count) with one code: every layer in
    ``layers`` and its own message, the message naming 5 more and counting
    the rest."""
    hits = [(f"block{i}_bn", "BN001", "error", {"convergence": 0.5}, f"block{i}_bn: not converged.")
            for i in range(121)]
    [finding] = diagnosis.group("densenet", hits)
    assert len(finding.layers) == 121 and finding.messages["block120_bn"] == "block120_bn: not converged."
    assert finding.message == ("block0_bn: not converged. Also: block1_bn, block2_bn, block3_bn, block4_bn, "
                               "block5_bn and 115 more (121 layers).")
    [two] = diagnosis.group("small", hits[:2])
    assert two.message == "block0_bn: not converged. Also: block1_bn."


def test_fixes_speak_the_layers_framework_and_offer_recalibrate_only_where_it_works():
    """tb_bnstats.recalibrate takes Keras 3 and PyTorch models: a tf_keras or
    graph layer's fix says how to re-estimate the statistics by hand."""
    from tb_bnstats.diagnosis import words
    from tb_bnstats.frameworks.keras import KERAS, TF_KERAS
    from tb_bnstats.frameworks.tf1 import TF1
    from tb_bnstats.frameworks.torch import PYTORCH

    offered = [code for code in diagnosis.CODES if "tb_bnstats.recalibrate(" in words.fix(code, KERAS)]
    assert len(offered) >= 10
    for framework in (TF_KERAS, TF1):
        for code in diagnosis.CODES:
            assert "tb_bnstats.recalibrate" not in words.fix(code, framework), (framework, code)
        for code in offered:
            assert "re-estimate the moving statistics" in words.fix(code, framework), (framework, code)
    assert "tf.compat.v1.train.Saver()" in words.fix("BN008", TF1)
    assert "tb_bnstats.recalibrate(model, loader)" in words.fix("BN001", PYTORCH)
