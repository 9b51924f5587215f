"""One way to combine two sets of findings about a run, :func:`merge`: the
first set, then what the second adds (a ``(code, severity)`` the first lacks).

It is used twice, the same way:

* the CLI, the tab's ``/findings`` and :func:`tb_bnstats.diagnose`
  (:func:`tb_bnstats.diagnosis.findings_of`): the findings the callback stored
  in the logs (``diagnosis/findings``, written at the end of the last
  ``fit``) first -- they are what the callback printed, and they hold what
  only the live model can show (BN004 measured on the model) -- then the
  findings computed now from the logged series (all of them for logs without
  a stored diagnosis: a custom loop, a run still training). So they agree
  about every run.
* the recorder at the end of a run: the findings of its logged series first,
  then the live-model checks.
"""

from typing import Any

from tb_bnstats.diagnosis.codes import CODES, SEVERITIES
from tb_bnstats.diagnosis.finding import Finding

STORED, COMPUTED = "stored", "computed"
UNEXPLAINED_GAP = "BN012"


def parse_stored(records: list[Any] | None) -> list[Finding] | None:
    """The well-formed findings of what the callback stored.

    Args:
        records: ``RunData.stored_findings`` (a list of dicts) or None.

    Returns:
        None when nothing was stored; else the findings whose code and
        severity are known and whose layers are names (damaged or foreign
        entries are left out).
    """
    if records is None:
        return None
    out: list[Finding] = []
    for d in records if isinstance(records, list) else []:
        if not isinstance(d, dict):
            continue
        try:
            f = Finding.from_dict(d)
        except (TypeError, ValueError, KeyError):
            continue
        if (f.code not in CODES or f.severity not in SEVERITIES or not isinstance(f.layers, list)
                or not all(isinstance(n, str) for n in f.layers)):
            continue
        f.message = str(f.message)
        f.messages = ({str(k): str(v) for k, v in f.messages.items() if k in f.layers}
                      if isinstance(f.messages, dict) else {})
        out.append(f)
    return out


def sort_key(finding: Finding) -> tuple[int, str]:
    """Errors first, then warnings, then info; by code within a severity."""
    return SEVERITIES.index(finding.severity), finding.code


def merge(first: list[Finding] | None, then: list[Finding] | None) -> list[tuple[Finding, bool]]:
    """``[(finding, from_first)]``: every finding of ``first``, then those of
    ``then`` whose ``(code, severity)`` none of ``first`` has; errors first.
    None counts as no findings. A train/inference gap "no BN statistic
    explains" (BN012) is left out when another warning or error of either
    set explains it (the live model's BN004, say)."""
    out = [(f, True) for f in first or []]
    have = {(f.code, f.severity) for f, _ in out}
    out += [(f, False) for f in then or [] if (f.code, f.severity) not in have]
    if any(f.code != UNEXPLAINED_GAP and f.severity != "info" for f, _ in out):
        out = [(f, stored) for f, stored in out if f.code != UNEXPLAINED_GAP]  # the gap is explained
    return sorted(out, key=lambda pair: sort_key(pair[0]))
