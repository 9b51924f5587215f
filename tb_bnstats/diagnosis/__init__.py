"""Findings: what is wrong with a run's BatchNormalization statistics, in
plain words, with the evidence and the fix.

* :mod:`~tb_bnstats.diagnosis.codes`: scenarios, codes, severities, thresholds;
* :mod:`~tb_bnstats.diagnosis.rules`: one function per code, over the logged
  series of one layer;
* :mod:`~tb_bnstats.diagnosis.merge`: stored and computed findings, combined
  one way for the CLI, the tab and :func:`diagnose`;
* :mod:`~tb_bnstats.diagnosis.live`: checks that need the model itself
  (imports the model measurements; not imported here).

This package reads what :func:`tb_bnstats.load` returns and imports neither
TensorFlow nor Keras.
"""

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tb_bnstats.diagnosis import merge as merging
from tb_bnstats.diagnosis import rules
from tb_bnstats.diagnosis.codes import CODES, SCENARIOS, SEVERITIES, THRESHOLDS, Code
from tb_bnstats.diagnosis.finding import Finding
from tb_bnstats.format.records import RunData

__all__ = ["CODES", "SCENARIOS", "SEVERITIES", "THRESHOLDS", "Code", "Finding", "diagnose", "diagnose_run",
           "findings_of", "group", "summary_lines", "to_json"]


def _num(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


# A finding over many layers names this many besides the first in its message (the rest are counted).
ALSO_NAMED = 5


def _message(items: Sequence[tuple[str | None, dict[str, Any], str]]) -> str:
    """One message for a code over several layers: the first layer's, plus
    the other layers' names -- the first :data:`ALSO_NAMED` of them and how
    many more (``Finding.layers`` lists them all)."""
    first = items[0][2]
    others = [name for name, _, _ in items[1:] if name is not None]
    if not others:
        return first
    more = f" and {len(others) - ALSO_NAMED} more ({len(others) + 1} layers)" if len(others) > ALSO_NAMED else ""
    return f"{first} Also: {', '.join(others[:ALSO_NAMED])}{more}."


def group(run_name: str, hits: Iterable[tuple[str | None, str, str, Mapping[str, Any], str]]) -> list[Finding]:
    """Findings from per-layer rule hits, one per code and severity naming
    every layer concerned (in the order given), each layer's own message
    kept, errors first.

    Args:
        run_name: the run the findings are about.
        hits: ``[(layer, code, severity, evidence, message)]``; layer None:
            a finding about the run as a whole (evidence under "run").
    """
    grouped: dict[tuple[str, str], list[tuple[str | None, dict[str, Any], str]]] = {}
    for name, code, severity, evidence, message in hits:
        ev = {k: (_num(v) if isinstance(v, float) else v) for k, v in evidence.items()}
        grouped.setdefault((code, severity), []).append((name, ev, message))
    findings = [Finding(code=code, severity=severity, scenario=CODES[code].scenario, run=run_name,
                        layers=[name for name, _, _ in items if name is not None],
                        evidence={(name if name is not None else "run"): ev for name, ev, _ in items},
                        message=_message(items),
                        messages={name: message for name, _, message in items if name is not None})
                for (code, severity), items in grouped.items()]
    return sorted(findings, key=merging.sort_key)


def diagnose_run(run_name: str, run_data: RunData) -> list[Finding]:
    """Findings of one run's logged series.

    Args:
        run_name: the run's name.
        run_data: its :class:`tb_bnstats.format.records.RunData`.

    Returns:
        One finding per code and severity, naming every layer concerned
        (layers in depth order), errors first.
    """
    lost, pretrained = rules.lost_on_restore(run_data), rules.pretrained_starts(run_data.train_begins)
    recalibration = rules.frozen_recalibration_of(run_data)
    in_blocks = rules.median([rules.block_score(layer) for layer in run_data.layers.values()]) >= \
        THRESHOLDS["block_autocorrelation"]
    training_probe = rules.probe_is_training_data(run_data.train_begins)
    hits: list[rules.RunHit] = []
    for name, layer in sorted(run_data.layers.items(), key=lambda kv: (kv[1].info.depth, kv[0])):
        for hit in (rules.layer_findings(name, layer, lost.get(name), in_blocks, pretrained.get(name), recalibration)
                    + rules.probe_shift(name, layer, training_probe)):
            hits.append((name, *hit))
    return group(run_name, hits + rules.unexplained_gap(run_data))


def findings_of(run_name: str, run_data: RunData, computed: list[Finding] | None = None) -> list[tuple[Finding, str]]:
    """``[(finding, source)]`` of one run, ``source`` being ``"stored"`` or
    ``"computed"``: the findings the callback stored, then those computed now
    that they lack (:func:`tb_bnstats.diagnosis.merge.merge`).

    Args:
        run_name, run_data: the run.
        computed: :func:`diagnose_run` of it, when already at hand.
    """
    if computed is None:
        computed = diagnose_run(run_name, run_data)
    stored = merging.parse_stored(run_data.stored_findings)
    for f in stored or []:
        # The writer named the run after its log_dir; the name it is read under is the one shown
        # (tb_bnstats.format.names), so a run read from its own directory or its parent says the same.
        f.run = run_name
    pairs = merging.merge(stored, computed)
    return [(f, merging.STORED if stored else merging.COMPUTED) for f, stored in pairs]


def diagnose(logdir_or_runs: str | os.PathLike[str] | dict[str, RunData], run: str | None = None) -> list[Finding]:
    """Findings of every run under ``logdir`` (or of ``run``), errors first.

    Args:
        logdir_or_runs: a log directory, or what :func:`tb_bnstats.load`
            returned.
        run: only this run.

    Returns:
        The findings of each run in name order (:func:`findings_of`: the
        tab's ``/findings`` gives the same).

    Raises:
        KeyError: ``run`` has no bn_stats data.

    Example::

        for finding in tb_bnstats.diagnose("logs"):
            print(finding)
    """
    if isinstance(logdir_or_runs, dict):
        runs = logdir_or_runs if run is None else {run: logdir_or_runs[run]}
    else:
        from tb_bnstats.read import reader

        runs = reader.load(logdir_or_runs, run=run)
    return [f for name in sorted(runs) for f, _ in findings_of(name, runs[name])]


def to_json(findings: Iterable[Finding]) -> str:
    """The findings as a JSON list (the CLI's ``--json``)."""
    return json.dumps([f.to_dict() for f in findings], indent=2, sort_keys=True)


def summary_lines(findings: Sequence[Finding], limit: int = 10,
                  command: str = "tb-bnstats diagnose LOGDIR") -> list[str]:
    """Short human-readable lines (the callback prints these): the first
    ``limit`` findings, then how many more and ``command``, which lists them
    all (:func:`tb_bnstats.format.names.diagnose_command`)."""
    if not findings:
        return ["no BatchNormalization problem found"]
    lines = [str(f) for f in findings[:limit]]
    if len(findings) > limit:
        lines.append(f"... and {len(findings) - limit} more ({command})")
    return lines
