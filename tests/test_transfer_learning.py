"""Transfer learning as the Keras guide does it, with real training: a base
pretrained elsewhere, frozen under a new head, then unfrozen for
fine-tuning (tests/diagnosis_scenarios.py builds the pieces); Keras' overridden
``training=False`` (a keras.applications model: tests/test_applications.py).

The numbers the findings and the tab show are checked against numpy on the
same data: the accuracies with the frozen layers as they are and
recalibrated, how far the statistics moved from the pretrained ones, and the
debiased estimate from a pretrained start."""

import keras
import numpy as np
import pytest

import diagnosis_scenarios as scenarios
import tb_bnstats
from tb_bnstats.frameworks.keras.capture.layers import called_with_training_false

pytestmark = pytest.mark.backend  # runs again under each Keras backend (Makefile, test-python)

BASE_LAYERS = ["conv0_bn", "conv1_bn"]


def _by_code(findings):
    return {(f.code, f.severity): f.layers for f in findings}


def _compile(model, lr):
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def test_the_guides_workflow_gives_no_error_and_names_the_overridden_training_false(tmp_path):
    (x, y), probe = scenarios.new_task()
    base = scenarios.pretrained_base()
    pretrained = {n: (base.get_layer(n).moving_mean.numpy().astype(np.float64),
                      base.get_layer(n).moving_variance.numpy().astype(np.float64)) for n in BASE_LAYERS}
    base.trainable = False
    model = scenarios.on_base(base, 5, training=False)
    head = tb_bnstats.BNStatsCallback(str(tmp_path / "head"), snapshot_every_n_steps=0, verbose=0, probe_data=probe)
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[head])
    for name in BASE_LAYERS:  # frozen: untouched by the head's training
        np.testing.assert_array_equal(base.get_layer(name).moving_mean.numpy(), pretrained[name][0])

    base.trainable = True  # the guide's second phase: unfreeze, compile again with a small learning rate
    _compile(model, 1e-4)
    tune = tb_bnstats.BNStatsCallback(str(tmp_path / "fine_tune"), snapshot_every_n_steps=0, verbose=0,
                                      probe_data=probe)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[tune])

    runs = tb_bnstats.load(str(tmp_path))
    for run in ("head", "fine_tune"):
        assert sorted(runs[run].train_begins[0]["pretrained"]) == BASE_LAYERS
        assert not [f for f in tb_bnstats.diagnose(runs, run=run) if f.severity == "error"]
    # The frozen base is not a bug: no BN002, no "no updates"; its shift from the new data is reported.
    head_findings = tb_bnstats.diagnose(runs, run="head")
    assert {f.code for f in head_findings} <= {"BN010"}
    for name in BASE_LAYERS:
        info = runs["head"].layers[name].info
        assert info.frozen and info.graph_training_false and not info.trainable
    # Unfrozen, fit's training=True overrides the guide's training=False: exactly the base's layers train.
    tune_findings = _by_code(tb_bnstats.diagnose(runs, run="fine_tune"))
    assert tune_findings[("BN011", "warning")] == BASE_LAYERS
    assert ("BN001", "error") not in tune_findings  # a pretrained start is not "not converged"
    message = next(f.message for f in tune.findings if f.code == "BN011")
    assert "training=False" in message and "keras-team/keras#20285" in message and "trainable=False" in message

    # How far the statistics moved from the pretrained ones, and the debiased estimate, against numpy.
    for name in BASE_LAYERS:
        layer, logged = base.get_layer(name), runs["fine_tune"].layers[name]
        mean0, var0 = pretrained[name]
        moving_mean, moving_var = (v.numpy().astype(np.float64) for v in (layer.moving_mean, layer.moving_variance))
        eps = layer.epsilon
        assert logged.series["start_mean_gap/p50"][-1] == pytest.approx(
            np.median(np.abs(moving_mean - mean0) / np.sqrt(var0 + eps)), rel=1e-4)
        assert logged.series["start_abs_log_var_ratio/p50"][-1] == pytest.approx(
            np.median(np.abs(np.log((moving_var + eps) / (var0 + eps)))), rel=1e-4)
        t = int(logged.series["updates"][-1])
        assert t == 2 * int(np.ceil(len(x) / 32))
        w = layer.momentum ** t
        np.testing.assert_allclose(logged.snapshots["debiased_mean"][-1], (moving_mean - w * mean0) / (1 - w),
                                   rtol=1e-4, atol=1e-4)


def _recalibrated_by_hand(model, base, x, y):
    """Inference-mode accuracy on ``(x, y)`` with each frozen BN layer of
    ``base`` given the numpy moments of its input, layer after layer (each
    input computed with the layers before it already recalibrated); the
    statistics are put back after."""
    saved = [(v, v.numpy().copy()) for n in BASE_LAYERS
             for v in (base.get_layer(n).moving_mean, base.get_layer(n).moving_variance)]
    try:
        for name in BASE_LAYERS:
            layer = base.get_layer(name)
            inputs = keras.ops.convert_to_numpy(
                keras.Model(base.inputs, layer.input)(x, training=False)).astype(np.float64)
            layer.moving_mean.assign(inputs.mean(axis=(0, 1, 2)).astype("float32"))
            layer.moving_variance.assign(inputs.var(axis=(0, 1, 2)).astype("float32"))
        return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))
    finally:
        for variable, value in saved:
            variable.assign(value)


def test_a_frozen_base_on_scaled_data_warns_with_the_measured_accuracies(tmp_path):
    model, cb = scenarios.run_scenario("s9_frozen_base_scaled", str(tmp_path))
    _, (xp, yp) = scenarios.new_task(1.5, 0.5)
    finding = next(f for f in cb.findings if f.code == "BN010")
    assert finding.severity == "warning" and finding.layers == BASE_LAYERS
    ev = finding.evidence["conv0_bn"]
    assert ev["frozen"] and ev["pretrained"] and ev["mean_gap_p50"] > 0.4
    # As it is (the measurement restored every statistic it wrote) and recalibrated, against numpy.
    as_is = float(np.mean(np.argmax(model.predict(xp, verbose=0), -1) == yp))
    assert ev["accuracy_inference_mode"] == pytest.approx(as_is, abs=1e-6)
    base = model.get_layer("base")
    assert ev["accuracy_recalibrated"] == pytest.approx(_recalibrated_by_hand(model, base, xp, yp), abs=1e-6)
    assert f"from {as_is:.1%} to {ev['accuracy_recalibrated']:.1%}" in finding.message
    assert "include_frozen=True" in finding.message
    # The same finding from the logs alone (CLI, tab), with the metrics the callback logged.
    runs = tb_bnstats.load(str(tmp_path))
    assert runs["s9_frozen_base_scaled"].metrics["probe_recalibrated/accuracy"][1][-1] == pytest.approx(
        ev["accuracy_recalibrated"])
    computed = tb_bnstats.diagnosis.diagnose_run("s9_frozen_base_scaled", runs["s9_frozen_base_scaled"])
    assert _by_code(computed) == _by_code(cb.findings)


def test_training_false_in_the_graph_is_found_on_exactly_the_layers_concerned():
    inner_inp = keras.Input((4,))
    inner = keras.Model(inner_inp, keras.layers.BatchNormalization(name="inner_bn")(inner_inp), name="inner")
    inp = keras.Input((4,))
    direct = keras.layers.BatchNormalization(name="direct_bn")
    plain = keras.layers.BatchNormalization(name="plain_bn")
    model = keras.Model(inp, plain(direct(inner(inp, training=False), training=False)))
    marked = called_with_training_false(model)
    assert marked == {id(model.get_layer("inner").get_layer("inner_bn")), id(direct)}
