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
BN006  S7        warning   converged, and either median ``mean_gap/p50`` > 0.25
                           with the batch-mean deviation ``batch_mean -
                           moving_mean`` autocorrelated (detrended lag 1 >=
                           0.4), or
                           batches in runs of alike ones: the smaller of the
                           detrended lag-1 autocorrelations of ``mean_gap/p50``
                           and ``abs_log_var_ratio/p50`` >= 0.2 on the layer
                           and in the median over the run's layers
BN007  --        error     NaN or Inf in a logged batch or moving moment
BN008  S3        error     at a fit's start the optimizer had taken steps (a
                           restored run) but the layer's moving statistics were
                           at their initializers' values (recorded by the
                           callback, ``run/train_begin``), and it updated since
BN009  S8        warning   with a probe batch (``BNStatsCallback(probe_data=)``):
                           converged, the training gaps small (not "far"), and
                           the probe batch's moments far from the moving ones
                           (median ``probe_mean_gap/p50`` > 0.3 or median
                           ``probe_abs_log_var_ratio/p50`` > 0.4)
=====  ========  ========  ====================================================

S3 (BN008) needs the callback's record of each fit's start
(``run/train_begin``): it compares the moving statistics with the
initializers' values when the optimizer has already taken steps; logs
written by hand (:class:`tb_bnstats.summary.Writer`) have it only if they call
``Writer.train_begin``.
S8 (train and eval data from different
distributions) needs a probe batch of eval data
(``BNStatsCallback(probe_data=...)``): without one, no BN moments of eval
data are logged. S5 (dropout
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
    # lag-1 autocorrelation of batch_mean - moving_mean well above 0, also
    # once a slow trend is taken out (detrended over block_window steps:
    # learning moves the batch means too, smoothly); independent (shuffled)
    # batches give -0.14. Measured on layers with median mean_gap/p50 >
    # 0.15: sorted digits 0.50-0.53, healthy -0.33..0.11 (raw, not
    # detrended: up to 0.87 in early training), batch-4 noise -0.22. Known
    # limit: Adam at lr 1e-2 on the small conv net makes its dense BN's batch
    # means wander 0.3 std in short runs (0.60): flagged.
    "drift_autocorrelation": 0.4,
    # S7, the subtler form: with momentum 0.9 the average follows class-sorted
    # batches closely, so the gaps stay small (median mean_gap/p50 0.04-0.12
    # on the demo's unshuffled conv run) but come in runs: after each change
    # of class the mean and the variance gap both stay up for a few steps.
    # Detrended by a centered 9-step moving average (longer than the 4-6
    # batches of one class in sorted digits, shorter than learning trends),
    # the smaller of the two lag-1 autocorrelations is ~-0.14 for independent
    # batches. Measured, median over a run's layers: 27 healthy runs (dense
    # and conv, seeds 0-5, lr 3e-4..3e-2, batch 16-64, 1-4 epochs, early
    # training included) -0.37..-0.02, tiny batches -0.20/-0.13, the demo's
    # unshuffled run +0.33 (its layers 0.30-0.45). The signal is pooled over
    # layers (one layer alone reached 0.26 in a healthy run): sorted data
    # shift every layer's batches at once.
    "block_window": 9,
    "block_autocorrelation": 0.2,
    # S5 on a live model (population.diagnose_model): training-mode vs
    # inference-mode population variance, log ratio > 0.3 (1.35x).
    "population_variance_shift": 0.3,
    # S8 (BN009): the probe batch (held-out data, training-mode pass) against
    # the converged moving statistics, median over the converged probe points.
    # Same distribution: like a big training batch, at most 0.10 / 0.15
    # (healthy dense, probe of 256 held-out digits); eval data x*1.5+0.5:
    # 0.47-0.76 / 0.86-0.96 on the first layer (later layers in training mode
    # normalize the shift away: 0.02 / 0.07).
    "probe_shift_mean": 0.3,
    "probe_shift_log_var": 0.4,
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
    "BN008": ("S3", "error", "moving statistics lost on save/restore",
              "save and restore the non-trainable variables too: model.save / save_weights include them "
              "(load_weights restores them), with tf.train.Checkpoint track the model, not "
              "model.trainable_variables; or call tb_bnstats.recalibrate(model, data) after restoring"),
    "BN009": ("S8", "warning", "eval data differ from the training data (probe batch far from the moving statistics)",
              "check the eval pipeline's preprocessing and normalization against the training pipeline's "
              "(same scaling, same mean/std, same resizing); if the shift is real, recalibrate on data like "
              "the eval data: tb_bnstats.recalibrate(model, eval_like_data)"),
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


def _layer_findings(name, layer, lost_at=None, run_in_blocks=False):
    """``[(code, severity, evidence, message)]`` for one layer; ``lost_at``:
    the step of a restore that found its moving statistics at their initial
    values (:func:`_lost_on_restore`); ``run_in_blocks``: most layers of the
    run see batches in runs of alike ones (:func:`_block_score`)."""
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
    if lost_at is not None:
        lost = _restored_at_initializer(name, layer, lost_at)
        if lost:
            return lost  # the other numbers describe an average restarted from scratch

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
    drift_ac = quantities.detrended_autocorrelation((s["batch_mean"] - s["moving_mean"])[converged],
                                                    THRESHOLDS["block_window"])
    ev = {**base, "mean_gap_p50": g, "abs_log_var_ratio_p50": alv, "log_var_ratio_mean": signed,
          "drift_autocorrelation": drift_ac, "block_autocorrelation": _block_score(layer),
          "converged_steps": int(converged.sum())}

    shift = THRESHOLDS["variance_shift"]
    if signed > shift and np.mean(slv > shift / 2) >= THRESHOLDS["variance_shift_fraction"]:
        out.append(("BN004", "warning", ev,
                    f"{name}: batches are persistently wider than the moving variance (median log ratio "
                    f"{signed:+.2f}, {math.exp(signed):.2f}x) although the average has converged. "
                    f"Fix: {CODES['BN004'][3]}."))
    autocorrelated = np.isfinite(drift_ac) and drift_ac >= THRESHOLDS["drift_autocorrelation"]
    wandering = g > THRESHOLDS["noise_mean"] and autocorrelated
    in_blocks = run_in_blocks and ev["block_autocorrelation"] >= THRESHOLDS["block_autocorrelation"]
    if wandering or in_blocks:
        why = (f"batch means wander {g:.2f} std from the moving mean in runs of similar batches (detrended "
               f"step-to-step autocorrelation {drift_ac:.2f}; shuffled batches give -0.14)" if wandering else
               f"with the slow trend taken out, its batch mean and variance stay off the moving ones for several "
               f"steps in a row, as in most layers of the run (detrended autocorrelation "
               f"{ev['block_autocorrelation']:.2f}; independent batches give -0.14)")
        out.append(("BN006", "warning", ev,
                    f"{name}: {why}: consecutive batches are alike (unshuffled or sorted data), so the moving "
                    f"statistics describe the last batches, not the data. Fix: {CODES['BN006'][3]}."))
    elif (g > THRESHOLDS["noise_mean"]
          or (alv > THRESHOLDS["noise_log_var"] and abs(signed) < THRESHOLDS["systematic_fraction"] * alv)):
        out.append(("BN005", "warning", ev,
                    f"{name}: batch moments are noisy: on the median channel the batch mean is {g:.2f} std from "
                    f"the moving mean and the variance {math.exp(alv):.2f}x off, step after step (too few "
                    f"samples per channel). Fix: {CODES['BN005'][3]}."))
    return out


def _probe_findings(name, layer):
    """BN009 (S8) from the probe series: the probe batch's moments far from
    converged moving statistics that fit the training batches."""
    s = layer.series
    if "probe_mean_gap/p50" not in s or "convergence" not in s or len(layer.steps) == 0:
        return []
    converged = s["convergence"] >= THRESHOLDS["converged"]
    probed = converged & np.isfinite(s["probe_mean_gap/p50"])
    if not probed.any():
        return []
    probe_gap = _median(_tail(s["probe_mean_gap/p50"][probed]))
    probe_lv = _median(_tail(s.get("probe_abs_log_var_ratio/p50", np.full(len(layer.steps), np.nan))[probed]))
    train_gap = _median(_tail(s["mean_gap/p50"][converged]))
    train_lv = _median(_tail(s["abs_log_var_ratio/p50"][converged]))
    shifted = probe_gap > THRESHOLDS["probe_shift_mean"] or probe_lv > THRESHOLDS["probe_shift_log_var"]
    if not shifted or _far(train_gap, train_lv):
        return []
    ev = {"probe_mean_gap_p50": probe_gap, "probe_abs_log_var_ratio_p50": probe_lv, "mean_gap_p50": train_gap,
          "abs_log_var_ratio_p50": train_lv, "probe_points": int(probed.sum()),
          "convergence": float(s["convergence"][-1])}
    return [("BN009", "warning", ev,
             f"{name}: the probe batch's means are {probe_gap:.2f} std from the converged moving means and its "
             f"variances {math.exp(probe_lv):.2f}x off, while training batches are {train_gap:.2f} std / "
             f"{math.exp(train_lv):.2f}x from them: the probe (eval) data come from a different distribution "
             f"than the training data. Fix: {CODES['BN009'][3]}.")]


def _block_score(layer):
    """The smaller of the detrended lag-1 autocorrelations
    (:func:`quantities.detrended_autocorrelation`) of ``mean_gap/p50`` and
    ``abs_log_var_ratio/p50`` over the converged steps: sorted data keep both
    up for several steps after each change of class. NaN with fewer than
    ``converged_min_points`` converged steps."""
    s = layer.series
    if len(layer.steps) == 0 or "convergence" not in s or "abs_log_var_ratio/p50" not in s:
        return float("nan")
    converged = s["convergence"] >= THRESHOLDS["converged"]
    if converged.sum() < THRESHOLDS["converged_min_points"]:
        return float("nan")
    w = THRESHOLDS["block_window"]
    return float(np.minimum(quantities.detrended_autocorrelation(s["mean_gap/p50"][converged], w),
                            quantities.detrended_autocorrelation(s["abs_log_var_ratio/p50"][converged], w)))


def _lost_on_restore(run_data):
    """``{layer: step}``: the last fit start (callback record
    :data:`metadata.TRAIN_BEGIN_TAG`) at which a trainable layer's moving
    statistics were at their initial values although the optimizer had
    already taken ``step`` > 0 steps."""
    lost = {}
    for record in getattr(run_data, "train_begins", None) or []:
        if record.get("step", 0) > 0:
            for name in record.get("moving_at_initializer") or []:
                lost[name] = int(record["step"])
    return lost


def _restored_at_initializer(name, layer, step):
    """BN008 (S3) when the layer updated its statistics after the restore at
    ``step`` (a layer never updated is BN002's)."""
    s, info = layer.series, layer.info
    after = layer.steps > step
    updates = s["updates"][after]
    if updates.size == 0 or updates[-1] <= 0 or (updates.size > 1 and updates[-1] <= updates[0]):
        return []
    t = int(updates[-1])
    conv = float(s["convergence"][after][-1])
    ev = {"restored_at_step": int(step), "updates_since_restore": t, "convergence": conv,
          "init_mean": float(info.init_mean), "init_var": float(info.init_var), "momentum": float(info.momentum)}
    need = quantities.steps_to_converge(float(info.momentum))
    if conv >= THRESHOLDS["converged"]:
        since = (f"They have been rebuilt from {t} batches since ({conv:.1%} converged), but evaluations and "
                 f"checkpoints between steps {step} and {step + need} used statistics that did not match the "
                 f"weights.")
    else:
        since = (f"Since then they average only {t} batches ({conv:.1%} converged; 95% needs {need}): inference "
                 f"normalizes with statistics that do not match the weights.")
    return [("BN008", "error", ev,
             f"{name}: the run resumed at step {step} (the optimizer had taken {step} steps) with this layer's "
             f"moving statistics at their initial values (mean {info.init_mean:g}, variance {info.init_var:g}): "
             f"they were not restored with the weights. {since} Fix: {CODES['BN008'][3]}.")]


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
    lost = _lost_on_restore(run_data)
    in_blocks = _median([_block_score(layer) for layer in run_data.layers.values()]) >= THRESHOLDS["block_autocorrelation"]
    layers = sorted(run_data.layers.items(), key=lambda kv: (kv[1].info.depth, kv[0]))
    for name, layer in layers:
        for code, severity, evidence, message in (_layer_findings(name, layer, lost.get(name), in_blocks)
                                                  + _probe_findings(name, layer)):
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
        out.extend(with_stored(diagnose_run(name, runs[name]), runs[name].stored_findings))
    return out


def with_stored(computed, stored):
    """``computed`` plus the findings the callback stored at the end of its
    last fit (``RunData.stored_findings``) for codes the logs cannot give --
    BN004 measured on the live model -- errors first."""
    have = {(f.code, f.severity) for f in computed}
    extra = []
    for d in stored or []:
        try:
            f = Finding.from_dict(d)
        except (TypeError, ValueError, AttributeError):  # not a finding: a damaged or foreign record
            continue
        if (f.code, f.severity) not in have and f.code in CODES and f.severity in SEVERITIES:
            extra.append(f)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(computed + extra, key=lambda f: (order[f.severity], f.code))


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
