"""The PyTorch monitor under DistributedDataParallel: 2 and 4 CPU processes
over gloo (tests/multidevice/torch_ddp.py, started with ``subprocess``; it
spawns the ranks). The run rank 0 wrote is read back through TensorBoard's
data provider and checked against numpy on each rank's slice of the same
batches, and against the buffers each rank saved."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from tb_bnstats.read import reader

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "multidevice", "torch_ddp.py")


def train(out, *args):
    """Runs the ranks; returns each rank's saved arrays and the run read back."""
    os.makedirs(out, exist_ok=True)
    done = subprocess.run([sys.executable, SCRIPT, str(out), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = sorted(glob.glob(os.path.join(out, "rank*.npz")))
    (run,) = reader.load(os.path.join(out, "logs")).values()
    return [dict(np.load(path)) for path in ranks], run


@pytest.fixture(scope="module", params=[True, False], ids=["sync_buffers", "own_buffers"])
def toy(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    return request.param, out, *train(out, *([] if request.param else ["--no-broadcast-buffers"]))


def test_per_rank_and_global_moments_equal_numpy(toy):
    sync_buffers, out, ranks, run = toy
    layer = run.layers["0"]
    assert layer.info.replicas == 2 and not layer.info.synchronized
    assert layer.info.moving_per_replica is (not sync_buffers)
    x, batch = ranks[0]["x"].astype(np.float64), int(ranks[0]["batch"])
    per_epoch = len(x) // batch
    replicas = layer.replica_snapshots
    assert len(layer.replica_steps) == 2 * per_epoch
    for k, step in enumerate(layer.replica_steps):
        start = ((int(step) - 1) % per_epoch) * batch
        whole = x[start:start + batch]
        parts = np.split(whole, 2)
        np.testing.assert_allclose(replicas["batch_mean"][k], [p.mean(0) for p in parts], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(replicas["batch_var"][k], [p.var(0) for p in parts], rtol=1e-4, atol=1e-5)
        i = int(np.flatnonzero(layer.snapshot_steps == step)[0])
        np.testing.assert_allclose(layer.snapshots["batch_mean"][i], whole.mean(0), rtol=1e-5, atol=1e-5)
        # PyTorch's running_var averages Bessel-corrected variances: the global batch's, n = 32.
        np.testing.assert_allclose(layer.snapshots["batch_var"][i], whole.var(0) * batch / (batch - 1), rtol=1e-4)
    assert (layer.series["replica_samples/min"] == batch // 2).all()
    # The logged running statistics are rank 0's (what its state_dict saves); each rank's own where they differ.
    np.testing.assert_allclose(layer.snapshots["moving_mean"][-1], ranks[0]["running_mean"], rtol=1e-6)
    np.testing.assert_allclose(layer.snapshots["moving_var"][-1], ranks[0]["running_var"], rtol=1e-6)
    if sync_buffers:  # shared: rank 0's, copied to every rank at the next forward
        assert np.isnan(replicas["moving_mean"][-1]).all()
    else:
        np.testing.assert_allclose(replicas["moving_mean"][-1], [r["running_mean"] for r in ranks], rtol=1e-6)
        np.testing.assert_allclose(replicas["moving_var"][-1], [r["running_var"] for r in ranks], rtol=1e-6)


def test_losses_identical_with_and_without_the_monitor(toy):
    _, _, ranks, _ = toy
    for rank in ranks:
        np.testing.assert_array_equal(rank["losses_monitored"], rank["losses"])


def test_only_rank_0_writes(toy):
    _, out, _, _ = toy
    files = glob.glob(os.path.join(out, "**", "events.out.tfevents.*"), recursive=True)
    assert len(files) == 1, files


def test_own_buffers_drift_apart_and_are_told(toy):
    """Without DDP's buffer sync each rank averages its own slices (here
    shifted against each other): BN015, rank 0's named as the saved ones."""
    sync_buffers, _, _, run = toy
    found = {f["code"]: f for f in run.stored_findings}
    if sync_buffers:
        assert "BN015" not in found and "rank_moving_spread/p50" not in run.layers["0"].series
    else:
        assert found["BN015"]["layers"] == ["0"] and "forward_sync_buffers=True" in found["BN015"]["message"]


def test_small_per_rank_batches_are_told(tmp_path):
    """Digits through a dense BN, a global batch of 16 over 4 ranks: 4 samples
    per rank normalize each other: BN013 with the per-rank size."""
    _, run = train(tmp_path, "--ranks", "4", "--model", "dense", "--batch", "16", "--epochs", "1")
    found = {f["code"]: f for f in run.stored_findings}
    assert "BN013" in found, run.stored_findings
    assert "4 values per channel" in found["BN013"]["message"] and "SyncBatchNorm" in found["BN013"]["message"]


def test_a_moving_variance_biased_low_by_unshuffled_shards_is_told(tmp_path):
    """Each of 2 ranks reads its own shard of digits (labels even / odd), not
    shuffled across ranks: every rank's batch variance misses the spread
    between the shards, and the moving variance averages them: BN014 (and not
    BN005: the global batch's gap to the moving statistics is that, not noise)."""
    _, run = train(tmp_path, "--model", "dense", "--batch", "32", "--epochs", "1", "--split", "classes")
    found = {f["code"]: f for f in run.stored_findings}
    assert "BN014" in found and "BN005" not in found, run.stored_findings
    assert found["BN014"]["layers"] == ["1"] and "SyncBatchNorm" in found["BN014"]["message"]
    assert np.median(run.layers["1"].series["replica_var_deficit/mean"][-10:]) > 0.1
