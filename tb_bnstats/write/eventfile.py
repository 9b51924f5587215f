"""Event files: where the summary writer's records go.

An event file is a TFRecord file of serialized ``Event`` protos
(:mod:`tb_bnstats.format.tfrecord` frames them). :class:`EventFile` appends
each batch of records to a local file with one unbuffered write, so what was
written is in the operating system's hands at once (a killed process loses
none of it), and a failing write (a full disk) fails where it is made. A
URL (``s3://...``, ``gs://...``: :mod:`tb_bnstats.format.filesystem`) names
objects that cannot be appended to: the file's bytes are kept in memory and
the whole object is written again every ``flush_secs`` by a daemon thread
(what TensorBoard's own writers do on these file systems); past
:data:`ROLL_BYTES` the next records go to a new event file, so that one
flush never uploads more than about that. It needs neither TensorFlow nor
TensorBoard's writer (whose pure-Python CRC32C cost ~0.3 ms per 1 kB
record): the same bytes, with the checksum in C.
"""

import itertools
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterable

from tensorboard.compat.proto import event_pb2

from tb_bnstats.format import filesystem, tfrecord

logger = logging.getLogger("tb_bnstats")

_uid = itertools.count()
# events.out.tfevents.<time>.<host>.<pid>.<n>[.v2]: ours, TensorBoard's, PyTorch's and TensorFlow's writers.
_NAME = re.compile(r"^events\.out\.tfevents\.(\d+)\.(.+?)\.(\d+)\.\d+(?:\.v2)?$")
# Another process's event file written this recently counts as "being written now".
RECENT_WRITE_S = 120.0
# A remote event file (a URL's object, written whole at each flush) is left for a new one past this size.
ROLL_BYTES = 16 * 2**20


def other_writers(logdir: str, host: str | None = None, pid: int | None = None) -> list[tuple[str, int]]:
    """Other processes writing event files into ``logdir`` now: ``[(host,
    pid)]`` of files named as TensorBoard names them by another process,
    modified in the last :data:`RECENT_WRITE_S` seconds, and on this host
    only while that process is alive. Several processes in one run directory
    interleave their steps in one TensorBoard run. ``logdir`` may be a URL
    (listed through its file system); one that cannot be listed has none."""
    host = socket.gethostname() if host is None else host
    pid = os.getpid() if pid is None else pid
    found: set[tuple[str, int]] = set()
    now = time.time()
    for name, mtime in _entries(logdir):
        match = _NAME.match(name)
        if not match or (match.group(2) == host and int(match.group(3)) == pid):
            continue
        if mtime is None or now - mtime > RECENT_WRITE_S:
            continue
        if match.group(2) == host and not _alive(int(match.group(3))):
            continue
        found.add((match.group(2), int(match.group(3))))
    return sorted(found)


def _entries(logdir: str) -> list[filesystem.Entry]:
    """The files in ``logdir`` with their modification times; none when it cannot be listed."""
    if filesystem.is_url(logdir):
        try:
            return list(filesystem.remote(logdir).entries(logdir))
        except Exception:  # noqa: BLE001 - a file system's own errors (TensorFlow's, a client's): not listed
            return []
    entries = []
    try:
        with os.scandir(logdir) as scan:
            for entry in scan:
                try:
                    entries.append(filesystem.Entry(entry.name, entry.stat().st_mtime))
                except OSError:
                    continue
    except OSError:
        return []
    return entries


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


class _LocalFile:
    """A local event file, appended to with unbuffered writes."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._file = open(path, "ab", buffering=0)

    def write(self, data: bytes) -> None:
        start = os.fstat(self._file.fileno()).st_size
        view = memoryview(data)
        try:
            while view:  # an unbuffered write may take part of the bytes (then the next one raises)
                written = self._file.write(view)
                view = view[len(view) if written is None else written:]
        except OSError:
            try:  # no half record: what follows stays readable if space comes back
                self._file.truncate(start)
            except OSError:
                pass
            raise

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class _RemoteFile:
    """An event file at a URL: its bytes kept here, the whole object written at each flush (when changed)."""

    def __init__(self, path: str, fs: filesystem.RemoteFileSystem) -> None:
        self._path, self._fs = path, fs
        self._data = bytearray()
        self._written = 0  # len(self._data) when it was last written

    @property
    def size(self) -> int:
        return len(self._data)

    def write(self, data: bytes) -> None:
        self._data += data

    def flush(self) -> None:
        if self._written != len(self._data):
            self._fs.put(self._path, bytes(self._data))
            self._written = len(self._data)

    def close(self) -> None:
        self.flush()


class EventFile:
    """A new event file in ``logdir`` (created if missing), named as
    TensorBoard names them (``events.out.tfevents.<time>.<host>.<pid>.<n>``, with ``n`` in six digits).

    Args:
        logdir: the run's directory: a local path, or a URL
            (:mod:`tb_bnstats.format.filesystem`).
        flush_secs: records reach the disk (a URL's object) at least this often.

    Raises:
        OSError: the directory or the file cannot be made (a URL's file
            system may raise its own errors).
        ImportError, ValueError: a URL whose file system is not installed
            (:func:`tb_bnstats.format.filesystem.check`).
    """

    def __init__(self, logdir: str | os.PathLike[str], flush_secs: float) -> None:
        logdir = os.fspath(logdir)
        self.logdir = logdir
        self._fs = filesystem.remote(logdir) if filesystem.is_url(logdir) else None
        others = other_writers(logdir)
        if others:
            logger.warning(
                "tb_bnstats: other processes are writing event files into %s too (%s): TensorBoard shows "
                "them as one run, their steps interleaved. With several processes let one write: "
                "BNStatsMonitor(ddp_model, ...) on every rank writes from rank 0 only, BNStatsCallback "
                "writes from one process; otherwise give each process a log_dir of its own.", logdir,
                ", ".join(f"pid {pid} on {host}" for host, pid in others))
        if self._fs is not None:
            self._fs.makedirs(logdir)
        self._lock = threading.Lock()
        self._closed = False
        self._open_new()
        self._stop = threading.Event()
        threading.Thread(target=self._flush_every, args=(float(flush_secs),), daemon=True,
                         name="tb_bnstats-flush").start()

    def _open_new(self) -> None:
        """Starts a new file (its first record, the file version, written at once)."""
        # The count zero-padded: TensorBoard reads a run's files in name order, and two files of one
        # process opened in the same second must sort as opened ("...9" would sort after "...10").
        self.path = filesystem.join(self.logdir, f"events.out.tfevents.{int(time.time()):010d}."
                                                 f"{socket.gethostname()}.{os.getpid()}.{next(_uid):06d}")
        self._file: _LocalFile | _RemoteFile = (
            _LocalFile(self.path) if self._fs is None else _RemoteFile(self.path, self._fs))
        header = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString()
        self._file.write(tfrecord.frame(header))
        self._file.flush()

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
            self._file.write(data)

    def flush(self) -> None:
        """Writes buffered records to disk (a URL's object: written whole
        when it changed; past :data:`ROLL_BYTES` the next records start a new
        file, even when this write failed, so that memory stays bounded).

        Raises:
            OSError: the write failed (a URL's file system may raise its own errors).
        """
        with self._lock:
            if self._closed:
                return
            try:
                self._file.flush()
            finally:
                if isinstance(self._file, _RemoteFile) and self._file.size >= ROLL_BYTES:
                    self._open_new()

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
        """Stops the flush thread, flushes and closes the file.

        Raises:
            OSError: the last write failed (a URL's file system may raise its own errors).
        """
        self._stop.set()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._file.close()
