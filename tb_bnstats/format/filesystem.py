"""The file system of a log directory.

A local path is the operating system's. A URL (``s3://bucket/run``,
``gs://...``, ``memory://...``, any protocol fsspec knows, chained ones such
as ``simplecache::s3://...`` included) goes through fsspec, with the
protocol's own package (``s3fs``, ``gcsfs``...) installed by the user; where
the process already imported TensorFlow (a Keras or TensorFlow 1 program)
and TensorFlow has a file system for the scheme (``gs://``), through
TensorFlow's ``tf.io.gfile``, as TensorFlow's own writers do.

The writer (:mod:`tb_bnstats.write.eventfile`) asks :func:`remote` for the
file system of a URL; :func:`check` says at construction what a URL needs
that is not installed; :func:`read_without_tensorflow` and
:func:`read_url_without_tensorflow` make TensorBoard's reader use its own
TensorFlow-free file systems (local files, any fsspec protocol) in a process
that did not import TensorFlow.
"""

import datetime
import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol

# The setup.py extra that installs what a scheme needs.
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL (``scheme://...``) rather than a local path."""
    return "://" in path


def protocols(url: str) -> list[str]:
    """The protocols of ``url``, outermost first (``["simplecache", "s3"]``
    for ``simplecache::s3://bucket/key``)."""
    return [part.split("://", 1)[0] if "://" in part else part for part in url.split("::")]


def _tensorflow_schemes() -> set[str]:
    """The schemes TensorFlow's file systems handle, when this process
    imported TensorFlow (never imported here); else none."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return set()
    try:
        return set(tf.io.gfile.get_registered_schemes())
    except Exception:  # noqa: BLE001 - a TensorFlow without the call (< 2.13), or half imported: fsspec then
        return set()


def _uses_tensorflow(url: str) -> bool:
    return "::" not in url and protocols(url)[0] in _tensorflow_schemes()


def _install_hint(scheme: str, package: str | None) -> str:
    if scheme in EXTRAS:
        return f"pip install 'tb_bnstats[{EXTRAS[scheme]}]'"
    return f"pip install fsspec {package}" if package else "pip install fsspec"


def check(url: str) -> None:
    """Checks that ``url``'s file system can be used in this process
    (imports its package; writes nothing). A local path passes.

    Args:
        url: a log directory.

    Raises:
        ImportError: fsspec or the package of one of the URL's protocols is
            not installed; the message names what to install
            (``s3:// needs s3fs: pip install 'tb_bnstats[s3]'``).
        ValueError: a protocol fsspec does not know.
    """
    if not is_url(url) or _uses_tensorflow(url):
        return
    scheme = protocols(url)[-1]
    try:
        import fsspec
    except ImportError:
        raise ImportError(f"tb_bnstats: log_dir {url} is a URL, read and written through fsspec, which is not "
                          f"installed: {_install_hint(scheme, None)}") from None
    registry = importlib.import_module("fsspec.registry")
    for protocol in protocols(url):
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError as exc:
            known = registry.known_implementations.get(protocol, {})
            package = getattr(exc.__cause__, "name", None) or known.get("class", "?").split(".")[0]
            raise ImportError(f"tb_bnstats: {protocol}:// needs {package}, which is not installed "
                              f"(log_dir {url}): {_install_hint(protocol, package)}") from None
        except ValueError:
            raise ValueError(f"tb_bnstats: log_dir {url}: fsspec knows no file system for {protocol}://; "
                             f"give a local path or a URL such as s3://bucket/run") from None


class Entry(NamedTuple):
    """A file in a directory: its base name and when it was last modified
    (seconds since the epoch; None: unknown)."""

    name: str
    mtime: float | None


class RemoteFileSystem(Protocol):
    """What the writer does with a URL's file system: objects are written
    whole (object stores cannot append)."""

    def makedirs(self, url: str) -> None:
        """Creates the directory ``url`` (and its parents) if the file system has directories."""

    def put(self, url: str, data: bytes) -> None:
        """Writes ``data`` as the whole content of the file ``url``."""

    def entries(self, url: str) -> Iterator[Entry]:
        """The files directly in the directory ``url`` (none if it does not exist)."""


class _Fsspec:
    """A URL's file system through fsspec."""

    def __init__(self, url: str) -> None:
        import fsspec

        self._fs, _ = fsspec.core.url_to_fs(url)

    def _path(self, url: str) -> Any:
        return self._fs._strip_protocol(url)

    def makedirs(self, url: str) -> None:
        self._fs.makedirs(self._path(url), exist_ok=True)

    def put(self, url: str, data: bytes) -> None:
        self._fs.pipe_file(self._path(url), data)

    def entries(self, url: str) -> Iterator[Entry]:
        try:
            listed = self._fs.ls(self._path(url), detail=False, refresh=True)
        except FileNotFoundError:
            return
        for path in listed:
            name = str(path).rstrip("/").rsplit("/", 1)[-1]
            try:
                modified = self._fs.modified(path)
            except (NotImplementedError, OSError):
                yield Entry(name, None)
                continue
            if isinstance(modified, datetime.datetime) and modified.tzinfo is None:
                modified = modified.replace(tzinfo=datetime.timezone.utc)  # fsspec's convention: UTC
            yield Entry(name, modified.timestamp() if isinstance(modified, datetime.datetime) else None)


class _TensorFlow:
    """A URL's file system through TensorFlow's ``tf.io.gfile``."""

    def __init__(self) -> None:
        self._gfile = sys.modules["tensorflow"].io.gfile

    def makedirs(self, url: str) -> None:
        self._gfile.makedirs(url)

    def put(self, url: str, data: bytes) -> None:
        with self._gfile.GFile(url, "wb") as f:
            f.write(data)

    def entries(self, url: str) -> Iterator[Entry]:
        if not self._gfile.isdir(url):
            return
        for name in self._gfile.listdir(url):
            name = name.rstrip("/")
            try:
                mtime = self._gfile.stat(f"{url.rstrip('/')}/{name}").mtime_nsec / 1e9
            except Exception:  # noqa: BLE001 - TensorFlow's errors are not OSErrors
                mtime = None
            yield Entry(name, mtime)


def remote(url: str) -> RemoteFileSystem:
    """The file system of the URL ``url``: TensorFlow's where this process
    imported TensorFlow and it handles the scheme, else fsspec's.

    Raises:
        ImportError, ValueError: see :func:`check`.
    """
    if _uses_tensorflow(url):
        return _TensorFlow()
    check(url)
    return _Fsspec(url)


def join(directory: str, name: str) -> str:
    """``directory/name`` for a local path or a URL (always ``/``)."""
    if is_url(directory):
        return f"{directory.rstrip('/')}/{name}"
    return os.path.join(directory, name)


def read_without_tensorflow() -> None:
    """Makes TensorBoard read event files with its own pure-Python reader
    and file systems instead of importing TensorFlow (seconds, and its
    start-up log lines; TensorFlow has no ``s3://``): TensorBoard picks its
    TensorFlow stub when the module ``tensorboard.compat.notf`` can be
    imported, the switch its own TensorFlow-free builds use. The stub reads
    local files, ``s3://`` through boto3 and any other fsspec protocol
    through fsspec. Call before TensorBoard is first asked for
    ``tensorboard.compat.tf``; a process that already imported TensorFlow
    keeps reading with it."""
    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def read_url_without_tensorflow(url: str) -> None:
    """:func:`read_without_tensorflow` for reading the URL ``url``, and, where
    it is ``s3://`` and s3fs is installed, TensorBoard's ``s3://`` through
    its fsspec file system rather than its boto3 one, which cannot list a
    bucket's root (``s3://bucket``) and takes its endpoint from
    ``S3_ENDPOINT`` only: the writer's file system, configured the same way.
    Nothing changes in a process that imported TensorFlow."""
    read_without_tensorflow()
    if "tensorflow" in sys.modules or protocols(url)[-1] not in ("s3", "s3a"):
        return
    if importlib.util.find_spec("s3fs") is None:
        return
    from tensorboard.compat.tensorflow_stub.io import gfile

    gfile.register_filesystem(protocols(url)[-1], gfile.FSSpecFileSystem())
