"""``tb-bnstats``: the command line.

    tb-bnstats diagnose LOGDIR [--run RUN] [--json] [--fail-on error|warning|never]

prints the findings of :func:`tb_bnstats.diagnose` for each run under
``LOGDIR`` (a run's own directory, or a directory above runs) and exits

* 1 when a finding printed is at or above ``--fail-on`` (default: error), so
  that it can gate CI;
* 0 otherwise;
* 2 when there is nothing to diagnose: a usage error, a path that does not
  exist or is a file, a directory without event files, event files without
  bn_stats data (the callback or monitor never wrote there), or a ``--run``
  that names no run.

Runs are named by :mod:`tb_bnstats.format.names` (the log directory itself by
its own name), so ``tb-bnstats diagnose logs/run1`` and ``tb-bnstats
diagnose logs --run run1`` print the same lines.

Standard output holds only the CLI's own lines (or, with ``--json``, one JSON
document): event files, local or at a URL, are read with TensorBoard's own reader, without
TensorFlow, and anything a library prints while reading goes to standard
error. A directory that cannot be read at all exits 2 with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from tb_bnstats.format.filesystem import read_without_tensorflow

if TYPE_CHECKING:
    from tb_bnstats.diagnosis.finding import Finding
    from tb_bnstats.format.records import RunData

EXIT_CLEAN, EXIT_FOUND, EXIT_NOTHING_TO_DIAGNOSE = 0, 1, 2
FAIL_LEVELS = {"error": ("error",), "warning": ("error", "warning"), "never": ()}


class NothingToDiagnose(Exception):
    """The path given holds no run to diagnose; the message says why."""


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Sends whatever is written to standard output (by Python or by native
    code, on file descriptor 1) to standard error while it is open."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (an embedding host): Python's writes only
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def load_runs(logdir: str, run: str | None) -> dict[str, RunData]:
    """The runs under ``logdir`` (or just ``run``), as :func:`tb_bnstats.load`.

    Raises:
        NothingToDiagnose: ``logdir`` is missing, a file, holds no event
            files or no bn_stats data, or ``run`` names no run.
    """
    from tb_bnstats.read import reader

    remote = "://" in logdir
    if not remote:
        if not os.path.exists(logdir):
            raise NothingToDiagnose(f"no such directory: {logdir}")
        if not os.path.isdir(logdir):
            raise NothingToDiagnose(f"{logdir} is a file; give the run's directory (the log_dir it was written to) "
                                    f"or a directory above it")
        if not any("tfevents" in name for _, _, files in os.walk(logdir) for name in files):
            raise NothingToDiagnose(f"no event files under {logdir}: nothing was logged there")
    try:
        runs = reader.load(logdir, run=run)
    except KeyError as exc:
        raise NothingToDiagnose(exc.args[0]) from None
    if not runs:
        raise NothingToDiagnose(f"no bn_stats data under {logdir}: its event files were not written by "
                                f"tb_bnstats (add BNStatsCallback or BNStatsMonitor with this log_dir)")
    return runs


def report_lines(findings_by_run: dict[str, list[Finding]]) -> list[str]:
    """The text the CLI prints: per run (in name order) its finding count
    and, per finding, severity, code, scenario, layers and message."""
    lines = []
    for name in sorted(findings_by_run):
        mine = findings_by_run[name]
        lines.append(f"{name}: {len(mine)} finding(s)" if mine else f"{name}: no BatchNormalization problem found")
        for f in mine:
            lines.append(f"  {f.severity.upper():7s} {f.code} [{f.scenario}] layers: {', '.join(f.layers)}")
            lines.append(f"          {f.message}")
    return lines


def diagnose(logdir: str, run: str | None, as_json: bool, fail_on: str) -> int:
    """``tb-bnstats diagnose``: prints the findings; returns the exit code
    (module docstring), computed from exactly the findings printed."""
    from tb_bnstats import diagnosis

    try:
        with stdout_to_stderr():
            runs = load_runs(logdir, run)
            findings_by_run = {name: [f for f, _ in diagnosis.findings_of(name, runs[name])] for name in sorted(runs)}
    except NothingToDiagnose as exc:
        print(f"tb-bnstats: {exc}", file=sys.stderr)
        return EXIT_NOTHING_TO_DIAGNOSE
    except Exception as exc:  # noqa: BLE001 - an unreadable directory is nothing diagnosed, never "found"
        print(f"tb-bnstats: reading {logdir} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_NOTHING_TO_DIAGNOSE
    printed = [f for name in sorted(findings_by_run) for f in findings_by_run[name]]
    if as_json:
        print(diagnosis.to_json(printed))
    else:
        print("\n".join(report_lines(findings_by_run)))
    return EXIT_FOUND if any(f.severity in FAIL_LEVELS[fail_on] for f in printed) else EXIT_CLEAN


def main(argv: Sequence[str] | None = None, without_tensorflow: bool = False) -> int:
    """Runs ``tb-bnstats`` with ``argv`` (default: the process's).

    Args:
        argv: the arguments after the program's name.
        without_tensorflow: read event files without importing TensorFlow
            (:func:`tb_bnstats.format.filesystem.read_without_tensorflow`:
            local files, and URLs through TensorBoard's own file systems,
            boto3 for ``s3://`` and fsspec for the others), for the rest of
            the process: what the ``tb-bnstats`` command does. A process that
            imported TensorFlow reads with it.

    Returns:
        The exit code (module docstring).
    """
    parser = argparse.ArgumentParser(prog="tb-bnstats", description="BatchNormalization statistics tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("diagnose", help="print what is wrong with the BN statistics of logged runs",
                       description="Prints the findings of each run under LOGDIR. Exit status: 1 when a finding "
                                   "is at or above --fail-on, 0 when none is, 2 when there is nothing to diagnose.")
    p.add_argument("logdir", help="a run's log directory, or a directory above runs (local, or a URL such as "
                                  "s3://bucket/logs)")
    p.add_argument("--run", help="only this run, named as the CLI prints it (the log directory itself: its own name)")
    p.add_argument("--json", action="store_true", help="print the findings as a JSON list (nothing else on stdout)")
    p.add_argument("--fail-on", choices=tuple(FAIL_LEVELS), default="error",
                   help="exit 1 when a finding of this severity or worse exists (default: error)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on a usage error, 0 on --help
        return int(exc.code or 0)
    if without_tensorflow:
        read_without_tensorflow()
    if args.command == "diagnose":
        return diagnose(args.logdir, args.run, args.json, args.fail_on)
    return EXIT_NOTHING_TO_DIAGNOSE


def console_main() -> int:
    """The ``tb-bnstats`` command (and ``python -m tb_bnstats.cli``): :func:`main`
    on the process's arguments, reading event files without TensorFlow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return main(without_tensorflow=True)


if __name__ == "__main__":
    sys.exit(console_main())
