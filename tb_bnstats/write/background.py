"""Writing off the training thread: a bounded queue of jobs run in order by
one daemon thread.

The recorder hands each drained block of steps to a :class:`JobQueue`; the
quantities, the encoding and the file writes then run beside training, not
in its loop. The queue is bounded: when the writer falls behind (a slow
disk) and the queue is full, the oldest waiting job is dropped and that is
said once, so training is never held up by its monitor.
"""

import collections
import dataclasses
import functools
import logging
import threading
import warnings
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("tb_bnstats")

# Jobs waiting at most: each is one drained block (at most a ring's worth of
# steps, tb_bnstats.capture.rows.RING_BYTES).
MAX_PENDING = 4


@dataclasses.dataclass(frozen=True)
class Job:
    """One job for the writer thread.

    Attributes:
        run: what to run (its failures are its own to report; one that
            escapes is logged and the thread goes on).
        what: what it writes, for the message should it be dropped.
    """

    run: Callable[[], object]
    what: str = "a job"


class JobQueue:
    """Runs submitted jobs one after another on a daemon thread.

    Args:
        max_pending: jobs waiting at most before the oldest is dropped.
        name: the thread's name.
    """

    def __init__(self, max_pending: int = MAX_PENDING, name: str = "tb_bnstats-writer") -> None:
        self._jobs: collections.deque[Job] = collections.deque()
        self._max = int(max_pending)
        self._cond = threading.Condition()
        self._running = False  # a job is being run now
        self._closed = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._thread.start()

    def submit(self, fn: Callable[..., object], *args: Any, what: str = "a job") -> None:
        """Queues ``fn(*args)``: :meth:`put` of a :class:`Job`.

        Raises:
            RuntimeError: the queue is closed.
        """
        self.put(Job(functools.partial(fn, *args), what))

    def put(self, job: Job) -> None:
        """Queues ``job``; never blocks. With ``max_pending`` jobs waiting,
        the oldest is dropped (said once, naming ``what`` it was).

        Raises:
            RuntimeError: the queue is closed.
        """
        with self._cond:
            if self._closed:
                raise RuntimeError("tb_bnstats: the writer queue is closed")
            if len(self._jobs) >= self._max:
                dropped_what = self._jobs.popleft().what
                self.dropped += 1
                if self.dropped == 1:
                    warnings.warn(f"tb_bnstats: the event-file writer fell behind training; dropped "
                                  f"{dropped_what} (and will drop the oldest waiting block again if it "
                                  f"stays behind; said once)", RuntimeWarning, stacklevel=3)
            self._jobs.append(job)
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until every job submitted so far has run (or ``timeout``
        seconds passed); returns whether the queue is empty."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._jobs and not self._running, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Runs what is queued, then stops the thread."""
        self.wait(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._jobs or self._closed)
                if not self._jobs:
                    return
                job = self._jobs.popleft()
                self._running = True
            try:
                job.run()
            except Exception:  # noqa: BLE001 - the caller's fn reports its own failures; the thread goes on
                logger.exception("tb_bnstats: a write job failed")
            finally:
                with self._cond:
                    self._running = False
                    self._cond.notify_all()
