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
