"""Findings: what is wrong with a run's BatchNormalization statistics, in
plain words, with the evidence and the fix (DESIGN.md §4).

``diagnose(logdir)`` reads what :func:`tb_bnstats.load` returns -- the logged
quantities of :mod:`tb_bnstats.quantities` -- and never re-derives them from
raw moments. It imports neither TensorFlow nor Keras.

Codes (stable; see :data:`CODES` for the fix of each, :data:`THRESHOLDS` for
the numbers and why):

=====  ========  ========  ====================================================
code   scenario  severity  rule (per layer)
=====  ========  ========  ====================================================
BN001  S1        error     final convergence ``1 - m**t`` < 0.95 and, over the
                           last steps, the batch moments far from the moving
                           ones (median ``mean_gap/p50`` > 0.25 or median
                           ``abs_log_var_ratio/p50`` > 0.25)
BN002  S2        error     ``updates`` = 0 at every logged step (>= 5 steps)
                           while the batch moments are far from the moving ones
                           (same gap test); ``info`` when they happen to be close
BN003  S4        warning   momentum < 0.5: the average remembers < 2 batches
BN004  S5        warning   converged and signed ``log_var_ratio/mean`` > 0.3 on
                           median and at >= 80% of the converged steps (batches
                           wider than the average); from a live model, see
                           :func:`tb_bnstats.population.diagnose_model`
BN005  S6        warning   converged, not BN006, and either median
                           ``mean_gap/p50`` > 0.25 with uncorrelated steps, or
                           median ``abs_log_var_ratio/p50`` > 0.35 that is not
                           one systematic shift (``|median log_var_ratio/mean|``
                           < 0.8 of it)
BN006  S7        warning   converged, median ``mean_gap/p50`` > 0.25 and the
                           batch-mean deviation ``batch_mean - moving_mean``
                           autocorrelated (lag 1 >= 0.4)
BN007  --        error     NaN or Inf in a logged batch or moving moment
=====  ========  ========  ====================================================

Not diagnosed from logs yet: S3 (moving statistics lost on save/restore: the
logs hold no record of a restore) and S8 (train and eval data from different
distributions: no BN moments are logged during evaluation). S5 (dropout
before BN) does not show in training logs of Keras models: the moving
variance averages the dropout-widened batch variances, so training sees no
gap; the shift appears only at inference. BN004 from logs covers a moving
variance fed from something narrower than what the layer normalizes with;
:func:`tb_bnstats.population.diagnose_model` measures the dropout case on the
model itself (inference-mode against training-mode population variance).
"""

import dataclasses
import json
import math
from typing import Dict, List, Optional

import numpy as np

from tb_bnstats import metadata, quantities

SEVERITIES = ("error", "warning", "info")

# Every threshold of the rules, in one place, with its reasoning.
THRESHOLDS = {
    # 1 - m**t >= 0.95: less than 5% of the weight left on the initial (0, 1).
    "converged": 0.95,
    # Median over the last max(10, 10%) logged steps: one noisy step is not a finding.
    "tail_points": 10,
    "tail_fraction": 0.1,
    # "Far apart": the batch mean a quarter of a train-time std from the moving
    # mean on the median channel, or the variances 28% apart (|log| > 0.25).
    # Healthy runs (momentum 0.9, batch 32, converged) stay below 0.19 / 0.17
    # on the scenario suite; S1/S2 runs are at 0.19-0.58 / 0.32-0.36.
    "gap_mean": 0.25,
    "gap_log_var": 0.25,
    # S2: so many logged steps without one update is not a warm-up.
    "not_updated_min_points": 5,
    # S4: window 1/(1-m) < 2 batches: inference uses essentially the last batch.
    "low_momentum": 0.5,
    # Rules on the converged part need this many converged steps.
    "converged_min_points": 20,
    # S5: log((var_B+eps)/(var_R+eps)) > 0.3 is a ratio > 1.35; dropout 0.5
    # gives up to log 2 = 0.69. Persistent: at >= 80% of the converged steps
    # above half of it.
    "variance_shift": 0.3,
    "variance_shift_fraction": 0.8,
    # S6: per-channel sampling noise. With n values per channel the median
    # |mu_B - mu| / sigma_B is ~0.67/sqrt(n) and the median |log var_B/var|
    # ~0.67*sqrt(2/(n-1)): 0.25 / 0.35 are n below ~8. Measured: batch 32
    # dense <= 0.18 / 0.16, batch 4 dense 0.44 / 0.48-0.54. A systematic
    # shift (EMA lag of a variance that is still falling) is not noise: the
    # signed channel mean then carries most of it (|signed| >= 0.8 |abs|).
    "noise_mean": 0.25,
    "noise_log_var": 0.35,
    "systematic_fraction": 0.8,
    # S7: neighbouring batches alike (sorted data: runs of one class) give a
    # lag-1 autocorrelation of batch_mean - moving_mean well above 0;
    # independent (shuffled) batches give ~0. Measured: sorted digits 0.68,
    # batch-4 noise 0.01.
    "drift_autocorrelation": 0.4,
    # S5 on a live model (population.diagnose_model): training-mode vs
    # inference-mode population variance, log ratio > 0.3 (1.35x).
    "population_variance_shift": 0.3,
}

# code -> (scenario, default severity, title, fix)
CODES = {
    "BN001": ("S1", "error", "momentum too high for the number of steps",
              "lower the momentum (0.9 for runs of a few hundred steps), train longer, or call "
              "tb_bnstats.recalibrate(model, data) after training"),
    "BN002": ("S2", "error", "moving statistics never updated",
              "call the layer with training=None (let Keras pass the phase) or keep it trainable; if "
              "frozen on purpose, call tb_bnstats.recalibrate(model, data, include_frozen=True)"),
    "BN003": ("S4", "warning", "momentum near 0: the moving statistics are the last batch",
              "use momentum 0.9-0.99 (Keras' momentum is 1 - PyTorch's: PyTorch's 0.1 is Keras' 0.9)"),
    "BN004": ("S5", "warning", "variance shift: batches wider than what inference normalizes with",
              "move Dropout after the BN layers (or before the last layer only), or "
              "tb_bnstats.recalibrate(model, data) (other layers in inference mode)"),
    "BN005": ("S6", "warning", "noisy batch moments (tiny batches)",
              "use batches of 16+ samples per replica (or GroupNorm / BatchRenorm / synchronized BN), "
              "then tb_bnstats.recalibrate(model, data)"),
    "BN006": ("S7", "warning", "batch moments drift within an epoch (unshuffled or sorted data)",
              "shuffle the training data (fit(shuffle=True), Dataset.shuffle with a buffer larger than "
              "a class), then tb_bnstats.recalibrate(model, data)"),
    "BN007": ("-", "error", "NaN or Inf in the batch or moving moments",
              "find the first bad step (inputs, learning rate, float16 overflow); the moving statistics "
              "are NaN from then on: recalibrate or restore a checkpoint"),
}


@dataclasses.dataclass
class Finding:
    """One diagnosed problem of one run. ``evidence`` maps each layer to its
    numbers (``{"bn_3": {"convergence": 0.63, ...}}``)."""

    code: str
    severity: str
    scenario: str
    run: str
    layers: List[str]
    evidence: Dict[str, Dict[str, float]]
    message: str

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        return metadata.from_known_fields(cls, d)

    def __str__(self):
        return f"{self.severity.upper():7s} {self.code} [{self.scenario}] {self.run}: {self.message}"


def _num(x):
    x = float(x)
    return x if math.isfinite(x) else None


def _median(values):
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else float("nan")


def _tail(values):
    n = len(values)
    k = max(THRESHOLDS["tail_points"], int(math.ceil(THRESHOLDS["tail_fraction"] * n)))
    return values[-k:]


def _far(gap_mean, gap_log_var):
    return gap_mean > THRESHOLDS["gap_mean"] or gap_log_var > THRESHOLDS["gap_log_var"]


def _layer_findings(name, layer):
    """``[(code, severity, evidence, message)]`` for one layer."""
    s, info = layer.series, layer.info
    if len(layer.steps) == 0 or "updates" not in s:
        return []
    out = []
    bad_steps = np.zeros(len(layer.steps), bool)
    for key in ("batch_mean", "batch_var", "moving_mean", "moving_var"):
        if key in s:
            bad_steps |= ~np.isfinite(s[key])
    if bad_steps.any():
        first = int(layer.steps[np.argmax(bad_steps)])
        ev = {"first_bad_step": first, "bad_steps": int(bad_steps.sum()), "logged_steps": len(layer.steps)}
        out.append(("BN007", "error", ev,
                    f"{name}: batch or moving moments are NaN/Inf from step {first} on "
                    f"({int(bad_steps.sum())} of {len(layer.steps)} logged steps). {CODES['BN007'][3]}."))
        return out  # every other number of this layer is unreliable

    updates, conv = s["updates"], s["convergence"]
    m, t = float(info.momentum), int(updates[-1])
    gap_mean = _median(_tail(s["mean_gap/p50"]))
    gap_lv = _median(_tail(s["abs_log_var_ratio/p50"]))
    far = _far(gap_mean, gap_lv)
    base = {"momentum": m, "updates": t, "convergence": float(conv[-1]), "mean_gap_p50": gap_mean,
            "abs_log_var_ratio_p50": gap_lv}

    if np.all(updates == 0):
        if len(layer.steps) >= THRESHOLDS["not_updated_min_points"]:
            why = "trainable=False" if not info.trainable else "called with training=False during training"
            if far:
                out.append(("BN002", "error", base,
                            f"{name}: moving statistics were never updated in {len(layer.steps)} logged steps "
                            f"({why}) while the batches it sees are {gap_mean:.2f} std from its moving mean and "
                            f"their variance is {math.exp(gap_lv):.2f}x off: inference normalizes with stale "
                            f"values. Fix: {CODES['BN002'][3]}."))
            else:
                out.append(("BN002", "info", base,
                            f"{name}: moving statistics are not updated ({why}), but they still match the "
                            f"batches it sees (gap {gap_mean:.2f} std). Fine if frozen on purpose."))
        return out

    if m < THRESHOLDS["low_momentum"]:
        window = quantities.effective_window(m)
        out.append(("BN003", "warning", {**base, "effective_window": window},
                    f"{name}: momentum {m:g} averages over {window:.2f} batches: the moving statistics are "
                    f"essentially the last batch (gap {gap_mean:.3f} std in training looks perfect, inference "
                    f"depends on which batch came last). Fix: {CODES['BN003'][3]}."))
        return out

    if conv[-1] < THRESHOLDS["converged"]:
        if far:
            need = quantities.steps_to_converge(m)
            out.append(("BN001", "error", {**base, "updates_for_95": need},
                        f"{name}: moving statistics are {conv[-1]:.0%} converged after {t} updates at momentum "
                        f"{m:g}; 95% needs {need}. Batch means are {gap_mean:.2f} std from the moving mean, "
                        f"variances {math.exp(gap_lv):.2f}x apart. Use momentum "
                        f"{quantities.suggested_momentum(t):g} for runs this short, or call "
                        f"tb_bnstats.recalibrate(model, data)."))
        return out

    converged = conv >= THRESHOLDS["converged"]
    if converged.sum() < THRESHOLDS["converged_min_points"]:
        return out
    slv = s["log_var_ratio/mean"][converged]
    g = _median(s["mean_gap/p50"][converged])
    alv = _median(s["abs_log_var_ratio/p50"][converged])
    signed = _median(slv)
    drift_ac = quantities.lag1_autocorrelation((s["batch_mean"] - s["moving_mean"])[converged])
    ev = {**base, "mean_gap_p50": g, "abs_log_var_ratio_p50": alv, "log_var_ratio_mean": signed,
          "drift_autocorrelation": drift_ac, "converged_steps": int(converged.sum())}

    shift = THRESHOLDS["variance_shift"]
    if signed > shift and np.mean(slv > shift / 2) >= THRESHOLDS["variance_shift_fraction"]:
        out.append(("BN004", "warning", ev,
                    f"{name}: batches are persistently wider than the moving variance (median log ratio "
                    f"{signed:+.2f}, {math.exp(signed):.2f}x) although the average has converged. "
                    f"Fix: {CODES['BN004'][3]}."))
    autocorrelated = np.isfinite(drift_ac) and drift_ac >= THRESHOLDS["drift_autocorrelation"]
    if g > THRESHOLDS["noise_mean"] and autocorrelated:
        out.append(("BN006", "warning", ev,
                    f"{name}: batch means wander {g:.2f} std from the moving mean in runs of similar batches "
                    f"(step-to-step autocorrelation {drift_ac:.2f}; shuffled batches give ~0). "
                    f"Fix: {CODES['BN006'][3]}."))
    elif (g > THRESHOLDS["noise_mean"]
          or (alv > THRESHOLDS["noise_log_var"] and abs(signed) < THRESHOLDS["systematic_fraction"] * alv)):
        out.append(("BN005", "warning", ev,
                    f"{name}: batch moments are noisy: on the median channel the batch mean is {g:.2f} std from "
                    f"the moving mean and the variance {math.exp(alv):.2f}x off, step after step (too few "
                    f"samples per channel). Fix: {CODES['BN005'][3]}."))
    return out


def _message(code, items):
    """One message for a code over several layers: the first layer's, plus
    the other layers' names."""
    first = items[0][2]
    if len(items) == 1:
        return first
    others = [name for name, _, _ in items[1:]]
    return f"{first} Also: {', '.join(others)}."


def diagnose_run(run_name, run_data) -> List[Finding]:
    """Findings of one :class:`tb_bnstats.reader.RunData`, one per code and
    severity, naming every layer concerned (layers in depth order)."""
    grouped = {}
    layers = sorted(run_data.layers.items(), key=lambda kv: (kv[1].info.depth, kv[0]))
    for name, layer in layers:
        for code, severity, evidence, message in _layer_findings(name, layer):
            ev = {k: (_num(v) if isinstance(v, float) else v) for k, v in evidence.items()}
            grouped.setdefault((code, severity), []).append((name, ev, message))
    findings = []
    for (code, severity), items in grouped.items():
        findings.append(Finding(code=code, severity=severity, scenario=CODES[code][0], run=run_name,
                                layers=[name for name, _, _ in items], evidence={name: ev for name, ev, _ in items},
                                message=_message(code, items)))
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (order[f.severity], f.code))


def diagnose(logdir_or_runs, run: Optional[str] = None) -> List[Finding]:
    """Findings of every run under ``logdir`` (or of ``run``), errors first.

    ``logdir_or_runs`` is a log directory or what :func:`tb_bnstats.load`
    returned. Example::

        for finding in tb_bnstats.diagnose("logs"):
            print(finding)
    """
    if isinstance(logdir_or_runs, dict):
        runs = logdir_or_runs if run is None else {run: logdir_or_runs[run]}
    else:
        from tb_bnstats import reader

        runs = reader.load(logdir_or_runs, run=run)
    out = []
    for name in sorted(runs):
        out.extend(diagnose_run(name, runs[name]))
    return out


def to_json(findings) -> str:
    return json.dumps([f.to_dict() for f in findings], indent=2, sort_keys=True)


def summary_lines(findings, limit=10):
    """Short human-readable lines (the callback prints these)."""
    if not findings:
        return ["no BatchNormalization problem found"]
    lines = [str(f) for f in findings[:limit]]
    if len(findings) > limit:
        lines.append(f"... and {len(findings) - limit} more (tb-bnstats diagnose LOGDIR)")
    return lines
