"""Log directories at a URL, without TensorFlow: a PyTorch run written to
``s3://`` on a real S3-compatible server (moto's, see conftest), read back
through TensorBoard's data provider and checked against numpy moments of each
module's real input; the command line and a real ``tensorboard`` on the URL;
the other-writers check on the bucket; a run past the size at which an event file is left for a new
one; and a missing file-system package said at construction."""

import json
import pathlib
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import tb_bnstats
from tb_bnstats.torch import BNStatsMonitor
from tb_bnstats.write import eventfile
from torch_models import RESNET_BN, InputRecorder, SmallResNet, assert_close, bessel, channel_axes, data, train

torch.set_num_threads(1)
TB_BNSTATS = pathlib.Path(sys.executable).with_name("tb-bnstats")


def objects(bucket, prefix=""):
    """``{key: bytes}`` of the bucket's objects under ``prefix``, read with boto3."""
    import boto3

    client = boto3.client("s3")
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def check_moments(run, recorder, names):
    """Every logged step's moments equal numpy moments of the module's real
    input; the moving statistics equal the buffers after the step."""
    assert sorted(run.layers) == sorted(names)
    for name in names:
        logged = run.layers[name]
        assert list(logged.snapshot_steps) == list(range(1, len(recorder.inputs) + 1))
        for i in range(len(recorder.inputs)):
            x = recorder.inputs[i][name]
            axes, scale = channel_axes(x), np.abs(x).max()
            assert_close(logged.snapshots["batch_mean"][i], x.mean(axis=axes), scale)
            assert_close(logged.snapshots["batch_var"][i], bessel(x.var(axis=axes), x.size / x.shape[1]), scale**2)
            mean, var, _ = recorder.running[i][name]
            np.testing.assert_allclose(logged.snapshots["moving_mean"][i], mean, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(logged.snapshots["moving_var"][i], var, rtol=1e-6, atol=1e-7)


def test_a_run_written_to_s3_reads_back_as_numpy_moments(bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in a local directory named after the URL
    torch.manual_seed(0)
    model = SmallResNet()
    x, y = data(n=64)
    recorder = InputRecorder(model)
    with BNStatsMonitor(model, f"s3://{bucket}/run", snapshot_every_n_steps=1, verbose=0) as monitor:
        losses = train(model, x, y, batch=16, epochs=2, monitor=monitor, recorder=recorder)
    stored = objects(bucket)
    assert len(stored) == 1 and next(iter(stored)).startswith("run/events.out.tfevents."), sorted(stored)
    assert list(tmp_path.iterdir()) == []
    for url in (f"s3://{bucket}/run", f"s3://{bucket}", f"s3://{bucket}/"):  # the run's own directory, the bucket
        runs = tb_bnstats.load(url)
        assert sorted(runs) == ["run"], (url, sorted(runs))
    run = tb_bnstats.load(f"s3://{bucket}/run")["run"]
    check_moments(run, recorder, RESNET_BN)
    steps, values = run.metrics["train/loss"]
    assert list(steps) == list(range(1, 9))
    np.testing.assert_allclose(values, losses, rtol=1e-6)


def test_a_pytorch_process_writes_reads_and_diagnoses_s3_without_tensorflow(bucket, s3_env, tmp_path):
    """Training, ``tb_bnstats.load`` and the command line's ``main`` in one
    process: no TensorFlow, Keras or JAX imported. The ``tb-bnstats``
    command on the URL prints the same findings and exits 1 (BN001 of a
    short run at PyTorch's default momentum)."""
    url = f"s3://{bucket}/run"
    script = textwrap.dedent(f"""
        import io, contextlib, json, sys
        import torch
        sys.path.insert(0, {str(pathlib.Path(__file__).resolve().parent.parent / "pytorch")!r})
        from torch_models import SmallResNet, data, train
        import tb_bnstats
        from tb_bnstats import cli
        from tb_bnstats.torch import BNStatsMonitor
        torch.manual_seed(0)
        model = SmallResNet()
        x, y = data(n=64)
        with BNStatsMonitor(model, {url!r}, verbose=0) as monitor:
            train(model, x, y, batch=16, epochs=2, monitor=monitor)
        run = tb_bnstats.load({url!r})["run"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["diagnose", {url!r}, "--json"], without_tensorflow=True)
        imported = sorted(m for m in ("tensorflow", "keras", "jax") if m in sys.modules)
        print("RESULT", json.dumps({{"steps": [int(s) for s in run.layers["bn"].steps], "code": code,
                                    "findings": json.loads(out.getvalue()), "imported": imported}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=s3_env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["imported"] == []
    assert result["steps"] == list(range(1, 9))
    assert result["code"] == 1 and [f["code"] for f in result["findings"]] == ["BN001"]
    command = subprocess.run([str(TB_BNSTATS), "diagnose", url, "--json"], capture_output=True, text=True,
                             timeout=300, env=s3_env, cwd=tmp_path)
    assert command.returncode == 1, command.stderr
    assert json.loads(command.stdout) == result["findings"]
    text = subprocess.run([str(TB_BNSTATS), "diagnose", f"s3://{bucket}"], capture_output=True, text=True,
                          timeout=300, env=s3_env, cwd=tmp_path)
    assert text.returncode == 1 and text.stdout.startswith("run: 1 finding(s)\n  ERROR   BN001 [S1]"), text


def test_another_process_writing_into_the_s3_directory_is_told(bucket, caplog):
    import boto3

    header = eventfile.tfrecord.frame(eventfile.event_pb2.Event(wall_time=time.time(),
                                                                file_version="brain.Event:2").SerializeToString())
    other = f"run/events.out.tfevents.{int(time.time()):010d}.otherhost.4242.000000"
    boto3.client("s3").put_object(Bucket=bucket, Key=other, Body=header)
    assert eventfile.other_writers(f"s3://{bucket}/run") == [("otherhost", 4242)]
    assert eventfile.other_writers(f"s3://{bucket}/elsewhere") == []
    model = SmallResNet()
    x, y = data(n=32)
    with caplog.at_level("WARNING", logger="tb_bnstats"):
        with BNStatsMonitor(model, f"s3://{bucket}/run", verbose=0) as monitor:
            train(model, x, y, batch=16, monitor=monitor)
    told = [r.getMessage() for r in caplog.records if "other processes are writing" in r.getMessage()]
    assert len(told) == 1 and f"s3://{bucket}/run" in told[0] and "pid 4242 on otherhost" in told[0], told


def test_a_run_past_the_roll_size_continues_in_new_objects(bucket, monkeypatch):
    """Each flush writes the current object whole; past ROLL_BYTES the next
    records go to a new event file. TensorBoard reads the files as one run:
    every step, the first file's tag metadata holding for the others."""
    monkeypatch.setattr(eventfile, "ROLL_BYTES", 4096)
    torch.manual_seed(0)
    model = SmallResNet()
    x, y = data(n=96)
    recorder = InputRecorder(model)
    with BNStatsMonitor(model, f"s3://{bucket}/run", snapshot_every_n_steps=1, verbose=0, flush_secs=0.05) as monitor:
        for _ in range(3):
            train(model, x, y, batch=16, monitor=monitor, recorder=recorder)
            time.sleep(0.3)  # a few flushes
    stored = objects(bucket, "run/")
    assert len(stored) >= 3, sorted(stored)
    assert sorted(stored) == sorted(stored, key=lambda k: int(k.rsplit(".", 1)[1]))  # name order = written order
    run = tb_bnstats.load(f"s3://{bucket}/run")["run"]
    assert list(run.layers["bn"].steps) == list(range(1, 19))
    check_moments(run, recorder, RESNET_BN)


@pytest.mark.parametrize("scheme,package,extra", [("gs", "gcsfs", "gcs"), ("s3", "s3fs", "s3")])
def test_a_missing_file_system_package_fails_at_construction(scheme, package, extra):
    """In a process where the scheme's package cannot be imported (made so
    with ``sys.modules[name] = None``, Python's way of saying a module is
    absent, so that the test does not depend on what else is installed)."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules[{package!r}] = None
        import torch
        from tb_bnstats.torch import BNStatsMonitor
        try:
            BNStatsMonitor(torch.nn.BatchNorm1d(3), "{scheme}://bucket/run")
        except ImportError as exc:
            print("ERROR", exc)
        try:
            BNStatsMonitor(torch.nn.BatchNorm1d(3), "nosuchfs://bucket/run")
        except ValueError as exc:
            print("ERROR", exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("ERROR")]
    assert lines == [
        f"ERROR tb_bnstats: {scheme}:// needs {package}, which is not installed (log_dir {scheme}://bucket/run): "
        f"pip install 'tb_bnstats[{extra}]'",
        "ERROR tb_bnstats: log_dir nosuchfs://bucket/run: fsspec knows no file system for nosuchfs://; give a "
        "local path or a URL such as s3://bucket/run"], done.stdout


def test_tensorboard_serves_the_tab_from_s3(bucket, s3_env, tmp_path):
    """``tensorboard --logdir s3://bucket/logs`` (a prefix under the bucket:
    TensorBoard's own boto3 reader cannot list a bucket's root), without
    TensorFlow: the tab lists the run and serves the CLI's findings."""
    import urllib.request

    url = f"s3://{bucket}/logs"
    torch.manual_seed(0)
    model = SmallResNet()
    x, y = data(n=64)
    with BNStatsMonitor(model, f"{url}/run", verbose=0) as monitor:
        train(model, x, y, batch=16, epochs=2, monitor=monitor)
    cli = json.loads(subprocess.run([str(TB_BNSTATS), "diagnose", url, "--json"], capture_output=True, text=True,
                                    timeout=300, env=s3_env).stdout)

    def get(address):
        with urllib.request.urlopen(address, timeout=5) as answer:
            return json.loads(answer.read().decode("utf-8"))

    log_path = tmp_path / "tensorboard.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(pathlib.Path(sys.executable).with_name("tensorboard")), "--logdir", url,
                                 "--port", "0", "--host", "127.0.0.1"], stdout=log, stderr=subprocess.STDOUT,
                                env=s3_env)
        try:
            deadline, runs = time.time() + 90, []
            while not runs:
                assert proc.poll() is None, log_path.read_text()[-2000:]
                assert time.time() < deadline, "tensorboard listed no run in 90 s: " + log_path.read_text()[-2000:]
                found = re.search(r"TensorBoard \S+ at (http://127\.0\.0\.1:\d+)/", log_path.read_text())
                try:
                    runs = get(found.group(1) + "/data/plugin/bn_stats/runs")["runs"] if found else []
                except (OSError, ValueError):
                    pass
                time.sleep(0.3)
            findings = get(found.group(1) + "/data/plugin/bn_stats/findings?run=run")
        finally:
            proc.terminate()
            proc.wait(10)
    assert [r["run"] for r in runs] == ["run"]
    assert [{k: v for k, v in f.items() if k != "source"} for f in findings["findings"]] == cli
    assert [f["code"] for f in cli] == ["BN001"]
