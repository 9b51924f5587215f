"""How a run is named: one rule for the writer's stored findings and printed
hint, the reader, :func:`tb_bnstats.diagnose`, the CLI and the tab.

A run is the directory its event files are in. It is named by that
directory's path relative to the log directory it was read from, with ``/``
between parts, as TensorBoard names it (``logs`` holding ``a/b/events...`` gives
``a/b``); the log directory itself, which TensorBoard calls ``.``, is named by
its own name (``logs/momentum`` read directly gives ``momentum``). So the run
written by ``BNStatsCallback(log_dir="logs/momentum")`` is ``momentum`` read
from ``logs`` or from ``logs/momentum``, relative or absolute, with or
without a trailing slash.
"""

import os
import posixpath
import shlex
from collections.abc import Iterable

# TensorBoard's name for events written directly into the log directory.
LOGDIR_ITSELF = "."


def own_name(log_dir: str | os.PathLike[str]) -> str:
    """A directory's own name: its last path part, after normalizing.

    Args:
        log_dir: a local path (relative, absolute, trailing slash or not) or a
            URL such as ``s3://bucket/runs/run1``.

    Returns:
        ``"run1"`` for all of ``run1``, ``./run1/``, ``/abs/run1`` and
        ``s3://bucket/runs/run1/``; the bucket for ``s3://bucket``;
        :data:`LOGDIR_ITSELF` when the path has no name (``/``).
    """
    text = os.fspath(log_dir)
    if "://" in text:
        scheme_less = text.split("://", 1)[1]
        name = posixpath.basename(posixpath.normpath(scheme_less.rstrip("/") or "/"))
    else:
        name = os.path.basename(os.path.abspath(text))
    return name or LOGDIR_ITSELF


def run_name(relative: str, log_dir: str | os.PathLike[str], taken: frozenset[str] = frozenset()) -> str:
    """The name of the run in directory ``relative`` of ``log_dir``.

    Args:
        relative: the run directory's path relative to ``log_dir`` as
            TensorBoard gives it (``"a/b"``; ``"."`` for ``log_dir`` itself).
        log_dir: the log directory the run was read from.
        taken: the other runs' names; the log directory itself keeps
            TensorBoard's ``"."`` when its own name is one of them (a run
            ``logs/logs`` beside events in ``logs``).

    Returns:
        ``relative`` with ``/`` separators, or :func:`own_name` of ``log_dir``
        for the log directory itself.
    """
    if relative not in (LOGDIR_ITSELF, ""):
        return relative.replace(os.sep, "/")
    name = own_name(log_dir)
    return LOGDIR_ITSELF if name in taken else name


def run_names(relatives: Iterable[str], log_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Every run's name at once: :func:`run_name` of each directory in
    ``relatives`` (relative to ``log_dir``, ``"."`` for ``log_dir`` itself),
    the others as ``taken``. The reader and the integrity check name runs
    through this, over every directory holding event files, so they agree.
    """
    given = list(relatives)
    others = frozenset(r.replace(os.sep, "/") for r in given if r not in (LOGDIR_ITSELF, ""))
    return {r: run_name(r, log_dir, others) for r in given}


def diagnose_command(log_dir: str | os.PathLike[str]) -> str:
    """The command that prints a run's findings, as the end-of-training hint
    gives it: ``tb-bnstats diagnose <log_dir>``, the path quoted for a POSIX
    shell when it needs to be (spaces, quotes)."""
    return f"tb-bnstats diagnose {shlex.quote(os.fspath(log_dir))}"
