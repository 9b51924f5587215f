"""Checks that the event files on disk can be read: where a record is
corrupted or a file was cut off, what TensorBoard will not show.

TensorBoard's readers stop at a damaged record silently (at debug level);
these checks say which file, from which byte and how much is lost, for the
tab's banner and for :func:`tb_bnstats.load`'s warnings.
"""

import dataclasses
import os
import time
import warnings
from collections.abc import Iterable
from typing import Any

from tb_bnstats.format import names, tfrecord

# An event file that ends inside a record is being written, unless it has not
# changed for this long: then it was cut off (a killed run, a full disk).
STALE_S = 30.0


def check_records(path: str | os.PathLike[str], offset: int = 0,
                  deadline: float | None = None) -> tuple[int, int, str | None]:
    """Walks the record framing of the event file ``path`` from byte
    ``offset`` (the start of a record), checking each length against its
    checksum (:mod:`tb_bnstats.format.tfrecord`). The data checksums are not
    checked: TensorBoard's data server reads each payload anyway, and a bad
    one is reported by the reader (``warn_file_problems``' ``data_loss``).

    Returns ``(offset, size, problem)``: where the last complete record read
    ends, the file's size, and None, ``"incomplete"`` (the file ends inside a
    record: cut off, or still being written) or ``"bad_length"`` (a corrupted
    record at ``offset``: TensorBoard stops reading the file there). Stops
    early, with no problem, once ``time.monotonic()`` passes ``deadline``.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        while offset < size:
            if deadline is not None and time.monotonic() > deadline:
                return offset, size, None
            f.seek(offset)
            header = f.read(tfrecord.HEADER_BYTES)
            if len(header) < tfrecord.HEADER_BYTES:
                return offset, size, "incomplete"
            length = tfrecord.data_length(header)
            if length is None:
                return offset, size, "bad_length"
            end = offset + tfrecord.HEADER_BYTES + length + tfrecord.FOOTER_BYTES
            if end > size:
                return offset, size, "incomplete"
            offset = end
    return offset, size, None


@dataclasses.dataclass
class FileProblem:
    """Part of an event file that TensorBoard cannot read (or not yet)."""

    run: str  # the run's name (tb_bnstats.format.names: the logdir itself by its own name)
    directory: str  # the file's directory relative to the logdir ("." for the logdir itself)
    file: str  # the file name
    kind: str  # "bad_length", "incomplete", "empty", "unreadable" (check_records), "bad_data" (load)
    offset: int  # bytes before this one were read
    size: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        """The problem as JSON (the ``/runs`` route's ``file_problems``)."""
        return dataclasses.asdict(self)


class EventFileCheck:
    """Checks the record framing of every event file under a local ``logdir``
    (:func:`check_records`), incrementally: each file is read on
    from where the last call stopped, so a live run costs only its new bytes."""

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        self.logdir = os.fspath(logdir)
        self._state: dict[str, tuple[int, int, str | None]] = {}  # path -> (offset, size, problem)
        self._event_dirs: set[str] = set()  # every directory holding event files at the last scan (relative)

    def problems(self, budget_s: float | None = None) -> list[FileProblem]:
        """The files' problems now; with ``budget_s`` the scan stops after
        that long and goes on at the next call (unscanned bytes: no problem yet)."""
        deadline = None if budget_s is None else time.monotonic() + budget_s
        out: list[FileProblem] = []
        self._event_dirs = set()
        for dirpath, _, files in os.walk(self.logdir):
            for name in sorted(f for f in files if "tfevents" in f):
                self._event_dirs.add(self._relative(dirpath))
                path = os.path.join(dirpath, name)
                try:
                    stat = os.stat(path)
                    offset, size, problem = self._state.get(path, (0, 0, None))
                    if stat.st_size < size:  # replaced or rewritten: from the start
                        offset, problem = 0, None
                    if problem != "bad_length" and offset < stat.st_size and (
                            deadline is None or time.monotonic() < deadline):
                        offset, size, problem = check_records(path, offset, deadline)
                    size = max(size, stat.st_size)
                    self._state[path] = (offset, size, problem)
                except OSError as exc:
                    out.append(self._problem(dirpath, name, "unreadable", 0, 0, f"cannot be read: {exc}"))
                    continue
                stale = time.time() - stat.st_mtime > STALE_S
                if problem == "bad_length":
                    out.append(self._problem(dirpath, name, problem, offset, size,
                                             f"corrupted record at byte {offset} (bad length checksum): TensorBoard "
                                             f"stops reading this file there, its last {size - offset} bytes are "
                                             f"not shown"))
                elif problem == "incomplete" and stale:
                    out.append(self._problem(dirpath, name, problem, offset, size,
                                             f"ends inside a record (cut off: a killed run, a full disk?): its last "
                                             f"{size - offset} bytes are not shown"))
                elif size == 0 and stale:
                    out.append(self._problem(dirpath, name, "empty", 0, 0, "is empty (0 bytes): nothing to show"))
        return out

    def _relative(self, dirpath: str) -> str:
        return os.path.relpath(dirpath, self.logdir).replace(os.sep, "/")

    def _problem(self, dirpath: str, name: str, kind: str, offset: int, size: int, message: str) -> FileProblem:
        directory = self._relative(dirpath)
        run = names.run_names(self._event_dirs | {directory}, self.logdir)[directory]
        return FileProblem(run, directory, name, kind, offset, size, f"{directory}/{name} {message}")


def warn_file_problems(logdir: str | os.PathLike[str], directory: str | None = None,
                       data_loss: Iterable[tuple[str, int]] = ()) -> list[FileProblem]:
    """Warns (``RuntimeWarning``) about each unreadable part of the event
    files under a local ``logdir`` (of the run in ``directory``, relative to
    ``logdir``, only, when given): framing
    problems (:class:`EventFileCheck`) and the ``(path, offset)`` of
    ``data_loss``, corrupted records the reader stopped at (a bad data
    checksum, which the framing check does not see)."""
    if "://" in os.fspath(logdir):
        return []
    check = EventFileCheck(logdir)
    found = check.problems()
    framed = {os.path.normpath(os.path.join(check.logdir, p.directory, p.file)) for p in found}
    for path, offset in data_loss:
        if path not in framed:
            framed.add(path)
            size = os.path.getsize(path) if os.path.exists(path) else offset
            found.append(check._problem(os.path.dirname(path), os.path.basename(path), "bad_data", offset, size,
                                        f"corrupted record at byte {offset} (bad data checksum): the reader stops "
                                        f"reading this file there, its last {size - offset} bytes are not shown"))
    found = [p for p in found if directory is None or p.directory == directory]
    for p in found:
        warnings.warn(f"tb_bnstats: {p.message}", RuntimeWarning, stacklevel=3)
    return found
