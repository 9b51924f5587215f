"""Resuming from a checkpoint (issue #6) and S3, moving statistics lost on
save/restore (BN008): real training runs, real checkpoints, logs read back
through tb_bnstats.load."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import diagnosis_scenarios as scenarios
import tb_bnstats
from tb_bnstats import BNStatsCallback

pytestmark = pytest.mark.backend  # runs again under each Keras backend (Makefile, test-python)

M = 0.99  # 1 - m**t is 0.18 after 20 updates, 0.33 after 40: a restarted count shows
STEPS = 20  # per fit: 640 samples, batch 32
TESTS = os.path.dirname(os.path.abspath(__file__))


def _data():
    return scenarios.digits(n=STEPS * 32)


def _fit(model, run_dir):
    x, y = _data()
    cb = BNStatsCallback(run_dir, snapshot_every_n_steps=0, verbose=0)
    model.fit(x, y, batch_size=32, epochs=1, shuffle=True, verbose=0, callbacks=[cb])
    return cb


def _check_continued(run, total):
    """Steps 1..total once each; the update count continues; convergence and
    the debiased moments follow from it (numpy, initial values 0 and 1)."""
    for name in ("bn1", "bn2"):
        layer = run.layers[name]
        assert layer.steps.tolist() == list(range(1, total + 1))
        updates = layer.series["updates"]
        assert updates.tolist() == list(range(1, total + 1))
        w = M ** updates
        np.testing.assert_allclose(layer.series["convergence"], 1 - w, rtol=1e-6)
        np.testing.assert_allclose(layer.series["debiased_mean"], layer.series["moving_mean"] / (1 - w),
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(layer.series["debiased_var"], (layer.series["moving_var"] - w) / (1 - w),
                                   rtol=1e-4, atol=1e-5)
    loss_steps = run.metrics["train/loss"][0]
    assert loss_steps.tolist() == list(range(1, total + 1))


def _codes(findings):
    return {(f.code, f.severity): f.layers for f in findings}


def test_model_save_and_load_model_in_a_new_process_continue_the_counts(tmp_path):
    run_dir = str(tmp_path / "logs" / "run")
    model = scenarios.dense_model(momentum=M)
    _fit(model, run_dir)
    path = str(tmp_path / "model.keras")
    model.save(path)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        import keras
        import diagnosis_scenarios as scenarios
        from tb_bnstats import BNStatsCallback
        model = keras.saving.load_model({path!r})
        assert int(model.optimizer.iterations.numpy()) == {STEPS}
        x, y = scenarios.digits(n={STEPS * 32})
        cb = BNStatsCallback({run_dir!r}, snapshot_every_n_steps=0, verbose=1)
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[cb])
        print("BN008" in {{f.code for f in cb.findings}})
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr
    assert f"resumed at step {STEPS}: update counts of 2 layer(s) continue from {STEPS}" in done.stdout
    assert done.stdout.strip().endswith("False")  # no BN008 from the callback's own diagnosis
    run = tb_bnstats.load(tmp_path / "logs")["run"]
    _check_continued(run, 2 * STEPS)
    assert run.train_begins == [
        {"step": 0, "resumed": [], "moving_at_initializer": [], "pretrained": [], "probe": "first_training_batch"},
        {"step": STEPS, "resumed": ["bn1", "bn2"], "moving_at_initializer": [], "pretrained": [],
         "probe": "first_training_batch"},
    ]
    assert "BN008" not in {f.code for f in tb_bnstats.diagnose(tmp_path / "logs")}


def test_save_weights_and_load_weights_into_fresh_objects_continue_the_counts(tmp_path):
    run_dir = str(tmp_path / "run")
    model = scenarios.dense_model(momentum=M)
    _fit(model, run_dir)
    path = str(tmp_path / "ckpt.weights.h5")
    model.save_weights(path)
    fresh = scenarios.dense_model(momentum=M, seed=1)
    # load_weights restores the optimizer's state (its step count) only into
    # a built optimizer.
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(path)
    np.testing.assert_array_equal(fresh.get_layer("bn1").moving_mean.numpy(),
                                  model.get_layer("bn1").moving_mean.numpy())
    cb = _fit(fresh, run_dir)
    assert "BN008" not in {f.code for f in cb.findings}
    run = tb_bnstats.load(tmp_path)["run"]
    _check_continued(run, 2 * STEPS)
    assert run.train_begins[-1]["resumed"] == ["bn1", "bn2"]


def test_a_second_fit_in_the_same_process_continues_without_resuming(tmp_path):
    model = scenarios.dense_model(momentum=M)
    _fit(model, str(tmp_path / "run"))
    _fit(model, str(tmp_path / "run"))
    run = tb_bnstats.load(tmp_path)["run"]
    _check_continued(run, 2 * STEPS)
    assert [r["resumed"] for r in run.train_begins] == [[], []]  # the count simply went on


def test_s3_only_trainable_weights_restored_is_bn008_from_the_logs(tmp_path):
    model = scenarios.dense_model()
    _fit(model, str(tmp_path / "first"))
    restored = scenarios.restore_trainable_only(model)
    # A new run directory: the finding comes from the record of this fit alone.
    cb = _fit(restored, str(tmp_path / "resumed"))
    expected = {("BN008", "error"): ["bn1", "bn2"]}
    assert _codes(cb.findings) == expected
    findings = tb_bnstats.diagnose(tmp_path / "resumed")
    assert _codes(findings) == expected
    f = findings[0]
    assert f.scenario == "S3" and f.evidence["bn1"]["restored_at_step"] == STEPS
    assert f.evidence["bn1"]["updates_since_restore"] == STEPS
    assert abs(f.evidence["bn1"]["convergence"] - (1 - 0.9 ** STEPS)) < 1e-6
    assert f"resumed at step {STEPS}" in f.message and "mean 0, variance 1" in f.message
    assert "model.save / save_weights include them" in f.message and "tb_bnstats.recalibrate" in f.message
    run = tb_bnstats.load(tmp_path)["resumed"]
    assert run.train_begins == [{"step": STEPS, "resumed": [], "moving_at_initializer": ["bn1", "bn2"],
                                 "pretrained": [], "probe": "first_training_batch"}]
    # The update count restarted with the statistics: steps go on, updates from 1.
    assert run.layers["bn1"].steps.tolist() == list(range(STEPS + 1, 2 * STEPS + 1))
    assert run.layers["bn1"].series["updates"].tolist() == list(range(1, STEPS + 1))


def test_a_layer_never_updated_is_bn002_not_bn008_after_a_restore(tmp_path):
    """A BN called with training=False keeps its initial statistics: after a
    proper restore that is still S2, not a lost restore."""
    model = scenarios.dense_model(inference_mode="bn2")
    _fit(model, str(tmp_path / "run"))
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    cb = _fit(restored, str(tmp_path / "run"))
    assert _codes(cb.findings) == {("BN002", "error"): ["bn2/bn"]}
    run = tb_bnstats.load(tmp_path)["run"]
    assert run.train_begins[-1] == {"step": STEPS, "resumed": ["bn1"], "moving_at_initializer": ["bn2/bn"],
                                    "pretrained": [], "probe": "first_training_batch"}
    assert _codes(tb_bnstats.diagnose(tmp_path)) == {("BN002", "error"): ["bn2/bn"]}


def test_frozen_layers_are_not_reported_at_their_initial_values(tmp_path):
    """bn2 frozen from the start keeps its initial statistics on purpose."""
    model = scenarios.dense_model(frozen="bn2")
    _fit(model, str(tmp_path / "run"))
    fresh = scenarios.dense_model(frozen="bn2", seed=1)
    fresh.optimizer.build(fresh.trainable_variables)
    for new, old in zip(fresh.trainable_variables, model.trainable_variables):
        new.assign(old)
    fresh.optimizer.iterations.assign(model.optimizer.iterations)
    cb = _fit(fresh, str(tmp_path / "run"))
    run = tb_bnstats.load(tmp_path)["run"]
    assert run.train_begins[-1]["moving_at_initializer"] == ["bn1"]
    assert _codes(cb.findings)[("BN008", "error")] == ["bn1"]


def test_bn008_from_a_hand_written_record_names_the_unsafe_steps(tmp_path):
    """summary.Writer.train_begin (custom loops): a layer at its initial
    values at step 100 that has converged again since is still BN008, with
    the steps whose statistics did not match; one never updated is not."""
    from tb_bnstats.write import summary

    rng = np.random.default_rng(0)
    with summary.Writer(tmp_path / "custom") as w:
        w.train_begin(100, {"resumed": [], "moving_at_initializer": ["bn", "stuck"]})
        mm, mv = np.zeros(4), np.ones(4)
        for t in range(1, 61):
            bm, bv = rng.normal(2.0, 0.05, 4), rng.uniform(3.9, 4.1, 4)
            mm, mv = 0.9 * mm + 0.1 * bm, 0.9 * mv + 0.1 * bv
            w.layer_moments("bn", 100 + t, batch_mean=bm, batch_var=bv, moving_mean=mm, moving_var=mv,
                            updates=t, momentum=0.9, epsilon=1e-3)
            w.layer_moments("stuck", 100 + t, batch_mean=bm, batch_var=bv, moving_mean=np.zeros(4),
                            moving_var=np.ones(4), updates=0, momentum=0.9, epsilon=1e-3)
    findings = tb_bnstats.diagnose(tmp_path)
    assert _codes(findings) == {("BN008", "error"): ["bn"], ("BN002", "error"): ["stuck"]}
    f = next(f for f in findings if f.code == "BN008")
    assert f.evidence["bn"]["updates_since_restore"] == 60
    assert "rebuilt from 60 batches since (99.8% converged)" in f.message
    assert "between steps 100 and 129" in f.message  # 29 updates reach 95% at momentum 0.9
