"""The background writer's queue: jobs run in order off the caller's thread,
the caller never waits, and a writer that falls behind drops the oldest
waiting job, saying so once."""

import threading
import time
import warnings

from tb_bnstats.write import background


def test_jobs_run_in_order_on_another_thread():
    queue, ran = background.JobQueue(max_pending=100), []
    for i in range(10):
        queue.submit(lambda i=i: ran.append((i, threading.current_thread().name)))
    assert queue.wait(30)
    assert [i for i, _ in ran] == list(range(10))
    assert {name for _, name in ran} == {"tb_bnstats-writer"}
    queue.close()


def test_a_writer_that_falls_behind_drops_the_oldest_waiting_job_and_says_so_once():
    queue, ran, release = background.JobQueue(max_pending=2), [], threading.Event()
    queue.submit(release.wait)  # the writer is stuck on this one (a slow disk)
    while not queue._running:
        time.sleep(0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.monotonic()
        for i in range(5):
            queue.submit(ran.append, i, what=f"block {i}")
        assert time.monotonic() - started < 1.0  # the caller did not wait
    release.set()
    assert queue.wait(30)
    assert ran == [3, 4] and queue.dropped == 3
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "fell behind" in messages[0] and "block 0" in messages[0]
    queue.close()


def test_a_failing_job_does_not_stop_the_ones_after_it():
    queue, ran = background.JobQueue(), []
    queue.submit(lambda: 1 / 0)
    queue.submit(ran.append, "next")
    assert queue.wait(30) and ran == ["next"]
    queue.close()


def test_a_probe_point_whose_layer_block_was_dropped_is_not_read_as_nan_moments(tmp_path):
    """Measured on a loaded machine: the writer dropped the block of steps
    61-70 and wrote the probe at step 70; read aligned, step 70 had NaN
    moments, a false BN007. A point of a sparse series without the layer's
    series at its step is left out."""
    import numpy as np

    import tb_bnstats
    from tb_bnstats import quantities
    from tb_bnstats.write import summary

    rng = np.random.default_rng(0)
    with summary.Writer(str(tmp_path / "run")) as w:
        for step in [s for s in range(1, 41) if not 11 <= s <= 20]:
            w.layer_moments("bn", step, batch_mean=rng.normal(0, 0.1, 3), batch_var=np.ones(3),
                                   moving_mean=np.zeros(3), moving_var=np.ones(3), updates=step, momentum=0.9,
                                   epsilon=1e-3)
        for step in (10, 20):  # 20: its layer block "dropped"
            w.probe(w._layers["bn"], step, quantities.probe_series(1e-3, np.zeros(3), np.ones(3), np.zeros(3),
                                                                   np.ones(3), 0.1))
    layer = tb_bnstats.load(tmp_path)["run"].layers["bn"]
    assert 20 not in layer.steps and 10 in layer.steps and len(layer.steps) == 30
    assert np.isfinite(layer.series["batch_mean"]).all()
    assert np.isfinite(layer.series["probe_output_drift"]).sum() == 1
    assert "BN007" not in {f.code for f in tb_bnstats.diagnose(tmp_path)}


def test_another_process_writing_the_same_run_directory_is_told(tmp_path, caplog):
    """A second process with a Writer open on the same run directory (one
    process per rank, each writing, by mistake): the writer opened last says
    so; a finished process's file, or this process's own, is no reason to."""
    import subprocess
    import sys
    import textwrap

    from tb_bnstats.write import summary

    code = textwrap.dedent(f"""
        import sys, time
        from tb_bnstats.write import summary
        w = summary.Writer({str(tmp_path)!r})
        print("open", flush=True)
        sys.stdin.readline()
        w.close()
    """)
    other = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "open"
        with caplog.at_level("WARNING", logger="tb_bnstats"):
            summary.Writer(str(tmp_path)).close()
        assert f"pid {other.pid}" in caplog.text and "rank 0 only" in caplog.text
    finally:
        other.communicate("\n", timeout=60)
    caplog.clear()
    with caplog.at_level("WARNING", logger="tb_bnstats"):
        summary.Writer(str(tmp_path)).close()  # the other process has ended; this one's own file is there too
    assert "other processes" not in caplog.text
