"""The Keras callback over several CPU devices: ``tf.distribute.MirroredStrategy``
over logical CPU devices (TensorFlow backend) and ``keras.distribution.DataParallel``
over forced host devices (JAX backend). Each run is a process of its own
(tests/multidevice/keras_replicas.py: the devices must be set up before the
framework starts); its logs are read back through TensorBoard's data
provider and every number is checked against numpy on the same batches."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from tb_bnstats.read import reader

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multidevice", "keras_replicas.py")
BACKENDS = ("tensorflow", "jax")


def train(out, backend, *args):
    """Runs the script; returns its result.npz and, with --monitor, the run read back."""
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=os.path.dirname(SCRIPT) + os.pathsep
               + os.path.dirname(os.path.dirname(SCRIPT)))
    done = subprocess.run([sys.executable, SCRIPT, str(out), *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = dict(np.load(os.path.join(out, "result.npz")))
    logs = os.path.join(out, "logs")
    runs = reader.load(logs) if os.path.isdir(logs) else None
    return result, runs, done.stderr


def slices(result, step):
    """The global batch of training step ``step`` (1-based, shuffle=False)
    and its replicas' slices (contiguous, in device order)."""
    x, batch, replicas = result["x"], int(result["batch"]), int(result["replicas"])
    per_epoch = len(x) // batch
    start = ((step - 1) % per_epoch) * batch
    whole = x[start:start + batch].astype(np.float64)
    return whole, np.split(whole, replicas)


@pytest.fixture(scope="module", params=BACKENDS)
def exact_runs(request, tmp_path_factory):
    """The toy model (BN on the data) on 2 devices, with and without the callback."""
    base = tmp_path_factory.mktemp(request.param)
    with_monitor = train(base / "with", request.param, "--monitor", "--replicas", "2")
    without = train(base / "without", request.param, "--replicas", "2")
    return request.param, with_monitor, without, base / "with" / "logs"


def test_per_replica_and_global_moments_equal_numpy(exact_runs):
    backend, (result, runs, _), _, _ = exact_runs
    (run,) = runs.values()
    layer = run.layers["bn"]
    assert layer.info.replicas == 2
    # TensorFlow: unsynchronized, one copy of the moving statistics per replica. JAX: one batch sharded
    # over the devices, normalized with its global moments, one copy.
    assert layer.info.synchronized is (backend == "jax")
    assert layer.info.moving_per_replica is (backend == "tensorflow")
    channels, channel_steps = layer.snapshots, layer.snapshot_steps
    replica_steps, replicas = layer.replica_steps, layer.replica_snapshots
    assert len(replica_steps) == len(channel_steps) == 8  # 2 epochs of 4 steps, a snapshot at each
    for k, step in enumerate(replica_steps):
        whole, parts = slices(result, int(step))
        np.testing.assert_allclose(replicas['batch_mean'][k], [p.mean(0) for p in parts], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(replicas['batch_var'][k], [p.var(0) for p in parts], rtol=1e-5, atol=1e-5)
        i = int(np.flatnonzero(channel_steps == step)[0])
        np.testing.assert_allclose(channels["batch_mean"][i], whole.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(channels["batch_var"][i], whole.var(0), rtol=1e-5, atol=1e-5)
    # The moving statistics: each replica's own (TensorFlow) or the one copy (JAX), at the last step.
    if backend == "tensorflow":
        np.testing.assert_allclose(replicas["moving_mean"][-1], result["moving_mean"], rtol=1e-6)
        np.testing.assert_allclose(replicas["moving_var"][-1], result["moving_var"], rtol=1e-6)
    else:
        assert np.isnan(replicas["moving_mean"][-1]).all()  # shared: the per-channel snapshot holds them
    np.testing.assert_allclose(channels["moving_mean"][-1], result["moving_mean"][0], rtol=1e-6)
    np.testing.assert_allclose(channels["moving_var"][-1], result["moving_var"][0], rtol=1e-6)
    # The spread series against numpy's.
    whole, parts = slices(result, int(layer.steps[-1]))
    std = np.sqrt(whole.var(0) + layer.info.epsilon)
    spread = (np.max([p.mean(0) for p in parts], 0) - np.min([p.mean(0) for p in parts], 0)) / std
    np.testing.assert_allclose(layer.series["replica_mean_spread/max"][-1], spread.max(), rtol=1e-4)
    deficit = np.log((whole.var(0) + 1e-3) / (np.mean([p.var(0) for p in parts], 0) + 1e-3))
    np.testing.assert_allclose(layer.series["replica_var_deficit/mean"][-1], deficit.mean(), rtol=1e-4, atol=1e-6)
    assert (layer.series["replica_samples/min"] == 16).all()


def test_losses_identical_with_and_without_the_callback(exact_runs):
    _, (with_monitor, _, _), (without, _, _), _ = exact_runs
    np.testing.assert_array_equal(with_monitor["loss"], without["loss"])
    np.testing.assert_array_equal(with_monitor["moving_mean"], without["moving_mean"])


def test_one_writer(exact_runs):
    """One process writes one event file, whatever the number of devices."""
    _, (_, runs, _), _, logs = exact_runs
    assert list(runs) == ["logs"]  # the log directory itself, by its own name (tb_bnstats.format.names)
    files = glob.glob(os.path.join(str(logs), "**", "events.out.tfevents.*"), recursive=True)
    assert len(files) == 1, files


def codes(runs):
    (run,) = runs.values()
    return {f["code"] for f in run.stored_findings}, run


@pytest.mark.parametrize("backend, sync", [("tensorflow", False), ("tensorflow", True), ("jax", False)])
def test_small_per_replica_batches_found_only_without_synchronization(tmp_path, backend, sync):
    """A dense BN on digits, a global batch of 16 over 4 devices: 4 samples per
    replica. Unsynchronized (TensorFlow's default) that is S6 per replica:
    BN013 with the fix; synchronized=True, or JAX's sharded batch (global
    moments by construction), normalize with the 16 and raise nothing of it."""
    args = ["--monitor", "--replicas", "4", "--model", "dense", "--batch", "16", "--epochs", "1", "--samples", "1792"]
    _, runs, _ = train(tmp_path, backend, *args + (["--sync"] if sync else []))
    found, run = codes(runs)
    layer = run.layers["dense_bn"]
    assert layer.info.replicas == 4 and (layer.series["replica_samples/min"] == 4).all()
    if backend == "tensorflow" and not sync:
        assert "BN013" in found, run.stored_findings
        (finding,) = [f for f in run.stored_findings if f["code"] == "BN013"]
        assert finding["layers"] == ["dense_bn"] and "synchronized=True" in finding["message"]
        assert "4 values per channel" in finding["message"]
    else:
        assert not found & {"BN013", "BN014", "BN015"}, run.stored_findings
        assert layer.info.synchronized
    if sync:  # every replica normalized with, and averaged, the global batch's moments
        np.testing.assert_allclose(np.diff(layer.replica_snapshots["batch_mean"], axis=1), 0, atol=1e-5)
        np.testing.assert_allclose(np.diff(layer.replica_snapshots["moving_mean"], axis=1), 0, atol=1e-5)


def test_an_empty_replica_slice_is_found(tmp_path):
    """69 samples in batches of 16 over 4 replicas: tf.distribute splits the
    last batch (5 samples) 4, 1, 0, 0, and the replicas with an empty slice
    average NaN moments into their own moving statistics while replica 0's
    stay finite."""
    _, runs, _ = train(tmp_path, "tensorflow", "--monitor", "--replicas", "4", "--batch", "16", "--samples", "69",
                       "--epochs", "1")
    (run,) = runs.values()
    layer = run.layers["bn"]
    assert layer.series["replica_samples/min"][-1] == 0
    assert np.isfinite(layer.snapshots["batch_mean"][-1]).all()  # the global batch: the 2 samples pooled
    (finding,) = [f for f in run.stored_findings if f["code"] == "BN015"]
    assert finding["severity"] == "error" and "drop_remainder=True" in finding["message"]


def test_several_steps_per_execution(tmp_path):
    """steps_per_execution=4 on 2 devices: every step logged, each with its own batch's slices. JAX only:
    under MirroredStrategy Keras 3.15 itself fails with steps_per_execution > 1 ("You must feed a value for
    placeholder tensor 'while/body/.../Placeholder'"), with or without the callback (measured)."""
    backend = "jax"
    result, runs, _ = train(tmp_path, backend, "--monitor", "--replicas", "2", "--steps-per-execution", "4")
    layer = runs["logs"].layers["bn"]
    np.testing.assert_array_equal(layer.replica_steps, np.arange(1, 9))
    for k, step in enumerate(layer.replica_steps):
        _, parts = slices(result, int(step))
        np.testing.assert_allclose(layer.replica_snapshots["batch_mean"][k], [p.mean(0) for p in parts], rtol=1e-5,
                                   atol=1e-5)


def test_jax_across_two_processes(tmp_path):
    """jax.distributed over 2 CPU processes (gloo), DataParallel over their 2
    devices, the callback in both with one log directory: process 0 alone
    writes; each replica's moments are its process's half of the batch, the
    global ones the whole batch's; the moving statistics the same in both."""
    script = os.path.join(os.path.dirname(SCRIPT), "jax_processes.py")
    done = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    files = glob.glob(os.path.join(str(tmp_path), "**", "events.out.tfevents.*"), recursive=True)
    assert len(files) == 1, files
    results = [dict(np.load(os.path.join(tmp_path, f"process{i}.npz"))) for i in range(2)]
    np.testing.assert_array_equal(results[0]["moving_mean"], results[1]["moving_mean"])
    (run,) = reader.load(os.path.join(tmp_path, "logs")).values()
    layer = run.layers["sequential/bn"]  # Keras' path: JAX builds the model before the callback names it
    assert layer.info.replicas == 2 and layer.info.synchronized
    assert len(layer.replica_steps) == 8
    for k, step in enumerate(layer.replica_steps):
        whole, parts = slices(results[0], int(step))
        np.testing.assert_allclose(layer.replica_snapshots["batch_mean"][k], [p.mean(0) for p in parts], rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(layer.snapshots["batch_var"][k], whole.var(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.snapshots["moving_mean"][-1], results[0]["moving_mean"][0], rtol=1e-6)
