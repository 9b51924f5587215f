"""Event files: where the summary writer's records go.

An event file is a TFRecord file of serialized ``Event`` protos
(:mod:`tb_bnstats.format.tfrecord` frames them). :class:`EventFile` appends
each batch of records with one unbuffered write, so what was written is in
the operating system's hands at once (a killed process loses none of it),
and a failing write (a full disk) fails where it is made. A remote file
(``gs://...``) is buffered by its file system and flushed every
``flush_secs`` by a daemon thread. It needs neither
TensorFlow nor TensorBoard's writer (whose pure-Python CRC32C cost ~0.3 ms
per 1 kB record): the same bytes, with the checksum in C.
"""

import itertools
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

from tensorboard.compat.proto import event_pb2

from tb_bnstats.format import tfrecord

logger = logging.getLogger("tb_bnstats")

_uid = itertools.count()
# events.out.tfevents.<time>.<host>.<pid>.<n>[.v2]: ours, TensorBoard's, PyTorch's and TensorFlow's writers.
_NAME = re.compile(r"^events\.out\.tfevents\.(\d+)\.(.+?)\.(\d+)\.\d+(?:\.v2)?$")
# Another process's event file written this recently counts as "being written now".
RECENT_WRITE_S = 120.0


def other_writers(logdir: str, host: str | None = None, pid: int | None = None) -> list[tuple[str, int]]:
    """Other processes writing event files into ``logdir`` now: ``[(host,
    pid)]`` of files named as TensorBoard names them by another process,
    modified in the last :data:`RECENT_WRITE_S` seconds, and on this host
    only while that process is alive. Several processes in one run directory
    interleave their steps in one TensorBoard run."""
    host = socket.gethostname() if host is None else host
    pid = os.getpid() if pid is None else pid
    found: set[tuple[str, int]] = set()
    try:
        entries = list(os.scandir(logdir))
    except OSError:
        return []
    now = time.time()
    for entry in entries:
        match = _NAME.match(entry.name)
        if not match or (match.group(2) == host and int(match.group(3)) == pid):
            continue
        try:
            if now - entry.stat().st_mtime > RECENT_WRITE_S:
                continue
        except OSError:
            continue
        if match.group(2) == host and not _alive(int(match.group(3))):
            continue
        found.add((match.group(2), int(match.group(3))))
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _open_for_append(path: str) -> Any:
    """A binary file to append to: the local file system, or a
    ``scheme://`` path through TensorBoard's file-system layer (which uses
    TensorFlow's when TensorFlow is installed)."""
    if "://" in path:
        from tensorboard.compat import tf

        tf.io.gfile.makedirs(os.path.dirname(path))
        return tf.io.gfile.GFile(path, "wb")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return open(path, "ab", buffering=0)


class EventFile:
    """A new event file in ``logdir`` (created if missing), named as
    TensorBoard names them (``events.out.tfevents.<time>.<host>.<pid>.<n>``, with ``n`` in six digits).

    Args:
        logdir: the run's directory.
        flush_secs: records reach the disk at least this often.
    """

    def __init__(self, logdir: str | os.PathLike[str], flush_secs: float) -> None:
        logdir = os.fspath(logdir)
        if "://" not in logdir:
            others = other_writers(logdir)
            if others:
                logger.warning(
                    "tb_bnstats: other processes are writing event files into %s too (%s): TensorBoard shows "
                    "them as one run, their steps interleaved. With several processes let one write: "
                    "BNStatsMonitor(ddp_model, ...) on every rank writes from rank 0 only, BNStatsCallback "
                    "writes from one process; otherwise give each process a log_dir of its own.", logdir,
                    ", ".join(f"pid {pid} on {host}" for host, pid in others))
        # The count zero-padded: TensorBoard reads a run's files in name order, and two files of one
        # process opened in the same second must sort as opened ("...9" would sort after "...10").
        self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                                         f"{os.getpid()}.{next(_uid):06d}")
        self._file = _open_for_append(self.path)
        self._local = "://" not in self.path
        self._lock = threading.Lock()
        self._closed = False
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()
        self._stop = threading.Event()
        threading.Thread(target=self._flush_every, args=(float(flush_secs),), daemon=True,
                         name="tb_bnstats-flush").start()

    def add_event(self, event: event_pb2.Event) -> None:
        """Appends one ``Event``.

        Raises:
            IOError: the file is closed.
        """
        self.add_serialized([event.SerializeToString()])

    def add_serialized(self, events: Iterable[bytes]) -> None:
        """Appends serialized ``Event`` s (bytes), in order.

        Raises:
            IOError: the file is closed.
        """
        data = b"".join(tfrecord.frame(e) for e in events)
        with self._lock:
            if self._closed:
                raise OSError(f"event file {self.path} is closed")
            start = os.fstat(self._file.fileno()).st_size if self._local else None
            view = memoryview(data)
            try:
                while view:  # an unbuffered write may take part of the bytes (then the next one raises)
                    written = self._file.write(view)
                    view = view[len(view) if written is None else written:]
            except OSError:
                if start is not None:  # no half record: what follows stays readable if space comes back
                    try:
                        self._file.truncate(start)
                    except OSError:
                        pass
                raise

    def flush(self) -> None:
        """Writes buffered records to disk."""
        with self._lock:
            if not self._closed:
                self._file.flush()

    def _flush_every(self, seconds: float) -> None:
        warned = False
        while not self._stop.wait(seconds):
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - a background thread has no caller to raise to
                if not warned:  # once: a full disk stays full, one line a second helps no one
                    warned = True
                    logger.warning("tb_bnstats: flushing %s failed (records are lost until it works "
                                   "again; said once): %s", self.path, exc)

    def close(self) -> None:
        """Stops the flush thread, flushes and closes the file."""
        self._stop.set()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._file.close()
