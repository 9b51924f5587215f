"""The train/inference gap probe (BNStatsCallback(probe_data=...)) against
independent computations: it changes nothing, its numbers match numpy on
the same batch, and it shows the classic symptom and S8."""

import warnings

import keras
import numpy as np
import pytest

import diagnosis_scenarios as scenarios
import tb_bnstats
from keras_models import capture_state, deterministic
from tb_bnstats import BNStatsCallback, quantities
from tb_bnstats.format import metadata
from tb_bnstats.frameworks.keras import passes as keras_passes
from tb_bnstats.frameworks.keras.capture import hooks
from tb_bnstats.frameworks.keras.capture.layers import find_batchnorm_layers
from tb_bnstats.measure import gap as probe
from tb_bnstats.write import summary

pytestmark = pytest.mark.backend  # runs again under each Keras backend (Makefile, test-python)

BACKEND = keras.backend.backend()


def _digits_split():
    x, y = scenarios.digits()
    return (x[:512], y[:512]), (x[896:1152], y[896:1152])


def _state(model):
    """Every variable the probe could touch, and what the capture keeps, as numpy copies."""
    values = [np.array(v.numpy(), copy=True) for v in model.variables]
    values += [np.array(v.numpy(), copy=True) for v in model.optimizer.variables]
    values += [np.array(v.numpy(), copy=True) for v in model.metrics_variables]
    return values + capture_state(model)


def _traces(fn):
    """How often a compiled pass was traced (None with torch, which runs eagerly)."""
    if BACKEND == "tensorflow":
        return fn.experimental_get_tracing_count()
    return fn._cache_size() if BACKEND == "jax" else None


def test_probe_changes_no_variable_optimizer_step_rng_or_capture_counter(tmp_path):
    (x, y), (xv, yv) = _digits_split()
    model = scenarios.dense_model(dropout_before="bn2")  # Dropout: the probe's training pass draws random numbers
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[BNStatsCallback(tmp_path / "r", verbose=0)])
    seeds = [v for v in model.non_trainable_variables if "seed_generator" in v.path]
    assert seeds, "the model has a seed generator state to check"
    gp = keras_passes.GapProbe(model, xv, yv, find_batchnorm_layers(model))
    before = _state(model)
    first = gp.run()
    second = gp.run()
    after = _state(model)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    # Deterministic: same RNG state and variables give the same numbers.
    assert first.metrics_train == second.metrics_train and first.metrics_inference == second.metrics_inference
    for name, layer in first.layers.items():
        assert layer.output_drift == second.layers[name].output_drift
        np.testing.assert_array_equal(layer.probe_mean, second.layers[name].probe_mean)
    assert _traces(gp._fn) in (1, None)  # traced once, reused
    assert first.metrics_train["accuracy"] > 0.2 and set(first.layers) == {"bn1", "bn2"}


def test_training_is_bit_identical_with_the_probe(tmp_path):
    (x, y), (xv, yv) = _digits_split()

    def run(with_probe):
        deterministic()
        model = scenarios.dense_model(dropout_before="bn2", seed=5)
        seen = []

        class Losses(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                seen.append(float(logs["loss"]))

        kwargs = dict(probe_data=(xv, yv), probe_every_n_steps=2, measure_budget=None) if with_probe else dict(
            probe_data=False)
        cb = BNStatsCallback(tmp_path / f"run_{with_probe}", verbose=0, **kwargs)
        keras.utils.set_random_seed(7)
        model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[cb, Losses()])
        return seen, model

    without, plain = run(False)
    with_probe, probed = run(True)
    assert with_probe == without  # bit-identical losses step by step
    for a, b in zip(probed.variables, plain.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    steps = tb_bnstats.load(tmp_path)["run_True"].metrics["probe_train/loss"][0]
    assert list(steps) == [1] + list(range(2, 33, 2))  # the first step, then every 2 (epoch ends: 16, 32)


def _random_states():
    """Every random-number state outside the model: NumPy's, Python's, and
    Keras' global seed generator (the model's own are among its variables)."""
    import random

    from keras.src.random.seed_generator import global_seed_generator

    return np.random.get_state()[1].copy(), random.getstate(), np.array(global_seed_generator().state.numpy())


def test_the_default_probe_changes_nothing_and_costs_two_passes_per_epoch(tmp_path):
    """Without probe_data the callback probes the first 256 training samples:
    losses step by step, every variable (the dropout seed generator's state
    included) and the random-number states outside the model are exactly
    those of a run without any probe; the probe runs once per epoch end, one
    compiled graph of two forward passes (training and inference mode)."""
    (x, y), _ = _digits_split()
    epochs = 3

    def run(probe_data):
        deterministic()
        model = scenarios.dense_model(dropout_before="bn2", seed=5)
        seen, counted = [], {"executions": 0, "forward_passes": 0}

        class Count(keras.callbacks.Callback):  # after the BN callback: its probe exists at train begin
            def on_train_batch_end(self, batch, logs=None):
                seen.append(float(logs["loss"]))

            def on_train_begin(self, logs=None):
                probe = cb._probe
                if probe is None:
                    return
                fn, call = probe._fn, model.stateless_call

                def executed(*args):
                    counted["executions"] += 1
                    counted["inside"] = True
                    try:
                        return fn(*args)
                    finally:
                        counted["inside"] = False

                def forward(*args, **kwargs):  # a forward pass of the probe (not the live checks at the end)
                    counted["forward_passes"] += counted.get("inside", False)
                    return call(*args, **kwargs)

                probe._fn, model.stateless_call = executed, forward

        cb = BNStatsCallback(tmp_path / f"run_{probe_data is None}", verbose=0, probe_data=probe_data,
                             measure_budget=None)  # a probe at every epoch end
        keras.utils.set_random_seed(7)
        model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[cb, Count()])
        return seen, model, _random_states(), counted, cb

    without, plain, rng_plain, _, _ = run(False)
    with_probe, probed, rng_probed, counted, cb = run(None)
    assert with_probe == without
    assert len(probed.variables) == len(plain.variables)
    for a, b in zip(probed.variables, plain.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(rng_probed[0], rng_plain[0])
    assert rng_probed[1] == rng_plain[1]
    np.testing.assert_array_equal(rng_probed[2], rng_plain[2])
    assert counted["executions"] == epochs
    # Traced backends count the passes once per trace, torch once per execution: at most 2 per execution.
    assert 2 <= counted["forward_passes"] <= 2 * counted["executions"]
    run_data = tb_bnstats.load(tmp_path)["run_True"]
    assert list(run_data.metrics["probe_train/accuracy"][0]) == [16, 32, 48]
    assert run_data.train_begins[-1]["probe"] == "first_training_batch"
    assert "probe" not in str(tb_bnstats.load(tmp_path)["run_False"].metrics)


def test_the_default_probe_batch_is_the_first_training_samples_and_its_accuracies_match_numpy(tmp_path):
    """The kept batch: 256 distinct rows of the training data with their own
    labels, in the shuffled order the first 8 steps ran on; the accuracies
    and losses logged at the last probe equal a numpy forward pass of it in
    both modes."""
    (x, y), _ = _digits_split()
    model = scenarios.dense_model()
    cb = BNStatsCallback(tmp_path / "quick_start", verbose=0, measure_budget=None)  # probed at the last epoch end too
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[cb])
    kept_x, kept_y = cb._recorder.capture.first_batch()
    assert hooks.FIRST_BATCH_ROWS == probe.MAX_PROBE_SAMPLES == 256  # as many as a probe uses
    assert kept_x.shape == (256, x.shape[1]) and kept_y.shape == (256,)
    rows = {row.tobytes(): label for row, label in zip(x, y)}
    assert all(rows[row.tobytes()] == label for row, label in zip(kept_x, kept_y))  # training rows, own labels
    assert len({row.tobytes() for row in kept_x}) == 256
    assert not np.array_equal(kept_x, x[:256])  # fit shuffled: the rows the steps ran on, not the first of x
    run = tb_bnstats.load(tmp_path)["quick_start"]
    ref = _numpy_forward(model, kept_x)
    for split, logits in (("probe_train", ref["logits"][0]), ("probe_inference", ref["logits"][1])):
        loss, acc = _ce_and_accuracy(logits, kept_y)
        assert run.metrics[f"{split}/loss"][1][-1] == pytest.approx(loss, rel=1e-4)
        assert run.metrics[f"{split}/accuracy"][1][-1] == pytest.approx(acc, abs=1e-6)


def _numpy_forward(model, x):
    """dense_model (Dense -> BN -> ReLU twice, no bias) in numpy, in training
    and in inference mode: per BN layer its input moments and outputs."""
    layers = {layer.name: layer for layer in model.layers}
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    out = {}
    h_t = h_i = x.astype(np.float64)
    for name, d in zip(("bn1", "bn2"), dense):
        bn = layers[name]
        w = d.kernel.numpy().astype(np.float64)
        a_t, a_i = h_t @ w, h_i @ w
        g, b = bn.gamma.numpy(), bn.beta.numpy()
        mu, var = a_t.mean(0), a_t.var(0)
        mm, mv = bn.moving_mean.numpy(), bn.moving_variance.numpy()
        y_t = g * (a_t - mu) / np.sqrt(var + bn.epsilon) + b
        y_i = g * (a_i - mm) / np.sqrt(mv + bn.epsilon) + b
        out[name] = dict(mu=mu, var=var, mm=mm, mv=mv, eps=bn.epsilon,
                         drift=np.linalg.norm(y_t - y_i) / np.linalg.norm(y_t))
        h_t, h_i = np.maximum(y_t, 0), np.maximum(y_i, 0)
    head = dense[-1].kernel.numpy().astype(np.float64), dense[-1].bias.numpy().astype(np.float64)
    out["logits"] = (h_t @ head[0] + head[1], h_i @ head[0] + head[1])
    return out


def _ce_and_accuracy(logits, y):
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean()), float(np.mean(logits.argmax(1) == y))


def test_logged_metrics_and_layer_series_match_numpy(tmp_path):
    (x, y), (xv, yv) = _digits_split()
    model = scenarios.dense_model()
    cb = BNStatsCallback(tmp_path / "run", verbose=0, probe_data=(xv, yv), measure_budget=None)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[cb])
    run = tb_bnstats.load(tmp_path)["run"]
    last = 32  # the last probe: end of epoch 2, the model as it is now
    ref = _numpy_forward(model, xv)
    for split, logits in (("probe_train", ref["logits"][0]), ("probe_inference", ref["logits"][1])):
        loss, acc = _ce_and_accuracy(logits, yv)
        steps, values = run.metrics[f"{split}/loss"]
        assert list(steps) == [16, 32]
        assert values[-1] == pytest.approx(loss, rel=1e-4)
        assert run.metrics[f"{split}/accuracy"][1][-1] == pytest.approx(acc, abs=1e-6)
    for name in ("bn1", "bn2"):
        layer, r = run.layers[name], ref[name]
        i = int(np.flatnonzero(layer.steps == last)[0])
        gap = np.abs(r["mu"] - r["mm"]) / np.sqrt(r["var"] + r["eps"])
        lvr = np.abs(np.log((r["var"] + r["eps"]) / (r["mv"] + r["eps"])))
        assert layer.series["probe_output_drift"][i] == pytest.approx(r["drift"], rel=1e-4)
        assert layer.series["probe_mean_gap/p50"][i] == pytest.approx(np.median(gap), rel=1e-3, abs=1e-5)
        assert layer.series["probe_mean_gap/max"][i] == pytest.approx(gap.max(), rel=1e-3, abs=1e-5)
        assert layer.series["probe_abs_log_var_ratio/p50"][i] == pytest.approx(np.median(lvr), rel=1e-3, abs=1e-5)
        # Only at probe steps; the per-step series have no hole there.
        assert np.isfinite(layer.series["probe_output_drift"]).sum() == 2
        assert np.isfinite(layer.series["mean_gap/p50"]).all()


def test_classic_symptom_momentum_099_short_run(tmp_path):
    """Momentum 0.99 for 28 steps: the moving statistics are 25% converged,
    inference-mode accuracy on the probe batch is far below training mode's."""
    _, (xv, yv) = _digits_split()
    x, y = scenarios.digits(n=896)
    model = scenarios.dense_model(momentum=0.99)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0,
              callbacks=[BNStatsCallback(tmp_path / "run", verbose=0, probe_data=(xv, yv))])
    metrics = tb_bnstats.load(tmp_path)["run"].metrics
    train, inference = metrics["probe_train/accuracy"][1][-1], metrics["probe_inference/accuracy"][1][-1]
    assert train - inference > 0.25, (train, inference)
    assert metrics["probe_inference/loss"][1][-1] > 1.4 * metrics["probe_train/loss"][1][-1]


def test_healthy_run_with_a_same_distribution_probe_has_no_finding(tmp_path):
    x, y = scenarios.digits()
    model = scenarios.dense_model(seed=1)
    cb = BNStatsCallback(tmp_path / "run", verbose=0, probe_data=(x[896:1152], y[896:1152]))
    model.fit(x[:896], y[:896], batch_size=32, epochs=3, verbose=0, callbacks=[cb])
    assert cb.findings == []
    assert tb_bnstats.diagnose(tmp_path) == []
    layer = tb_bnstats.load(tmp_path)["run"].layers["bn1"]
    probe_gap = layer.series["probe_mean_gap/p50"]
    assert np.nanmax(probe_gap) < 0.3  # diagnosis.THRESHOLDS["probe_shift_mean"]


def test_a_dataset_gives_one_capped_batch():
    xs = np.arange(600 * 3, dtype="float32").reshape(600, 3)
    ys = np.arange(600)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices((xs, ys)).batch(400)
    else:  # any iterable of batches
        ds = [(xs[:400], ys[:400]), (xs[400:], ys[400:])]
    x, y = probe.take_probe_batch(ds)
    assert x.shape == (256, 3) and list(np.asarray(y)) == list(range(256))
    x, y = probe.take_probe_batch((xs[:10], ys[:10]))
    assert x.shape == (10, 3) and y.shape == (10,)
    x, y = probe.take_probe_batch(xs)
    assert x.shape == (256, 3) and y is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(probe_data="x.npy"), "probe_data"),
    (dict(probe_data=3), "probe_data"),
    (dict(probe_data={"a": np.zeros((2, 2))}), "probe_data"),
    (dict(probe_data=(np.zeros((4, 2)), np.zeros(3))), "same number of rows"),
    (dict(probe_data=np.zeros((0, 2))), "same number of rows"),
    (dict(probe_data=(np.zeros((4, 2)), np.zeros(4)), probe_every_n_steps=-1), "probe_every_n_steps"),
    (dict(probe_data=(np.zeros((4, 2)), np.zeros(4)), probe_every_n_steps=1.5), "probe_every_n_steps"),
    (dict(probe_data=(np.zeros((4, 2)), np.zeros(4)), probe_every_n_steps=True), "probe_every_n_steps"),
    (dict(probe_data=False, probe_every_n_steps=5), "needs probe_data"),
    (dict(probe_data=True), "got True"),
])
def test_bad_probe_arguments_fail_at_construction(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        BNStatsCallback(tmp_path / "run", **kwargs)


def test_a_failing_probe_warns_once_and_training_goes_on(tmp_path):
    (x, y), _ = _digits_split()
    model = scenarios.dense_model()
    wrong = (np.zeros((8, 5), "float32"), np.zeros(8, "int64"))  # the model takes 64 features
    cb = BNStatsCallback(tmp_path / "run", verbose=0, probe_data=wrong, probe_every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[cb])
    probe_warnings = [w for w in caught if "probe" in str(w.message)]
    assert len(probe_warnings) == 1 and issubclass(probe_warnings[0].category, RuntimeWarning)
    assert len(history.history["loss"]) == 2
    run = tb_bnstats.load(tmp_path)["run"]
    assert list(run.layers["bn1"].steps) == list(range(1, 33))  # the BN statistics are all there
    assert not any(k.startswith("probe_") for k in run.metrics)


def test_subclassed_model_gets_layer_series(tmp_path):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d1, self.bn = keras.layers.Dense(16), keras.layers.BatchNormalization(momentum=0.5, name="bn")
            self.head = keras.layers.Dense(10)

        def call(self, x, training=None):
            return self.head(keras.ops.relu(self.bn(self.d1(x), training=training)))

    (x, y), (xv, yv) = _digits_split()
    keras.utils.set_random_seed(0)
    model = Net()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x[:128], y[:128], batch_size=32, epochs=1, verbose=0,
              callbacks=[BNStatsCallback(tmp_path / "run", verbose=0, probe_data=(xv, yv))])
    run = tb_bnstats.load(tmp_path)["run"]
    assert set(run.metrics) >= {"probe_train/loss", "probe_inference/accuracy"}
    (name,) = run.layers
    assert np.isfinite(run.layers[name].series["probe_output_drift"]).sum() == 1


def test_writer_probe_splits_and_names(tmp_path):
    info = metadata.LayerInfo(name="bn", channels=2, momentum=0.9, epsilon=1e-3)
    with summary.Writer(str(tmp_path / "run"), keep_history=10) as w:
        w.layer(info, 1, np.zeros(2), np.ones(2), np.zeros(2), np.ones(2), 1)
        w.probe(info, 1, {"probe_output_drift": 0.5})
        w.metrics("probe_train", {"accuracy": 0.9}, 1)
        w.metrics("probe_inference", {"accuracy": 0.4}, 1)
        with pytest.raises(ValueError, match="unknown probe series"):
            w.probe(info, 1, {"drift": 0.5})
        with pytest.raises(ValueError, match="split must be one of"):
            w.metrics("probe", {"accuracy": 0.4}, 1)
        mem = w.run_data()
    run = tb_bnstats.load(tmp_path)["run"]
    assert run.layers["bn"].series["probe_output_drift"].tolist() == [0.5]
    assert mem.layers["bn"].series["probe_output_drift"].tolist() == [0.5]
    assert run.metrics["probe_inference/accuracy"][1].tolist() == pytest.approx([0.4])


def test_routes_serve_the_probe_series_and_findings(tmp_path):
    """Through TensorBoard's stack: the probe series and splits are served,
    and a converged layer with a far probe batch gets BN009 (computed)."""
    import json

    from conftest import make_client

    rng = np.random.default_rng(0)
    info = metadata.LayerInfo(name="bn", channels=8, momentum=0.9, epsilon=1e-3)
    drift = {}
    with summary.Writer(str(tmp_path / "run")) as w:
        for step in range(1, 101):
            bm = rng.normal(0, 0.05, 8)
            w.layer(info, step, bm, np.ones(8), np.zeros(8), np.ones(8), step)
            if step % 25 == 0:
                # The probe batch's means 0.6 std off the moving means: S8.
                drift[step] = float(rng.uniform(0.5, 1.0))
                w.probe(info, step, quantities.probe_series(0.0, np.full(8, 0.6), np.ones(8), np.zeros(8),
                                                            np.ones(8), drift[step]))
                w.metrics("probe_train", {"accuracy": 0.9}, step)
                w.metrics("probe_inference", {"accuracy": 0.6}, step)
    client, _ = make_client(str(tmp_path))
    get = lambda url: (lambda r: (r.status_code, json.loads(r.get_data())))(client.get("/data/plugin/bn_stats/" + url))  # noqa: E731
    status, runs = get("runs")
    assert status == 200 and runs["probe_quantities"] == list(metadata.PROBE_SERIES)
    assert set(metadata.PROBE_SERIES) <= set(runs["runs"][0]["layers"][0]["quantities"])
    status, ser = get("series?run=run&layer=bn&quantities=probe_output_drift,probe_mean_gap/p50")
    assert status == 200
    assert ser["series"]["probe_output_drift"]["steps"] == sorted(drift)
    assert ser["series"]["probe_output_drift"]["values"] == pytest.approx([drift[s] for s in sorted(drift)], rel=1e-6)
    assert ser["series"]["probe_mean_gap/p50"]["values"] == pytest.approx([0.6] * 4, rel=1e-6)
    status, bad = get("series?run=run&layer=bn&quantities=probe_nonsense")
    assert status == 400 and "probe_output_drift" in bad["error"]
    status, ov = get("overview?run=run")
    assert ov["layers"][0]["latest"]["probe_output_drift"] == pytest.approx(drift[100], rel=1e-6)
    status, loss = get("loss?run=run")
    splits = {(s["split"], s["name"]) for s in loss["series"]}
    assert {("probe_train", "accuracy"), ("probe_inference", "accuracy")} <= splits
    status, found = get("findings?run=run")
    assert [(f["code"], f["layers"], f["source"]) for f in found["findings"]] == [("BN009", ["bn"], "computed")]
    assert found["findings"][0]["evidence"]["bn"]["probe_mean_gap_p50"] == pytest.approx(0.6, rel=1e-6)


class _ModeFlip(keras.layers.Layer):
    """A layer whose class name starts with "_": Keras names it "_mode_flip"."""

    def call(self, x, training=None):
        return x if training else -x


def test_a_layer_named_with_an_underscore_does_not_stop_the_probe(tmp_path):
    """Under TensorFlow "_mode_flip" is not a valid root name scope; the probe's
    pass runs under a scope of its own, as Keras' steps do, and logs."""
    (x, y), _ = _digits_split()
    keras.utils.set_random_seed(0)
    inp = keras.Input((x.shape[1],))
    h = keras.layers.BatchNormalization(momentum=0.9, name="bn")(keras.layers.Dense(16)(inp))
    model = keras.Model(inp, keras.layers.Dense(10)(_ModeFlip()(h)))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failing probe warns: fail here instead
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[BNStatsCallback(tmp_path / "r", verbose=0)])
    run = tb_bnstats.load(tmp_path)["r"]
    assert list(run.metrics["probe_train/accuracy"][0]) == [16]
    assert np.isfinite(run.layers["bn"].series["probe_output_drift"]).sum() == 1
