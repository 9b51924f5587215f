"""Faults on the training side, with real fits: NaN/Inf in the moments (an
input batch holding inf, a learning rate that blows up), a full disk, a
process killed with SIGKILL, and a real ``tensorboard`` reading while a real
training process writes."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import warnings

import keras
import numpy as np
import pytest

import tb_bnstats
from conftest import make_client
from keras_models import conv_net, data
from tb_bnstats.format import metadata
from tb_bnstats.read import integrity

pytestmark = pytest.mark.backend  # runs again under each Keras backend (Makefile, test-python)

TESTS = str(pathlib.Path(__file__).resolve().parent)
P = "/data/plugin/bn_stats"
BATCH = 16


def strict_json(text):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def routes(run, layer):
    return [f"/overview?run={run}", f"/heatmap?run={run}", f"/series?run={run}&layer={layer}",
            f"/snapshot?run={run}&layer={layer}", f"/bands?run={run}&layer={layer}", f"/loss?run={run}",
            f"/findings?run={run}", f"/compare?run={run}&layer={layer}", "/runs"]


def fit_quietly(model, x, y, cb, epochs=1):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=[cb])
    ours = [str(w.message) for w in caught if "tb_bnstats" in str(w.message)]
    assert ours == [], ours  # the callback handled NaN without a failure of its own
    return history


@pytest.mark.parametrize("fault", ["inf_input", "lr_blowup"])
def test_nan_and_inf_moments_are_logged_and_reported_as_bn007(tmp_path, fault):
    x, y = data()
    model = conv_net()
    if fault == "inf_input":
        x[BATCH + 3] = np.inf  # one sample of the second batch
        epochs, first_bad = 1, 2
    else:
        model.compile(keras.optimizers.SGD(1e30), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        epochs, first_bad = 3, None
    cb = tb_bnstats.BNStatsCallback(tmp_path / "run", verbose=0)
    history = fit_quietly(model, x, y, cb, epochs)
    assert len(history.history["loss"]) == epochs and model.optimizer.iterations.numpy() == 4 * epochs
    assert not np.isfinite(history.history["loss"][-1])  # the fault is real

    bn007 = [f for f in cb.findings if f.code == "BN007"]
    assert len(bn007) == 1 and bn007[0].severity == "error" and "bn1" in bn007[0].layers
    ev = bn007[0].evidence["bn1"]
    # Independently: the first step whose logged bn1 moments are not finite.
    layer = tb_bnstats.load(tmp_path)["run"].layers["bn1"]
    moments = np.stack([layer.series[k] for k in ("batch_mean", "batch_var", "moving_mean", "moving_var")])
    bad = ~np.isfinite(moments).all(axis=0)
    assert bad.any() and not bad[0]
    assert ev["first_bad_step"] == int(layer.steps[np.argmax(bad)])
    if first_bad is not None:
        assert ev["first_bad_step"] == first_bad
        # The inf sample's batch (conv weights of both signs: +inf and -inf -> NaN).
        assert not np.isfinite(layer.series["batch_mean"][1]) and np.isfinite(layer.series["batch_mean"][0])

    # Every route answers strict JSON (no NaN/Infinity tokens, which JSON.parse rejects).
    client, _ = make_client(str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for url in routes("run", "bn1"):
            r = client.get(P + url)
            assert r.status_code == 200, (url, r.get_data(as_text=True)[:300])
            body = strict_json(r.get_data(as_text=True))
    # NaN-only snapshot rows: no numpy "All-NaN slice" warning in the server log.
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
    findings = strict_json(client.get(P + "/findings?run=run").get_data(as_text=True))["findings"]
    stored = [f for f in findings if f["code"] == "BN007"]
    assert stored and stored[0]["source"] == "stored" and stored[0]["evidence"]["bn1"] == ev
    series = strict_json(client.get(P + "/series?run=run&layer=bn1&quantities=batch_mean").get_data(as_text=True))
    values = series["series"]["batch_mean"]["values"]
    assert values[0] is not None and None in values  # non-finite -> null
    del body


CHILD = """
import os, sys, time
sys.path.insert(0, {tests!r})
import keras, numpy as np, tb_bnstats
from keras_models import conv_net, data

class Report(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        w = self.model_cb._recorder.writer
        print("WRITER", w.path if w is not None else None,
              os.path.islink(w.path) if w is not None else None, flush=True)
{on_begin}
    def on_train_batch_end(self, batch, logs=None):
        # Steps counted here (= the optimizer's, from step 0): with JAX the model's variables are only
        # synced at epoch ends.
        self.steps = getattr(self, "steps", 0) + 1
        print("STEP", self.steps, repr(time.time()), flush=True)
        time.sleep({sleep})

{setup}
x, y = data(n=64)
cb = tb_bnstats.BNStatsCallback({logdir!r}, flush_secs=1, verbose=0)
report = Report()
report.model_cb = cb
history = conv_net().fit(x, y, batch_size=16, epochs={epochs}, verbose=0, callbacks=[cb, report])
print("FINDINGS", None if cb.findings is None else sorted({{f.code for f in cb.findings}}), flush=True)
print("DONE", len(history.history["loss"]), flush=True)
"""


def child(logdir, epochs, sleep, setup="", on_begin=""):
    script = CHILD.format(tests=TESTS, logdir=str(logdir), epochs=epochs, sleep=sleep, setup=textwrap.dedent(setup),
                          on_begin=textwrap.indent(textwrap.dedent(on_begin), " " * 8))
    # Every RuntimeWarning (tb_bnstats' own), not the DeprecationWarnings Keras may emit each step: the
    # pipe must not fill while a test reads only stdout.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="always,ignore::DeprecationWarning")
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def test_full_disk_at_open_warns_and_training_continues(tmp_path):
    """The event file is /dev/full (every write fails with ENOSPC): the child
    links the names its writer will pick to it before ``fit``."""
    logdir = tmp_path / "run"
    setup = f"""
        import socket
        os.makedirs({str(logdir)!r})
        now = int(time.time())
        for t in range(now - 2, now + 300):
            os.symlink("/dev/full", os.path.join({str(logdir)!r}, "events.out.tfevents.%010d.%s.%s.%06d"
                                                 % (t, socket.gethostname(), os.getpid(), 0)))
    """
    proc = child(logdir, epochs=3, sleep=0.0, setup=setup)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    lines = out.splitlines()
    assert lines[0] == "WRITER None None"  # opening it failed...
    assert lines[-1] == "DONE 3"  # ...and every epoch ran
    assert len([ln for ln in lines if ln.startswith("STEP")]) == 12
    assert "tb_bnstats: opening the log directory failed, training continues" in err, err[-3000:]
    assert "No space left on device" in err, err[-3000:]


def test_disk_full_mid_run_warns_once_and_keeps_what_was_written(tmp_path):
    """Writes start failing mid-run (RLIMIT_FSIZE, set once the writer is
    open: EFBIG, the same failing write as a full disk without root)."""
    logdir = tmp_path / "run"
    on_begin = """
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = os.path.getsize(w.path) + 16000
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    """
    proc = child(logdir, epochs=5, sleep=0.25, on_begin=on_begin)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    lines = out.splitlines()
    assert lines[-1] == "DONE 5" and len([ln for ln in lines if ln.startswith("STEP")]) == 20
    assert "File too large" in err
    assert err.count("tb_bnstats: logging batch statistics failed, training continues") == 1, err[-3000:]
    assert err.count("flushing") <= 1, err[-3000:]  # said once, not once a second
    # The diagnosis is still made. Its stored copy is lost if, and only if, its write failed too (whether
    # the small findings record still fits under the limit after the cut-back block depends on record sizes).
    assert lines[-2].startswith("FINDINGS ["), (lines[-2:], err[-2000:])
    stored = tb_bnstats.load(tmp_path)["run"].stored_findings
    assert ("writing the findings failed" in err) == (stored is None), (stored, err[-2000:])
    # The failed write was cut back off: the file ends on a whole record, nothing half written.
    (path,) = logdir.glob("events.out.tfevents.*")
    offset, size, problem = integrity.check_records(str(path))
    assert problem is None and offset == size
    run = tb_bnstats.load(tmp_path)["run"]
    assert any(len(layer.steps) for layer in run.layers.values())
    for name, layer in run.layers.items():
        # What was written before the limit reads back; a record that hit it is lost whole. A later record
        # small enough for what is left under the limit may still be written (which one depends on when the
        # writes fell), so the steps increase, with gaps, and fewer than the run's.
        steps = layer.steps
        assert len(steps) < 20 and np.all(np.diff(steps) > 0), (name, steps)
        if "updates" not in layer.series:  # none of its own records was written (only a probe's points)
            continue
        np.testing.assert_array_equal(layer.series["updates"], layer.steps)
        assert all(np.isfinite(v).all() for k, v in layer.series.items() if k not in metadata.PROBE_SERIES)


def test_sigkill_loses_at_most_one_drain_and_one_flush_interval(tmp_path):
    """SIGKILL gives no chance to drain: lost are the steps still on the
    device (at most one drain interval: ``flush_secs`` here, as 256 steps
    take longer) and what the writer had not written and flushed yet (one
    flush interval), nothing before."""
    logdir = tmp_path / "run"
    proc = child(logdir, epochs=200, sleep=0.02)
    printed = []
    try:
        for line in proc.stdout:
            if line.startswith("STEP"):
                _, step, t = line.split()
                printed.append((int(step), float(t)))
                if int(step) >= 150 and printed[-1][1] - printed[0][1] > 6.0:  # steps written for sure
                    killed_at = time.time()
                    proc.send_signal(signal.SIGKILL)
                    break
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    run = tb_bnstats.load(tmp_path)["run"]
    flush_secs, slack = 1.0, 1.5  # slack: two processes on two shared cores
    drain_interval = flush_secs
    must_have = max(s for s, t in printed if t <= killed_at - drain_interval - flush_secs - slack)
    last_printed = printed[-1][0]
    print(f"killed after step {last_printed}; read back up to", {n: int(l.steps[-1]) for n, l in run.layers.items()},
          f"flushed for sure: {must_have}")
    assert must_have >= 20
    for name, layer in run.layers.items():
        k = int(layer.steps[-1])
        assert must_have <= k <= last_printed, name
        np.testing.assert_array_equal(layer.steps, np.arange(1, k + 1), err_msg=name)  # no hole, no garbage
        s = layer.series
        for key, values in s.items():  # the probe's series only at its steps
            assert key in metadata.PROBE_SERIES or np.isfinite(values).all(), (name, key)
        np.testing.assert_array_equal(s["updates"], layer.steps)  # one moving-average update per step
        np.testing.assert_allclose(s["convergence"], 1 - layer.info.momentum ** layer.steps, rtol=1e-6)
    loss_steps, loss = run.metrics["train/loss"]
    assert len(loss_steps) >= must_have and np.isfinite(loss).all()


def http_json(url):
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, strict_json(r.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        return e.code, strict_json(e.read().decode("utf-8"))
