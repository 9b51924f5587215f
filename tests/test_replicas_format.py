"""Several replicas through the format, written with the real writer from
synthetic per-replica moments, read back through TensorBoard's data provider
and served by the plugin: the pooled global batch, the replica series and
the per-replica tensor against numpy; the pooling against a direct
computation over the values (the law of total variance)."""

import json

import numpy as np
import pytest

from conftest import make_client
from tb_bnstats import quantities
from tb_bnstats.capture import ReplicaBlock
from tb_bnstats.format import metadata
from tb_bnstats.read import reader
from tb_bnstats.write import summary

STEPS, R, C, N = 12, 3, 5, 8  # steps, replicas, channels, values per channel per replica
EPS = 1e-3


def test_pooling_is_the_moments_of_every_value():
    rng = np.random.default_rng(0)
    values = [rng.normal(r, 1 + r, size=(n, C)) for r, n in enumerate((4, 9, 1))]
    mean, var, total = quantities.pool_moments([len(v) for v in values], [v.mean(0) for v in values],
                                               [v.var(0) for v in values])
    every = np.concatenate(values)
    np.testing.assert_allclose(mean, every.mean(0))
    np.testing.assert_allclose(var, every.var(0))
    assert total == len(every)
    # Leading axes (steps) kept; an empty replica weighs nothing (its moments are NaN).
    counts = np.array([[4, 9, 1], [4, 0, 1]])
    means = np.stack([[v.mean(0) for v in values]] * 2)
    means[1, 1] = np.nan
    m2, v2, t2 = quantities.pool_moments(counts, means, np.stack([[v.var(0) for v in values]] * 2))
    no_middle = np.concatenate([values[0], values[2]])
    np.testing.assert_allclose(m2[0], every.mean(0))
    np.testing.assert_allclose(m2[1], no_middle.mean(0))
    np.testing.assert_allclose(v2[1], no_middle.var(0))
    np.testing.assert_array_equal(t2, [14, 5])


@pytest.fixture(scope="module")
def replica_run(tmp_path_factory):
    """One layer on R replicas, each with its own moving statistics."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(STEPS, R, N, C)) * [1, 2, 0.5, 1, 3] + np.arange(R)[None, :, None, None] * 0.5
    reps = ReplicaBlock(batch_mean=x.mean(2), batch_var=x.var(2), samples=np.full((STEPS, R), float(N)),
                        moving_mean=rng.normal(size=(STEPS, R, C)), moving_var=rng.uniform(0.5, 2, (STEPS, R, C)))
    mean, var, total = quantities.pool_moments(reps.samples, reps.batch_mean, reps.batch_var)
    info = metadata.LayerInfo(name="bn", channels=C, momentum=0.9, epsilon=EPS, replicas=R, moving_per_replica=True)
    logdir = tmp_path_factory.mktemp("replicas")
    steps = np.arange(1, STEPS + 1)
    with summary.Writer(str(logdir / "run")) as w:
        w.layer_block(info, steps, mean, var, reps.moving_mean[:, 0], reps.moving_var[:, 0], steps,
                      snapshot_steps=[4, 12], replicas=reps)
    return str(logdir), x, reps


def test_replica_series_and_tensor_read_back_as_numpy_computes_them(replica_run):
    logdir, x, reps = replica_run
    (run,) = reader.load(logdir).values()
    layer = run.layers["bn"]
    assert layer.info.replicas == R and layer.info.moving_per_replica
    whole = x.reshape(STEPS, R * N, C)  # the global batch of each step
    np.testing.assert_allclose(layer.series["batch_mean"], whole.mean(1).mean(-1), rtol=1e-6)
    std = np.sqrt(whole.var(1) + EPS)
    spread = (x.mean(2).max(1) - x.mean(2).min(1)) / std
    np.testing.assert_allclose(layer.series["replica_mean_spread/max"], spread.max(-1), rtol=1e-5)
    np.testing.assert_allclose(layer.series["replica_mean_spread/p50"], np.median(spread, -1), rtol=1e-5)
    gap = np.abs(x.mean(2) - whole.mean(1)[:, None]) / std[:, None]
    np.testing.assert_allclose(layer.series["replica_mean_gap/p50"], np.median(gap.mean(1), -1), rtol=1e-5)
    deficit = np.log((whole.var(1) + EPS) / (x.var(2).mean(1) + EPS))
    np.testing.assert_allclose(layer.series["replica_var_deficit/mean"], deficit.mean(-1), rtol=1e-5, atol=1e-7)
    ratio = (reps.moving_var.max(1) + EPS) / (reps.moving_var.min(1) + EPS)
    np.testing.assert_allclose(layer.series["rank_moving_var_ratio/max"], ratio.max(-1), rtol=1e-5)
    np.testing.assert_array_equal(layer.series["replica_samples/min"], N)
    np.testing.assert_array_equal(layer.replica_steps, [4, 12])
    np.testing.assert_allclose(layer.replica_snapshots["batch_mean"][1], x[11].mean(1), rtol=1e-6)
    np.testing.assert_allclose(layer.replica_snapshots["moving_var"][0], reps.moving_var[3], rtol=1e-6)


def test_the_replicas_route(replica_run):
    logdir, x, _ = replica_run
    client, _ = make_client(logdir)
    res = client.get("/data/plugin/bn_stats/replicas?run=run&layer=bn&step=5")
    assert res.status_code == 200
    body = json.loads(res.get_data())
    assert (body["step"], body["steps"], body["replicas"], body["channels"]) == (4, [4, 12], R, C)
    np.testing.assert_allclose(body["rows"]["batch_var"], x[3].var(1), rtol=1e-6)
    np.testing.assert_allclose(body["global"]["batch_mean"], x[3].reshape(R * N, C).mean(0), rtol=1e-6)
    assert body["info"]["replicas"] == R and body["info"]["has_replica_snapshots"]
    csv = client.get("/data/plugin/bn_stats/replicas?run=run&layer=bn&format=csv")
    lines = csv.get_data(as_text=True).strip().splitlines()
    assert lines[0] == "replica,channel,batch_mean,batch_var,moving_mean,moving_var" and len(lines) == 1 + R * C
    assert "run_bn_replicas_step12.csv" in csv.headers["Content-Disposition"]
