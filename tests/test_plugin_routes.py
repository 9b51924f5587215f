"""The plugin's routes through TensorBoard's own stack (EventMultiplexer ->
MultiplexerDataProvider -> TBContext -> TensorBoardWSGI -> werkzeug client),
checked against numpy recomputations from the raw moments the fixtures wrote."""

import csv
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tb_bnstats
from conftest import SNAPSHOT_EVERY, SPIKE_STEP, make_client, write_many_records
from tb_bnstats.plugin import data

P = "/data/plugin/bn_stats"
RTOL = 2e-6  # series are stored as float32


def get(client, url, status=200):
    r = client.get(P + url)
    assert r.status_code == status, (url, r.status_code, r.get_data(as_text=True)[:500])
    return r


def getj(client, url, status=200):
    r = get(client, url, status)
    assert r.mimetype == "application/json"
    return json.loads(r.get_data(as_text=True))


def raw_mean_gap(layer):
    """|mu_B - mu_R| / sqrt(var_B + eps) per step and channel, from the raw moments."""
    bm, bv, mm = (np.array(getattr(layer, k)) for k in ("batch_mean", "batch_var", "moving_mean"))
    return np.abs(bm - mm) / np.sqrt(bv + layer.epsilon)


# -- loading ------------------------------------------------------------------------

def test_loader_imports_no_tensorflow():
    code = ("import sys; import tb_bnstats.plugin.loader as l; l.BNStatsLoader; "
            "import tb_bnstats.plugin.plugin; "
            "bad = [m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_entry_point_registered():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="tensorboard_plugins")}
    assert eps.get("bn_stats") == "tb_bnstats.plugin.loader:BNStatsLoader"


def test_plugin_listing_and_bundle(client):
    listing = client.get("/data/plugins_listing").get_json()["bn_stats"]
    assert listing["enabled"] is True
    assert listing["tab_name"] == "BN Convergence"
    assert listing["loading_mechanism"] == {"type": "IFRAME", "module_path": "/data/plugin/bn_stats/index.js"}
    r = get(client, "/index.js")
    assert r.mimetype == "text/javascript"
    assert b"export" in r.get_data() and b"render" in r.get_data()


def test_inactive_without_data(tmp_path):
    c, plugin = make_client(str(tmp_path))
    assert plugin.is_active() is False
    assert c.get("/data/plugins_listing").get_json()["bn_stats"]["enabled"] is False
    assert getj(c, "/runs")["runs"] == []


# -- runs and overview ----------------------------------------------------------------

def test_runs_lists_layers_in_depth_order(client, keras_logdir):
    _, runs = keras_logdir
    body = getj(client, "/runs")
    by_run = {r["run"]: r for r in body["runs"]}
    assert sorted(by_run) == ["keras", "synth", "synth_b"]  # not the Keras scalar runs
    synth = by_run["synth"]
    assert [l["name"] for l in synth["layers"]] == ["conv1_bn", "conv2_bn", "dense_bn"]
    assert synth["max_step"] == 120 and synth["metrics"] == ["train/loss", "val/loss"]
    for layer in synth["layers"]:
        src = runs["synth"].layers[layer["name"]]
        assert layer["momentum"] == pytest.approx(src.momentum) and layer["channels"] == src.channels
        assert layer["effective_window"] == pytest.approx(1 / (1 - src.momentum))
        assert layer["momentum_label"] == f"momentum={src.momentum:g}"  # Keras' convention, as logged
        assert layer["momentum_convention"].startswith("Keras")
        assert layer["steps_to_95"] == math.ceil(math.log(0.05) / math.log(src.momentum))
        assert layer["has_snapshots"] and "mean_gap/max" in layer["quantities"]
    keras_layers = [l["name"] for l in by_run["keras"]["layers"]]
    assert [n.rsplit("/", 1)[-1] for n in keras_layers] == ["bn_a", "bn_b"]


def test_overview_latest_values(client, keras_logdir):
    _, runs = keras_logdir
    body = getj(client, "/overview?run=synth")
    assert [l["name"] for l in body["layers"]] == ["conv1_bn", "conv2_bn", "dense_bn"]
    for layer in body["layers"]:
        src = runs["synth"].layers[layer["name"]]
        gap = raw_mean_gap(src)[-1]
        latest = layer["latest"]
        assert layer["latest_step"] == 120
        assert latest["convergence"] == pytest.approx(1 - src.momentum ** 120, rel=RTOL)
        assert latest["updates"] == 120
        assert latest["mean_gap/max"] == pytest.approx(gap.max(), rel=RTOL)
        assert latest["mean_gap/p90"] == pytest.approx(np.percentile(gap, 90), rel=RTOL)
        ids = {b["id"] for b in layer["badges"]}
        assert ("not_converged" in ids) == (1 - src.momentum ** 120 < 0.95)


def test_overview_flags_frozen_layer(tmp_path):
    from tb_bnstats.write import summary

    with summary.Writer(str(tmp_path / "frozen")) as w:
        for step in (1, 2, 3):
            w.layer_moments("bn", step, batch_mean=np.ones(2), batch_var=np.ones(2), moving_mean=np.zeros(2),
                            moving_var=np.ones(2), updates=0, momentum=0.99, epsilon=1e-3)
    with summary.Writer(str(tmp_path / "frozen_on_purpose")) as w:
        for step in (1, 2, 3):  # frozen on purpose
            w.layer_moments("bn", step, batch_mean=np.ones(2), batch_var=np.ones(2), moving_mean=np.zeros(2),
                            moving_var=np.ones(2), updates=0, momentum=0.99, epsilon=1e-3, frozen=True)
    c, _ = make_client(str(tmp_path))
    layer = getj(c, "/overview?run=frozen")["layers"][0]
    assert [(b["id"], b["tone"]) for b in layer["badges"]][0] == ("no_updates", "bad")
    assert layer["latest"]["convergence"] == 0
    layer = getj(c, "/overview?run=frozen_on_purpose")["layers"][0]
    assert [(b["id"], b["tone"]) for b in layer["badges"]][0] == ("frozen", "info")


# -- series -------------------------------------------------------------------------------

def test_series_all_points_match_numpy(client, keras_logdir):
    _, runs = keras_logdir
    src = runs["synth"].layers["conv2_bn"]
    body = getj(client, "/series?run=synth&layer=conv2_bn&quantities=mean_gap/max,moving_mean,convergence&points=5000")
    gap = raw_mean_gap(src).max(axis=1)
    s = body["series"]["mean_gap/max"]
    assert s["steps"] == src.steps and s["stored_points"] == len(src.steps)
    np.testing.assert_allclose(s["values"], gap, rtol=RTOL)
    np.testing.assert_allclose(body["series"]["moving_mean"]["values"], np.mean(src.moving_mean, axis=1), rtol=RTOL)
    np.testing.assert_allclose(body["series"]["convergence"]["values"],
                               1 - src.momentum ** np.array(src.steps, float), rtol=RTOL, atol=1e-7)
    assert body["info"]["steps_to_95"] == 299 and body["sampling"]["sampled"] is False


def test_series_downsampling_keeps_the_spike(client, keras_logdir):
    _, runs = keras_logdir
    src = runs["synth"].layers["conv2_bn"]
    gap = raw_mean_gap(src).max(axis=1)
    body = getj(client, "/series?run=synth&layer=conv2_bn&quantities=mean_gap/max&points=10")
    s = body["series"]["mean_gap/max"]
    assert len(s["steps"]) <= 12 and s["steps"] == sorted(s["steps"])
    assert s["steps"][0] == 1 and s["steps"][-1] == 120
    assert SPIKE_STEP in s["steps"]
    assert max(s["values"]) == pytest.approx(gap.max(), rel=RTOL)
    assert min(s["values"]) == pytest.approx(gap.min(), rel=RTOL)


def test_series_default_quantities_and_csv(client, keras_logdir):
    _, runs = keras_logdir
    body = getj(client, "/series?run=synth_b&layer=dense_bn")
    assert set(body["series"]) >= {"batch_mean", "moving_mean", "debiased_mean", "mean_gap/max", "convergence"}
    r = get(client, "/series?run=synth_b&layer=dense_bn&quantities=batch_var,debiased_var&format=csv")
    assert r.mimetype == "text/csv"
    # Named by run, layer and quantities: each chart of a layer saves under its own name.
    assert r.headers["Content-Disposition"] == 'attachment; filename="synth_b_dense_bn_batch_var-debiased_var.csv"'
    rows = list(csv.reader(io.StringIO(r.get_data(as_text=True))))
    assert rows[0] == ["step", "batch_var", "debiased_var"] and len(rows) == 81
    src = runs["synth_b"].layers["dense_bn"]
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], np.mean(src.batch_var, axis=1), rtol=RTOL)


# -- heat map -----------------------------------------------------------------------------

def test_heatmap_is_max_per_bin(client, keras_logdir):
    _, runs = keras_logdir
    body = getj(client, "/heatmap?run=synth&bins=7")
    assert body["layers"] == ["conv1_bn", "conv2_bn", "dense_bn"]
    edges = np.array(body["step_edges"])
    assert len(edges) == 8 and edges[0] == 1 and edges[-1] == 121
    steps = np.arange(1, 121)
    for name, row in zip(body["layers"], body["values"]):
        gap = raw_mean_gap(runs["synth"].layers[name]).max(axis=1)
        for j in range(7):
            inside = (steps >= edges[j]) & (steps < edges[j + 1])
            assert row[j] == pytest.approx(gap[inside].max(), rel=RTOL)
    assert body["max"] == pytest.approx(max(max(r) for r in body["values"]))
    rows = list(csv.reader(io.StringIO(get(client, "/heatmap?run=synth&bins=7&format=csv").get_data(as_text=True))))
    assert rows[0] == ["layer", "step_from", "step_to", "mean_gap/max"] and len(rows) == 1 + 3 * 7


def test_heatmap_other_measure(client):
    body = getj(client, "/heatmap?run=synth&measure=abs_log_var_ratio/p90&bins=500")
    assert len(body["step_edges"]) == 121  # no more bins than steps
    assert all(v is not None and v >= 0 for row in body["values"] for v in row)


# -- snapshots --------------------------------------------------------------------------------

@pytest.mark.parametrize("requested,expected", [(None, 120), (0, 40), (50, 40), (60, 40), (61, 80), (10**9, 120)])
def test_snapshot_nearest_step(client, keras_logdir, requested, expected):
    _, runs = keras_logdir
    src = runs["synth"].layers["conv1_bn"]
    url = "/snapshot?run=synth&layer=conv1_bn" + ("" if requested is None else f"&step={requested}")
    body = getj(client, url)
    assert body["steps"] == src.snapshot_steps == [SNAPSHOT_EVERY, 2 * SNAPSHOT_EVERY, 3 * SNAPSHOT_EVERY]
    assert body["step"] == expected and body["channels"] == src.channels
    i = src.steps.index(expected)
    np.testing.assert_allclose(body["rows"]["batch_mean"], src.batch_mean[i], rtol=RTOL)
    np.testing.assert_allclose(body["rows"]["moving_var"], src.moving_var[i], rtol=RTOL)
    np.testing.assert_allclose(body["rows"]["mean_gap"], raw_mean_gap(src)[i], rtol=1e-5)
    m, t = src.momentum, expected
    np.testing.assert_allclose(body["rows"]["debiased_mean"], src.moving_mean[i] / (1 - m ** t), rtol=1e-5)


def test_snapshot_csv_and_bands(client, keras_logdir):
    _, runs = keras_logdir
    src = runs["synth"].layers["conv2_bn"]
    rows = list(csv.reader(io.StringIO(
        get(client, "/snapshot?run=synth&layer=conv2_bn&step=80&format=csv").get_data(as_text=True))))
    assert rows[0][:3] == ["channel", "batch_mean", "batch_var"] and len(rows) == 1 + src.channels
    bands = getj(client, "/bands?run=synth&layer=conv2_bn")
    assert bands["steps"] == [40, 80, 120]
    bm = np.array([src.batch_mean[src.steps.index(s)] for s in bands["steps"]])
    np.testing.assert_allclose(bands["rows"]["batch_mean"]["max"], bm.max(axis=1), rtol=RTOL)
    np.testing.assert_allclose(bands["rows"]["batch_mean"]["p10"], np.percentile(bm, 10, axis=1), rtol=1e-5)


def test_keras_run_snapshot(client):
    layers = getj(client, "/runs")["runs"]
    keras_run = next(r for r in layers if r["run"] == "keras")
    name = keras_run["layers"][0]["name"]
    from urllib.parse import quote

    body = getj(client, f"/snapshot?run=keras&layer={quote(name)}&step=3")
    assert body["channels"] == 8 and body["step"] in body["steps"]
    assert all(v is not None for v in body["rows"]["moving_var"])


# -- loss -------------------------------------------------------------------------------------

def test_loss_own_metrics(client, keras_logdir):
    _, runs = keras_logdir
    body = getj(client, "/loss?run=synth&points=5000")
    by_key = {s["key"]: s for s in body["series"]}
    assert set(by_key) == {"train/loss", "val/loss"}
    np.testing.assert_allclose(by_key["train/loss"]["values"], runs["synth"].loss, rtol=RTOL)
    assert by_key["val/loss"]["steps"] == runs["synth"].val_steps


def test_loss_includes_keras_scalars_on_step_axis(client):
    body = getj(client, "/loss?run=keras")
    by_key = {s["key"]: s for s in body["series"]}
    assert "train/loss" in by_key and "val/loss" in by_key
    batch = by_key["keras:keras/train:batch_loss"]
    assert batch["steps"] == by_key["train/loss"]["steps"]  # Keras' batch counter == optimizer step here
    epoch = by_key["keras:keras/validation:epoch_loss"]
    assert epoch["aligned"] == "epoch_end"
    assert epoch["steps"] == by_key["val/loss"]["steps"]  # epoch k -> step where it ended
    np.testing.assert_allclose(epoch["values"], by_key["val/loss"]["values"], rtol=1e-5)
    text = get(client, "/loss?run=keras&format=csv").get_data(as_text=True)
    header = text.splitlines()[0].split(",")
    assert header[0] == "step" and {"train/loss", "val/loss", "probe_train/loss", "probe_inference/loss"} <= set(header)
    assert header.index("val/loss") < min(i for i, c in enumerate(header) if c.startswith("keras:"))  # own first


def test_loss_includes_summary_writer_scalars_in_the_run(tmp_path):
    """torch.utils.tensorboard's SummaryWriter writing into the run's own
    directory (beside BNStatsMonitor): its scalars are on the loss route, at
    the writer's global steps, "val" where the tag names validation; a PyTorch
    layer's momentum is said in PyTorch's convention."""
    from torch.utils.tensorboard import SummaryWriter

    from tb_bnstats.plugin import scalars
    from tb_bnstats.write import summary

    run_dir = str(tmp_path / "pt")
    rng = np.random.default_rng(0)
    train_steps, val_steps = list(range(1, 31)), [10, 20, 30]
    train_loss = 2.0 * np.exp(-np.arange(30) / 10) + rng.uniform(0, 0.1, 30)
    val_acc, test_loss = [0.5, 0.7, 0.8], [1.5, 1.0, 0.8]
    with summary.Writer(run_dir) as w:  # as BNStatsMonitor logs a PyTorch layer: momentum=0.1 kept as 0.9
        for step in train_steps:
            w.layer_moments("layer1.0.bn1", step, batch_mean=np.ones(2), batch_var=np.ones(2),
                            moving_mean=np.zeros(2), moving_var=np.ones(2), updates=step, momentum=0.9,
                            epsilon=1e-5, framework="pytorch", layer_class="BatchNorm2d",
                            moving_var_unbiased=True, samples_per_channel=64)
    tw = SummaryWriter(run_dir)
    for step, v in zip(train_steps, train_loss):
        tw.add_scalar("loss/train", float(v), step)
    for step, acc, loss in zip(val_steps, val_acc, test_loss):
        tw.add_scalar("accuracy/val", acc, step)
        tw.add_scalar("Loss/test", loss, step)
    tw.close()
    assert len(os.listdir(run_dir)) == 2  # one event file of each writer, one run

    c, _ = make_client(str(tmp_path))
    assert [r["run"] for r in getj(c, "/runs")["runs"]] == ["pt"]
    body = getj(c, "/loss?run=pt&points=5000")
    by_key = {s["key"]: s for s in body["series"]}
    assert set(by_key) == {"scalars:loss/train", "scalars:accuracy/val", "scalars:Loss/test"}
    train = by_key["scalars:loss/train"]
    assert train["steps"] == train_steps and train["split"] == "train" and train["aligned"] == "step"
    assert train["source"] == scalars.OWN_SOURCE == "run's own scalars" and train["name"] == "loss/train"
    np.testing.assert_allclose(train["values"], train_loss, rtol=1e-6)  # float32 in the event file
    for key, values in (("scalars:accuracy/val", val_acc), ("scalars:Loss/test", test_loss)):
        assert by_key[key]["steps"] == val_steps and by_key[key]["split"] == "val"
        np.testing.assert_allclose(by_key[key]["values"], values, rtol=1e-6)
    assert body["sampling"]["sampled"] is False
    rows = list(csv.reader(io.StringIO(get(c, "/loss?run=pt&format=csv").get_data(as_text=True))))
    assert rows[0] == ["step", "scalars:Loss/test", "scalars:accuracy/val", "scalars:loss/train"]
    assert len(rows) == 31 and rows[10][0] == "10" and float(rows[10][2]) == pytest.approx(0.5)

    # The PyTorch layer: momentum=0.1 (PyTorch's convention), 0.9 as logged.
    for layer in (getj(c, "/runs")["runs"][0]["layers"][0], getj(c, "/overview?run=pt")["layers"][0],
                  getj(c, "/series?run=pt&layer=layer1.0.bn1&quantities=convergence")["info"]):
        assert layer["momentum"] == pytest.approx(0.9) and layer["momentum_label"] == "momentum=0.1"
        assert layer["momentum_convention"].startswith("PyTorch")
        assert layer["framework"] == "pytorch" and layer["steps_to_95"] == 29


@pytest.mark.parametrize("tag,split", [
    ("loss/train", "train"), ("loss", "train"), ("accuracy/val", "val"), ("val_loss", "val"),
    ("Loss/Validation", "val"), ("loss/test", "val"), ("eval/accuracy", "val"), ("valid-loss", "val"),
    ("interval/loss", "train"), ("latest/loss", "train"), ("evaluation_time", "train"),
])
def test_split_of_a_scalar_tag(tag, split):
    from tb_bnstats.plugin import scalars

    assert scalars.split_of(tag) == split


# -- compare ------------------------------------------------------------------------------------

def test_compare_runs(client, keras_logdir):
    _, runs = keras_logdir
    body = getj(client, "/compare?run=synth&run=synth_b&run=keras&layer=conv1_bn&quantity=moving_var&points=5000")
    assert [r["run"] for r in body["runs"]] == ["synth", "synth_b"] and body["missing"] == ["keras"]
    for r in body["runs"]:
        src = runs[r["run"]].layers["conv1_bn"]
        np.testing.assert_allclose(r["values"], np.mean(src.moving_var, axis=1), rtol=RTOL)
    rows = list(csv.reader(io.StringIO(get(
        client, "/compare?run=synth&run=synth_b&layer=conv1_bn&quantity=moving_var&format=csv"
    ).get_data(as_text=True))))
    assert rows[0] == ["step", "synth", "synth_b"] and len(rows) == 121 and rows[-1][2] == ""


# -- bad input: 400 with a reason, never a 500 ---------------------------------------------------

BAD = [
    ("/overview", "missing parameter 'run'"),
    ("/overview?run=nope", "unknown run"),
    ("/overview?run=synth&run=synth_b", "given 2 times"),
    ("/overview?run=synth&bogus=1", "unknown parameter"),
    ("/overview?run=synth&format=csv", "unknown parameter"),
    ("/runs?x=1", "unknown parameter"),
    ("/series?run=synth", "missing parameter 'layer'"),
    ("/series?run=synth&layer=nope", "unknown layer"),
    ("/series?run=synth&layer=conv1_bn&quantities=nope", "unknown quantity"),
    ("/series?run=synth&layer=conv1_bn&quantities=,", "quantities is empty"),
    ("/series?run=synth&layer=conv1_bn&points=abc", "points must be an integer"),
    ("/series?run=synth&layer=conv1_bn&points=-5", "points must be an integer"),
    ("/series?run=synth&layer=conv1_bn&points=1.5", "points must be an integer"),
    ("/series?run=synth&layer=conv1_bn&points=1", "points must be an integer"),
    ("/series?run=synth&layer=conv1_bn&points=999999999", "points must be an integer"),
    ("/series?run=synth&layer=conv1_bn&points=", "points must be an integer"),
    ("/series?run=synth&layer=conv1_bn&format=xml", "format must be"),
    ("/heatmap?run=synth&measure=nope", "unknown measure"),
    ("/heatmap?run=synth&bins=0", "bins must be an integer"),
    ("/heatmap?run=synth&bins=1e3", "bins must be an integer"),
    ("/snapshot?run=synth&layer=conv1_bn&step=-1", "step must be an integer"),
    ("/snapshot?run=synth&layer=conv1_bn&step=ten", "step must be an integer"),
    ("/snapshot?run=synth&layer=conv1_bn&step=99999999999999999999", "step must be an integer"),
    ("/snapshot?run=synth&layer=nope", "unknown layer"),
    ("/snapshot?layer=conv1_bn", "missing parameter 'run'"),
    ("/bands?run=synth&layer=", "unknown layer"),
    ("/loss?run=synth/train", "unknown run"),
    ("/loss?run=synth&points=0", "points must be an integer"),
    ("/compare?layer=conv1_bn", "missing parameter 'run'"),
    ("/compare?run=synth&run=nope&layer=conv1_bn", "unknown run"),
    ("/compare?run=synth", "missing parameter 'layer'"),
    ("/compare?run=synth&layer=nope", "unknown layer"),
    ("/compare?run=synth&layer=conv1_bn&quantity=bad", "unknown quantity"),
    ("/compare?" + "&".join(["run=synth"] * 13) + "&layer=conv1_bn", "at most 12 runs"),
    ("/replicas?run=synth&layer=conv1_bn", "ran on one replica"),
    ("/replicas?run=synth&layer=nope", "unknown layer"),
    ("/replicas?run=synth", "missing parameter 'layer'"),
    ("/replicas?run=synth&layer=conv1_bn&step=-1", "step"),
]


@pytest.mark.parametrize("url,reason", BAD)
def test_bad_parameters_answer_400_with_reason(client, url, reason):
    body = getj(client, url, status=400)
    assert reason in body["error"], body


def test_snapshot_missing_for_layer_without_snapshots(tmp_path):
    from tb_bnstats.write import summary

    with summary.Writer(str(tmp_path / "r")) as w:
        w.layer_moments("bn", 1, batch_mean=np.ones(2), batch_var=np.ones(2), moving_mean=np.zeros(2),
                        moving_var=np.ones(2), updates=1, momentum=0.9, epsilon=1e-3)
    c, _ = make_client(str(tmp_path))
    assert "no per-channel snapshots" in getj(c, "/snapshot?run=r&layer=bn", status=400)["error"]
    assert getj(c, "/series?run=r&layer=bn&quantities=mean_gap/max")["series"]["mean_gap/max"]["steps"] == [1]


def test_nan_values_are_null_in_json(tmp_path):
    from tb_bnstats.write import summary

    with summary.Writer(str(tmp_path / "r")) as w:
        for step in (1, 2, 3):
            w.layer_moments("bn", step, batch_mean=np.array([np.nan, 1.0]), batch_var=np.ones(2),
                            moving_mean=np.zeros(2), moving_var=np.ones(2), updates=step, momentum=0.9,
                            epsilon=1e-3, snapshot=True)
    c, _ = make_client(str(tmp_path))
    for url in ("/series?run=r&layer=bn", "/snapshot?run=r&layer=bn", "/heatmap?run=r", "/overview?run=r",
                "/bands?run=r&layer=bn"):
        text = get(c, url).get_data(as_text=True)

        def non_finite(token, url=url):  # JSON has no NaN / Infinity: a browser's JSON.parse rejects them
            raise AssertionError(f"{url}: {token} in the JSON")

        json.loads(text, parse_constant=non_finite)


# -- sampling signal -------------------------------------------------------------------------------

def test_sampled_series_are_reported(tmp_path):
    """A layer log whose segment holds more records than the loader keeps (10 per tensor tag for a
    third-party plugin under --load_fast=false) is reported as sampled, with the flag that lifts it;
    read in full it is not."""
    write_many_records(str(tmp_path))
    c, _ = make_client(str(tmp_path), keep_all=False)  # --load_fast=false's default: 10 records per tag
    body = getj(c, "/series?run=long&layer=bn&quantities=mean_gap/max")
    assert body["series"]["mean_gap/max"]["stored_points"] < 1000
    assert body["sampling"]["sampled"] is True
    assert body["sampling"]["points"] < body["sampling"]["expected_points"]
    assert "--samples_per_plugin=bn_stats=0" in body["sampling"]["message"]
    assert getj(c, "/heatmap?run=long")["sampling"]["sampled"] is True
    c, _ = make_client(str(tmp_path), keep_all=True)
    body = getj(c, "/series?run=long&layer=bn&quantities=mean_gap/max")
    # 1000 steps one by one (step 1000, the first interval's, among the last steps kept at the close: once)
    assert body["series"]["mean_gap/max"]["stored_points"] == 1000 and body["sampling"]["sampled"] is False


def test_sampling_info_regular_logging_is_not_sampled():
    assert not data.sampling_info(np.arange(1, 1001))["sampled"]
    # every 10 steps, plus the final step of fit
    assert not data.sampling_info(np.r_[np.arange(10, 100, 10), 95])["sampled"]
    # steps_per_execution=3 with log_every_n_steps=10: irregular but complete
    logged, last = [], None
    for step in range(3, 3000, 3):
        if last is None or step // 10 != last // 10:
            logged.append(step)
            last = step
    assert not data.sampling_info(logged)["sampled"]
    assert not data.sampling_info(np.arange(1, 20001), cap_hint=0)["sampled"]


@pytest.mark.parametrize("kept", [10, 100, 1000])
def test_sampling_info_reservoir_sample_is_sampled(kept):
    rng = np.random.default_rng(kept)
    steps = np.sort(np.r_[rng.choice(np.arange(1, 20000), kept - 1, replace=False), 20000])
    info = data.sampling_info(steps)
    assert info["sampled"] and info["points"] == kept and info["expected_points"] > kept


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300), st.integers(2, 50))
def test_minmax_downsample_keeps_extremes(values, points):
    steps = np.arange(len(values)) * 3 + 5
    s, v = data.minmax_downsample(steps, values, points)
    assert len(s) <= max(points, 2) + 2
    assert np.all(np.diff(s) > 0) and set(s.tolist()) <= set(steps.tolist())
    assert v.max() == max(values) and v.min() == min(values)
    assert s[0] == steps[0] and s[-1] == steps[-1]


# -- findings ----------------------------------------------------------------------------

def _write_findings_logdir(logdir, stored=None):
    """``slow``: one layer at momentum 0.99 whose batches sit 2 std from its
    moving mean for 60 steps (BN001 fires); ``healthy``: momentum 0.9, batches
    at the moving mean (no finding)."""
    from tb_bnstats.write import summary

    rng = np.random.default_rng(3)
    for run, m, true_mean in (("slow", 0.99, 2.0), ("healthy", 0.9, 1.0)):
        with summary.Writer(os.path.join(logdir, run)) as w:
            mm, mv = np.zeros(4), np.ones(4)
            for step in range(1, 61):
                bm = true_mean + rng.normal(0, 0.05, 4)
                bv = np.ones(4) * rng.uniform(0.95, 1.05, 4)
                mm = mm * m + bm * (1 - m)
                mv = mv * m + bv * (1 - m)
                w.layer_moments("bn_1", step, batch_mean=bm, batch_var=bv, moving_mean=mm, moving_var=mv,
                                updates=step, momentum=m, epsilon=1e-3, depth=0)
            if stored is not None and run == "slow":
                w.findings(60, stored)


def test_findings_computed_match_diagnose(tmp_path):
    from tb_bnstats import diagnosis

    logdir = str(tmp_path)
    _write_findings_logdir(logdir)
    c, _ = make_client(logdir)
    expected = {run: [f.to_dict() for f in diagnosis.diagnose(logdir, run=run)] for run in ("slow", "healthy")}
    assert [f["code"] for f in expected["slow"]] == ["BN001"] and expected["healthy"] == []

    body = getj(c, "/findings?run=slow")
    assert body["source"] == "computed" and body["stored"] is False
    assert [{k: v for k, v in f.items() if k != "source"} for f in body["findings"]] == expected["slow"]
    assert body["findings"][0]["source"] == "computed"
    assert body["findings"][0]["layers"] == ["bn_1"]
    assert body["counts"] == {"error": 1, "warning": 0, "info": 0}

    body = getj(c, "/findings?run=healthy")
    assert body["findings"] == [] and body["counts"] == {"error": 0, "warning": 0, "info": 0}


def test_findings_stored_by_the_callback_come_first(tmp_path):
    stored = [{"code": "BN003", "severity": "warning", "scenario": "S4", "run": "slow", "layers": ["bn_1"],
               "evidence": {"bn_1": {"momentum": 0.1}}, "message": "<b>stored</b> message"},
              {"code": "BN001", "severity": "error", "scenario": "S1", "run": "slow", "layers": ["bn_1"],
               "evidence": {}, "message": "stored BN001"},
              "not a finding"]
    _write_findings_logdir(str(tmp_path), stored=stored)
    c, _ = make_client(str(tmp_path))
    body = getj(c, "/findings?run=slow")
    assert body["stored"] is True and body["stored_step"] == 60 and body["source"] == "stored"
    assert [(f["code"], f["source"], f["message"]) for f in body["findings"]] == [
        ("BN001", "stored", "stored BN001"), ("BN003", "stored", "<b>stored</b> message")]
    assert body["computed"] == 1  # the computed BN001 is not repeated


def test_severities_badges_and_per_layer_messages_come_from_the_findings(tmp_path, monkeypatch):
    """/runs gives each run's worst severity (stored findings before any
    diagnosis, the diagnosis once made), /overview badges every layer a
    finding names with that finding and its own message, and a run is
    diagnosed once per new data."""
    from tb_bnstats import diagnosis

    logdir = str(tmp_path)
    _write_findings_logdir(logdir, stored=[
        {"code": "BN003", "severity": "warning", "scenario": "S4", "run": "slow", "layers": ["bn_1"],
         "evidence": {}, "message": "stored"}])
    from tb_bnstats.write import summary

    with summary.Writer(os.path.join(logdir, "two")) as w:  # two layers, BN001 on both, each its own numbers
        rng = np.random.default_rng(5)
        for name, offset in (("a", 1.0), ("b", 3.0)):
            mm = np.zeros(3)
            for step in range(1, 41):
                bm = offset + rng.normal(0, 0.05, 3)
                mm = mm * 0.99 + bm * 0.01
                w.layer_moments(name, step, batch_mean=bm, batch_var=np.ones(3), moving_mean=mm,
                                moving_var=np.ones(3), updates=step, momentum=0.99, epsilon=1e-3)
    calls = []
    real = diagnosis.diagnose_run
    monkeypatch.setattr(diagnosis, "diagnose_run", lambda run, data: calls.append(run) or real(run, data))
    c, _ = make_client(logdir)
    severity = {r["run"]: r["severity"] for r in getj(c, "/runs")["runs"]}
    assert severity == {"slow": "warning", "healthy": None, "two": None} and calls == []  # stored only: no diagnosis
    findings = getj(c, "/findings?run=two")
    assert findings["severity"] == "error" and calls == ["two"]
    (bn001,) = findings["findings"]
    assert bn001["layers"] == ["a", "b"] and set(bn001["messages"]) == {"a", "b"}
    assert bn001["messages"]["a"].startswith("a:") and bn001["messages"]["b"].startswith("b:")
    gaps = {n: bn001["evidence"][n]["mean_gap_p50"] for n in ("a", "b")}
    assert gaps["b"] > 2 * gaps["a"]
    assert f"{gaps['b']:.2f} std" in bn001["messages"]["b"] and f"{gaps['b']:.2f} std" not in bn001["messages"]["a"]
    layers = {d["name"]: d for d in getj(c, "/overview?run=two")["layers"]}
    for name in ("a", "b"):
        badge = layers[name]["badges"][0]
        assert (badge["id"], badge["tone"], badge["detail"]) == ("finding-BN001", "bad", bn001["messages"][name])
        assert all(b.get("hint") for b in layers[name]["badges"] if b["id"] in ("not_converged", "mean_gap"))
    assert calls == ["two"]  # /overview used the diagnosis /findings made
    severity = {r["run"]: r["severity"] for r in getj(c, "/runs")["runs"]}
    assert severity["two"] == "error"
    assert getj(c, "/findings?run=slow")["severity"] == "error"  # the stored warning plus the computed BN001
    assert {r["run"]: r["severity"] for r in getj(c, "/runs")["runs"]}["slow"] == "error"


@pytest.mark.parametrize("url,reason", [
    ("/findings", "missing parameter 'run'"),
    ("/findings?run=nope", "unknown run"),
    ("/findings?run=synth&layer=conv1_bn", "unknown parameter"),
    ("/findings?run=synth&run=synth_b", "given 2 times"),
    ("/findings?run=synth&format=csv", "unknown parameter"),
])
def test_findings_bad_parameters(client, url, reason):
    assert reason in getj(client, url, status=400)["error"]


def test_findings_of_the_fixture_runs(client, keras_logdir):
    from tb_bnstats import diagnosis

    logdir, _ = keras_logdir
    body = getj(client, "/findings?run=synth")
    codes = [(f["code"], f["layers"]) for f in body["findings"] if f["source"] == "computed"]
    assert ("BN001", ["conv2_bn", "dense_bn"]) in codes
    expected = [f.to_dict() for f in diagnosis.diagnose(logdir, run="synth")]
    assert [{k: v for k, v in f.items() if k != "source"} for f in body["findings"]] == expected


def test_cli_tab_and_diagnose_agree_on_a_run_with_stored_and_computed_findings(tmp_path, capsys):
    """One merge for all three: a run whose stored findings (BN003, and a
    BN001 written differently) overlap with what its series give now
    (BN001), and a run with only computed findings."""
    from tb_bnstats import cli, diagnosis

    stored = [{"code": "BN003", "severity": "warning", "scenario": "S4", "run": "slow", "layers": ["bn_1"],
               "evidence": {"bn_1": {"momentum": 0.1}}, "message": "stored BN003"},
              {"code": "BN001", "severity": "error", "scenario": "S1", "run": "slow", "layers": ["bn_1"],
               "evidence": {}, "message": "stored BN001"}]
    logdir = str(tmp_path)
    _write_findings_logdir(logdir, stored=stored)
    c, _ = make_client(logdir)
    for run in ("slow", "healthy"):
        from_api = diagnosis.diagnose(logdir, run=run)
        assert cli.main(["diagnose", logdir, "--run", run, "--json", "--fail-on", "never"]) == 0
        from_cli = json.loads(capsys.readouterr().out)
        from_tab = [{k: v for k, v in f.items() if k != "source"} for f in getj(c, f"/findings?run={run}")["findings"]]
        assert from_cli == from_tab == [f.to_dict() for f in from_api]
    # The stored BN001 wins over the computed one, in all three.
    slow = [f.to_dict() for f in diagnosis.diagnose(logdir, run="slow")]
    assert [(f["code"], f["message"]) for f in slow] == [("BN001", "stored BN001"), ("BN003", "stored BN003")]
    computed = diagnosis.diagnose_run("slow", tb_bnstats.load(logdir)["slow"])
    assert [f.code for f in computed] == ["BN001"] and computed[0].message != "stored BN001"


def test_a_newer_format_version_is_read_and_reported(tmp_path, monkeypatch):
    """Records of a newer log format: read as far as this version knows
    them, with a warning from load() and a banner note from /runs."""
    from tb_bnstats.format import metadata
    from tb_bnstats.write import summary

    logdir = str(tmp_path)
    monkeypatch.setattr(metadata, "FORMAT_VERSION", metadata.FORMAT_VERSION + 1)
    with summary.Writer(os.path.join(logdir, "future")) as w:
        for step in (1, 2, 3):
            w.layer_moments("bn", step, batch_mean=[0.1, 0.2], batch_var=[1.0, 1.1], moving_mean=[0.0, 0.1],
                            moving_var=[1.0, 1.0], updates=step, momentum=0.9, epsilon=1e-3)
    monkeypatch.undo()
    newer = metadata.FORMAT_VERSION + 1
    with pytest.warns(RuntimeWarning, match=f"newer tb_bnstats \\(log format version {newer}"):
        runs = tb_bnstats.load(logdir)
    assert runs["future"].layers["bn"].steps.tolist() == [1, 2, 3]
    assert runs["future"].newer_format_versions == (newer,)
    c, _ = make_client(logdir)
    body = getj(c, "/runs")
    assert body["newer_format"]["versions"] == [newer] and body["newer_format"]["runs"] == ["future"]
    assert "upgrade tb_bnstats" in body["newer_format"]["message"]
    assert body["runs"][0]["newer_format_versions"] == [newer]
    series = getj(c, "/series?run=future&layer=bn&quantities=batch_mean")["series"]["batch_mean"]
    assert series["steps"] == [1, 2, 3]
