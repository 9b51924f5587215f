"""The diagnosis rules: one function per code, over one layer's logged series
(:class:`tb_bnstats.format.records.LayerData`, the quantities of
:mod:`tb_bnstats.quantities` as logged; nothing is re-derived from raw
moments).

A layer is first placed by its state; the first rule that claims the layer
decides what else is checked (a layer full of NaN says nothing else
reliable, one never updated has no convergence, and so on):

=====  ========  ========  ====================================================
code   scenario  severity  rule (per layer)
=====  ========  ========  ====================================================
BN007  --        error     NaN or Inf in a logged batch or moving moment
BN016  S14       warning   besides the above: a layer whose scale and offset
                           are not trained (``info.affine_frozen``) updated
                           its moving statistics; warning when they moved
                           "far" from where the run started (last
                           ``start_mean_gap/p50`` > 0.25 or
                           ``start_abs_log_var_ratio/p50`` > 0.25), info
                           otherwise
BN008  S3        error     at a fit's start the optimizer had taken steps (a
                           restored run) but the layer's moving statistics were
                           at their initializers' values (recorded by the
                           callback, ``run/train_begin``), and it updated since
BN010  S9        warning   a layer frozen on purpose (``info.frozen``) whose
                           statistics are far from the batches it sees (same
                           gap test as BN002); ``info`` when they are close.
                           Also a layer started from pretrained statistics
                           (``run/train_begin``), not yet converged, with the
                           batches far from its moving ones
BN002  S2        error     ``updates`` = 0 at every logged step (>= 5 steps) of
                           a layer meant to update (not frozen), while the
                           batch moments are far from the moving ones
                           (median ``mean_gap/p50`` > 0.25 or median
                           ``abs_log_var_ratio/p50`` > 0.25 over the last
                           steps); ``info`` when they happen to be close
BN003  S4        warning   momentum < 0.5: the average remembers < 2 batches
BN001  S1        error     final convergence ``1 - m**t`` < 0.95 and the batch
                           moments far from the moving ones (same gap test)
BN004  S5        warning   converged and signed ``log_var_ratio/mean`` > 0.3 on
                           median and at >= 80% of the converged steps (batches
                           wider than the average); from a live model, see
                           :func:`tb_bnstats.diagnosis.live.diagnose_model`
BN006  S7        warning   converged, and either median ``mean_gap/p50`` > 0.25
                           with the batch-mean deviation ``batch_mean -
                           moving_mean`` autocorrelated (detrended lag 1 >=
                           0.4), or batches in runs of alike ones: the smaller
                           of the detrended lag-1 autocorrelations of
                           ``mean_gap/p50`` and ``abs_log_var_ratio/p50`` >= 0.2
                           on the layer and in the median over the run's layers;
                           or, where the batch size is logged, median
                           ``mean_gap/p50`` > 0.25 and beyond 1.6x the sampling
                           floor (:func:`sampling_floor`), the variance gap not
                           one systematic shift: batches differ from each other
                           more than sampling can make them
BN005  S6        warning   converged, not BN006, and either median
                           ``mean_gap/p50`` > 0.25, or median
                           ``abs_log_var_ratio/p50`` > 0.35 that is not one
                           systematic shift (``|median log_var_ratio/mean|`` <
                           0.8 of it); where the batch size is logged
                           (``info.batch_samples``), the gap must also be
                           within 1.6x of what sampling noise of that many
                           examples gives (:func:`sampling_floor`)
BN009  S8        warning   with a probe batch of held-out data (``probe_data=``,
                           not the default probe's training samples):
                           converged, the training gaps small (not "far"), and
                           the probe batch's moments far from the moving ones
                           (median ``probe_mean_gap/p50`` > 0.3 or median
                           ``probe_abs_log_var_ratio/p50`` > 0.4)
BN011  S10       warning   besides the above: the model's graph calls the layer
                           (or a model around it) with ``training=False``
                           (``info.graph_training_false``), yet it updated
                           (``updates`` > 0): ``fit`` overrode the ``False``
BN012  --        warning   per run, when no other warning or error: at the last
                           probe, every layer converged, training-mode accuracy
                           above inference-mode accuracy on the same batch by 3
                           points and by 3 standard errors of the probe's
                           sampling noise (:func:`accuracy_gap_noise`); named
                           are the BN layers whose output differs by >= 25%
                           between the modes (``probe_output_drift``), none
                           when the gap comes from other layers
BN013  S11       warning   besides the above, on several replicas
                           (``info.replicas`` > 1), not synchronized: median
                           ``replica_mean_gap/p50`` > 0.25 or
                           ``replica_abs_log_var_ratio/p50`` > 0.35 (S6's test
                           on each replica's moments against the global batch)
BN014  S12       warning   several replicas, not synchronized, converged:
                           median ``replica_var_deficit/mean`` > 0.1 and median
                           ``log_var_ratio/mean`` > 0.1 (the moving variance
                           below the global batch's); BN004 is left to it when
                           the deficit is at least half of the shift, and
                           BN005 is left out with BN013 or BN014
BN015  S13       warning   replicas with their own moving statistics
                           (``info.moving_per_replica``): median
                           ``rank_moving_spread/p50`` > 0.15 or
                           ``rank_moving_var_ratio/max`` > 1.5; an error when
                           some replica's are not finite at the last step
                           while replica 0's are (an empty slice of a last
                           partial batch)
=====  ========  ========  ====================================================

S3 (BN008) needs the callback's record of each fit's start
(``run/train_begin``); logs written by hand have it only if they call
``Writer.train_begin``. S8 needs a probe batch of eval data: without one, no
BN moments of eval data are logged. S5 (dropout before BN) does not show in
training logs of Keras models: the moving variance averages the
dropout-widened batch variances, so training sees no gap; the shift appears
only at inference, and :func:`tb_bnstats.diagnosis.live.diagnose_model`
measures it on the model itself.

Every rule returns ``[(code, severity, evidence, message)]``; a state rule
returns None when the layer is not in its state.
"""

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from tb_bnstats import quantities
from tb_bnstats.diagnosis import words
from tb_bnstats.diagnosis.codes import THRESHOLDS
from tb_bnstats.format.metadata import PROBE_FIRST_TRAINING_BATCH
from tb_bnstats.format.records import LayerData, RunData, Series

# One rule's hit: (code, severity, evidence, message); a run's hit names its layer first (None: the run).
Hit = tuple[str, str, dict[str, Any], str]
RunHit = tuple[str | None, str, str, dict[str, Any], str]


def median(values: npt.ArrayLike) -> float:
    """Median of the finite values (NaN when none)."""
    finite = np.asarray(values, np.float64)
    finite = finite[np.isfinite(finite)]
    return float(np.median(finite)) if finite.size else float("nan")


def _tail(values: np.ndarray) -> np.ndarray:
    """The last max(10, 10%) points: one noisy step is not a finding."""
    n = len(values)
    k = max(THRESHOLDS["tail_points"], int(math.ceil(THRESHOLDS["tail_fraction"] * n)))
    return values[-k:]


def _far(gap_mean: float, gap_log_var: float) -> bool:
    """Batch and moving moments "far apart" (:data:`THRESHOLDS` ``gap_*``)."""
    return gap_mean > THRESHOLDS["gap_mean"] or gap_log_var > THRESHOLDS["gap_log_var"]


def _fix(code: str, view: "LayerView") -> str:
    return words.fix(code, view.layer.info.framework, view.layer.info)


@dataclasses.dataclass
class LayerView:
    """What the rules read of one layer: its name, data, and the numbers most
    rules share (medians over the last steps, the base evidence)."""

    name: str
    layer: LayerData
    momentum: float | None
    updates: int
    gap_mean: float
    gap_log_var: float
    pretrained_at: int | None = None  # the fit start at which it started from pretrained statistics

    @property
    def far(self) -> bool:
        return _far(self.gap_mean, self.gap_log_var)

    @property
    def base(self) -> dict[str, Any]:
        s = self.layer.series
        return {"momentum": self.momentum, "updates": self.updates, "convergence": float(s["convergence"][-1]),
                "mean_gap_p50": self.gap_mean, "abs_log_var_ratio_p50": self.gap_log_var}

    @classmethod
    def of(cls, name: str, layer: LayerData, pretrained_at: int | None = None) -> "LayerView | None":
        """None for a layer without logged steps (nothing to diagnose)."""
        s = layer.series
        if len(layer.steps) == 0 or "updates" not in s:
            return None
        m = layer.info.momentum
        return cls(name, layer, None if m is None else float(m), int(s["updates"][-1]),
                   median(_tail(s["mean_gap/p50"])), median(_tail(s["abs_log_var_ratio/p50"])), pretrained_at)

    @property
    def shift(self) -> str:
        """The gap in words (median channel, last steps)."""
        return (f"{self.gap_mean:.2f} std from the means of the batches it sees and "
                f"{math.exp(self.gap_log_var):.2f}x off their variances")


# -- rules that decide a layer's state ----------------------------------------------


def non_finite_moments(view: LayerView, **_: object) -> list[Hit] | None:
    """BN007: NaN or Inf in a logged moment; every other number of the layer
    is unreliable then."""
    layer, s = view.layer, view.layer.series
    bad_steps = np.zeros(len(layer.steps), bool)
    for key in ("batch_mean", "batch_var", "moving_mean", "moving_var"):
        if key in s:
            bad_steps |= ~np.isfinite(s[key])
    if not bad_steps.any():
        return None
    first = int(layer.steps[np.argmax(bad_steps)])
    ev = {"first_bad_step": first, "bad_steps": int(bad_steps.sum()), "logged_steps": len(layer.steps)}
    return [("BN007", "error", ev,
             f"{view.name}: batch or moving moments are NaN/Inf from step {first} on "
             f"({int(bad_steps.sum())} of {len(layer.steps)} logged steps). {_fix('BN007', view)}.")]


def restored_at_initializer(view: LayerView, lost_at: int | None = None, **_: object) -> list[Hit] | None:
    """BN008 (S3): the run resumed at step ``lost_at`` with this layer's
    moving statistics at their initial values, and the layer updated since (a
    layer never updated is BN002's). The other numbers then describe an
    average restarted from scratch."""
    if lost_at is None:
        return None
    s, info = view.layer.series, view.layer.info
    after = view.layer.steps > lost_at
    updates = s["updates"][after]
    if updates.size == 0 or updates[-1] <= 0 or (updates.size > 1 and updates[-1] <= updates[0]):
        return None
    t = int(updates[-1])
    conv = float(s["convergence"][after][-1])
    ev = {"restored_at_step": int(lost_at), "updates_since_restore": t, "convergence": conv,
          "init_mean": float(info.init_mean), "init_var": float(info.init_var), "momentum": view.momentum}
    need = quantities.steps_to_converge(view.momentum, THRESHOLDS["converged"])
    if conv >= THRESHOLDS["converged"]:
        since = (f"They have been rebuilt from {t} batches since ({conv:.1%} converged), but evaluations and "
                 f"checkpoints between steps {lost_at} and {lost_at + need} used statistics that did not match "
                 f"the weights.")
    else:
        since = (f"Since then they average only {t} batches ({conv:.1%} converged; 95% needs {need}): inference "
                 f"normalizes with statistics that do not match the weights.")
    return [("BN008", "error", ev,
             f"{view.name}: the run resumed at step {lost_at} (the optimizer had taken {lost_at} steps) with this "
             f"layer's moving statistics at their initial values (mean {info.init_mean:g}, variance "
             f"{info.init_var:g}): they were not restored with the weights. {since} Fix: {_fix('BN008', view)}.")]


def never_updated(view: LayerView, recalibration: Mapping[str, float] | None = None,
                  **_: object) -> list[Hit] | None:
    """BN002 (S2): no update at any logged step of a layer meant to update.
    Error when the batches are far from the stale statistics, info when they
    still match. A layer frozen on purpose is :func:`frozen_statistics`'."""
    s, info = view.layer.series, view.layer.info
    # No update at any logged step: a count of 0 throughout, or, for a layer logged as not updating, a
    # count that never moved (a pretrained module kept in eval(): its num_batches_tracked was loaded).
    if not (np.all(s["updates"] == 0) or (not info.trainable and np.all(s["updates"] == s["updates"][0]))):
        return None
    steps = len(view.layer.steps)
    if steps < THRESHOLDS["not_updated_min_points"]:
        return []
    if info.frozen:
        return frozen_statistics(view, recalibration)
    why = words.not_updating(info)
    if view.far:
        return [("BN002", "error", view.base,
                 f"{view.name}: moving statistics were never updated in {steps} logged steps ({why}) while the "
                 f"batches it sees are {view.gap_mean:.2f} std from its moving mean and their variance is "
                 f"{math.exp(view.gap_log_var):.2f}x off: inference normalizes with stale values. "
                 f"Fix: {_fix('BN002', view)}.")]
    return [("BN002", "info", view.base,
             f"{view.name}: moving statistics are not updated ({why}), but they still match the batches it sees "
             f"(gap {view.gap_mean:.2f} std). Fine if frozen on purpose.")]


def frozen_statistics(view: LayerView, recalibration: Mapping[str, float] | None = None) -> list[Hit]:
    """BN010 (S9) of a layer frozen on purpose: not an error for not
    updating (that is what freezing does), but how far its statistics are
    from the batches it sees -- the domain shift between the data they were
    computed on and the new data. Info when close; when far, a warning if
    it matters: recalibrating the frozen layers gains accuracy on the probe
    (``recalibration``, :func:`frozen_recalibration_of`), or the shift is
    large (the measurement, if any, goes into the message)."""
    info = view.layer.info
    origin = "pretrained statistics" if view.pretrained_at is not None else "moving statistics"
    ev = {**view.base, "frozen": True, "pretrained": view.pretrained_at is not None}
    head = f"{view.name}: frozen on purpose ({words.frozen_how(info)}); its {origin} are {view.shift}"
    if not view.far:
        return [("BN010", "info", ev, f"{head}: they fit the new data.")]
    shift = ("the new data differ from the data those statistics were computed on (domain shift)"
             if view.pretrained_at is not None else "the batches differ from the statistics it normalizes with")
    large = (view.gap_mean > THRESHOLDS["frozen_shift_mean"]
             or view.gap_log_var > THRESHOLDS["frozen_shift_log_var"])
    if recalibration is None:
        if large:
            return [("BN010", "warning", ev, f"{head}: {shift}, by much; training and inference both normalize "
                                             f"with them. Fix: {_fix('BN010', view)}.")]
        return [("BN010", "info", ev, f"{head}: {shift}, a little (a probe batch, probe_data=, measures whether "
                                      f"it costs accuracy).")]
    before, after = recalibration["accuracy_inference_mode"], recalibration["accuracy_recalibrated"]
    ev.update(accuracy_inference_mode=before, accuracy_recalibrated=after)
    measured = (f"with the frozen layers recalibrated on the probe batch, inference-mode accuracy goes from "
                f"{before:.1%} to {after:.1%}")
    if after - before >= THRESHOLDS["frozen_accuracy_cost"]:
        return [("BN010", "warning", ev, f"{head}: {shift}, and it costs accuracy: {measured}. "
                                         f"Fix: {_fix('BN010', view)}.")]
    if large:
        return [("BN010", "warning", ev, f"{head}: {shift}, by much. The layers after it have adapted to these "
                                         f"statistics ({measured}), but they work on distorted features and will "
                                         f"see others once the statistics follow the new data (unfreezing). "
                                         f"Fix: {_fix('BN010', view)}.")]
    return [("BN010", "info", ev, f"{head}: {shift}, a little, and it costs no accuracy here ({measured}).")]


def pretrained_not_converged(view: LayerView, **_: object) -> list[Hit] | None:
    """BN010 (S9) of a layer fine-tuned from pretrained statistics: not
    "not converged" (the start values are an estimate, not a bias), unless
    the new batches are still far from an average that holds much of
    them. Nothing else is checked before it converges."""
    conv = float(view.layer.series["convergence"][-1])
    if view.pretrained_at is None or conv >= THRESHOLDS["converged"]:
        return None
    if not view.far:
        return []
    info = view.layer.info
    need = quantities.steps_to_converge(view.momentum, THRESHOLDS["converged"])
    ev = {**view.base, "frozen": False, "pretrained": True, "updates_for_95": need,
          "start_mean_gap_p50": float(view.layer.series.get("start_mean_gap/p50", [math.nan])[-1])}
    return [("BN010", "warning", ev,
             f"{view.name}: fine-tuned from pretrained statistics (step {view.pretrained_at}); after {view.updates} "
             f"updates at {words.momentum_text(view.momentum, info)} they still hold {1 - conv:.0%} of the "
             f"pretrained values ({need} updates leave 5%), and the moving statistics are {view.shift}: "
             f"inference normalizes with a mix of the old data's statistics and the new. Train longer, or "
             f"{words.recalibrate_text(info)} after fine-tuning.")]


def statistics_move_while_frozen(view: LayerView) -> list[Hit]:
    """BN016 (S14): the layer's scale and offset are not trained
    (``info.affine_frozen``: PyTorch's ``requires_grad=False``) but it ran
    in training mode and updated its moving statistics: "frozen" the way
    that leaves them following the new data's batches. How far they moved
    from where the run started (``start_*`` series, last step): a warning
    when far (:func:`_far`), info when close."""
    info, s = view.layer.info, view.layer.series
    if not info.affine_frozen or view.updates <= 0 or "start_mean_gap/p50" not in s:
        return []
    moved_mean = float(s["start_mean_gap/p50"][-1])
    moved_lv = float(s.get("start_abs_log_var_ratio/p50", np.full(1, np.nan))[-1])
    ev = {**view.base, "affine_frozen": True, "start_mean_gap_p50": moved_mean,
          "start_abs_log_var_ratio_p50": moved_lv, "pretrained": view.pretrained_at is not None}
    origin = "the pretrained values" if view.pretrained_at is not None else "where the run started"
    head = (f"{view.name}: {words.affine_frozen(info)}; it updated its moving statistics {view.updates} "
            f"times, and they moved {moved_mean:.2f} std from {origin} on the median channel and "
            f"{math.exp(moved_lv):.2f}x in variance")
    if not _far(moved_mean, moved_lv):
        return [("BN016", "info", ev, f"{head}: little so far. Fix, if they were meant to stay: "
                                      f"{_fix('BN016', view)}.")]
    return [("BN016", "warning", ev, f"{head}: inference now normalizes with the new batches' statistics, not "
                                     f"the ones the frozen weights were trained with. Fix: {_fix('BN016', view)}.")]


def overridden_training_false(view: LayerView) -> list[Hit]:
    """BN011 (S10): written with ``training=False`` in the model's graph,
    yet updated: Keras' ``fit`` passes ``training=True`` down through a
    functional model and overrides it (keras-team/keras#20285)."""
    info = view.layer.info
    if not info.graph_training_false or view.updates <= 0:
        return []
    return [("BN011", "warning", {**view.base, "graph_training_false": True},
             f"{view.name}: the model calls it (or the model around it) with training=False, yet it ran in "
             f"training mode and updated its moving statistics {view.updates} times: fit's training=True "
             f"overrides a training=False written when a functional model was built (Keras 3, "
             f"keras-team/keras#20285). Fix: {_fix('BN011', view)}.")]


def momentum_near_zero(view: LayerView, **_: object) -> list[Hit] | None:
    """BN003 (S4): momentum below ``low_momentum``: the "moving" statistics
    are essentially the last batch."""
    if view.momentum is None or view.momentum >= THRESHOLDS["low_momentum"]:
        return None
    window = quantities.effective_window(view.momentum)
    return [("BN003", "warning", {**view.base, "effective_window": window},
             f"{view.name}: {words.momentum_text(view.momentum, view.layer.info)} averages over {window:.2f} batches: "
             f"the moving statistics "
             f"are essentially the last batch (gap {view.gap_mean:.3f} std in training looks perfect, inference "
             f"depends on which batch came last). Fix: {_fix('BN003', view)}.")]


def not_converged(view: LayerView, **_: object) -> list[Hit] | None:
    """BN001 (S1): convergence below ``converged`` with the batches far from
    the moving statistics; a layer still warming up is checked for nothing
    else."""
    conv = float(view.layer.series["convergence"][-1])
    if conv >= THRESHOLDS["converged"]:
        return None
    if not view.far:
        return []
    m, t, fraction, info = view.momentum, view.updates, THRESHOLDS["converged"], view.layer.info
    need = quantities.steps_to_converge(m, fraction)
    suggested = words.momentum_setting(quantities.suggested_momentum(t, fraction), info)
    return [("BN001", "error", {**view.base, "updates_for_95": need},
             f"{view.name}: moving statistics are {conv:.0%} converged after {t} updates at "
             f"{words.momentum_text(m, info)}; 95% needs {need}. Batch means are {view.gap_mean:.2f} std from the "
             f"moving mean, variances {math.exp(view.gap_log_var):.2f}x apart. Use {suggested} for runs "
             f"this short, or {words.recalibrate_text(info)} after training.")]


STATE_RULES: tuple[Callable[..., list[Hit] | None], ...] = (
    non_finite_moments, restored_at_initializer, never_updated, momentum_near_zero, pretrained_not_converged,
    not_converged)


# -- rules on the converged part -------------------------------------------------------


@dataclasses.dataclass
class Converged:
    """The converged steps of a layer and the numbers the converged rules share."""

    mask: np.ndarray
    signed_log_var: np.ndarray  # log_var_ratio/mean at the converged steps
    evidence: dict[str, Any]

    @classmethod
    def of(cls, view: LayerView) -> "Converged | None":
        """None with fewer than ``converged_min_points`` converged steps."""
        s = view.layer.series
        mask = s["convergence"] >= THRESHOLDS["converged"]
        if mask.sum() < THRESHOLDS["converged_min_points"]:
            return None
        slv = s["log_var_ratio/mean"][mask]
        drift_ac = quantities.detrended_autocorrelation((s["batch_mean"] - s["moving_mean"])[mask],
                                                        int(THRESHOLDS["block_window"]))
        ev = {**view.base, "mean_gap_p50": median(s["mean_gap/p50"][mask]),
              "abs_log_var_ratio_p50": median(s["abs_log_var_ratio/p50"][mask]), "log_var_ratio_mean": median(slv),
              "drift_autocorrelation": drift_ac, "block_autocorrelation": block_score(view.layer),
              "converged_steps": int(mask.sum())}
        return cls(mask, slv, ev)


def variance_shift(view: LayerView, conv: Converged, **_: object) -> list[Hit]:
    """BN004 (S5) from the logs: batches persistently wider than the
    converged moving variance."""
    ev, shift = conv.evidence, THRESHOLDS["variance_shift"]
    signed = ev["log_var_ratio_mean"]
    deficit = view.layer.series.get("replica_var_deficit/mean")
    if deficit is not None and median(deficit[conv.mask]) >= signed / 2:
        return []  # most of it is the spread between replicas unsynchronized BN misses: BN014
    if not (signed > shift and np.mean(conv.signed_log_var > shift / 2) >= THRESHOLDS["variance_shift_fraction"]):
        return []
    return [("BN004", "warning", ev,
             f"{view.name}: batches are persistently wider than the moving variance (median log ratio "
             f"{signed:+.2f}, {math.exp(signed):.2f}x) although the average has converged. "
             f"Fix: {_fix('BN004', view)}.")]


def drifting_batches(view: LayerView, conv: Converged, run_in_blocks: bool = False, **_: object) -> list[Hit]:
    """BN006 (S7): batch means that wander in runs of alike batches, or gaps
    that come in blocks as in most layers of the run (sorted data)."""
    ev = conv.evidence
    g, drift_ac = ev["mean_gap_p50"], ev["drift_autocorrelation"]
    autocorrelated = np.isfinite(drift_ac) and drift_ac >= THRESHOLDS["drift_autocorrelation"]
    wandering = g > THRESHOLDS["noise_mean"] and autocorrelated
    in_blocks = run_in_blocks and ev["block_autocorrelation"] >= THRESHOLDS["block_autocorrelation"]
    floor = sampling_floor(view, conv)
    beyond = floor is not None and g > THRESHOLDS["noise_mean"] and g > THRESHOLDS["noise_explained"] * floor[0] \
        and not _systematic_variance(ev, floor)
    if not (wandering or in_blocks or beyond):
        return []
    floor_mean = floor[0] if floor is not None else float("nan")
    if beyond and not wandering:
        ev = {**ev, "sampling_floor_mean_gap": floor_mean, "batch_samples": int(view.layer.info.batch_samples)}
    why = (f"batch means wander {g:.2f} std from the moving mean in runs of similar batches (detrended "
           f"step-to-step autocorrelation {drift_ac:.2f}; shuffled batches give -0.14)" if wandering else
           f"batch means sit {g:.2f} std from the converged moving mean on the median channel, "
           f"{g / floor_mean:.1f}x what sampling {view.layer.info.batch_samples} examples gives ({floor_mean:.2f}), "
           f"and not as one systematic shift: the batches differ from each other more than independent draws "
           f"of the data can" if beyond else
           f"with the slow trend taken out, its batch mean and variance stay off the moving ones for several "
           f"steps in a row, as in most layers of the run (detrended autocorrelation "
           f"{ev['block_autocorrelation']:.2f}; independent batches give -0.14)")
    return [("BN006", "warning", ev,
             f"{view.name}: {why}: consecutive batches are alike (unshuffled or sorted data), so the moving "
             f"statistics describe the last batches, not the data. Fix: {_fix('BN006', view)}.")]


def _systematic_variance(ev: Mapping[str, Any], floor: tuple[float, float]) -> bool:
    """Whether the variance gap is one systematic shift beyond sampling noise
    (the signed channel mean carries ``systematic_fraction`` of it): an
    average lagging a variance that keeps falling or rising, not batches
    that differ from each other."""
    alv, signed = ev["abs_log_var_ratio_p50"], ev["log_var_ratio_mean"]
    return alv > THRESHOLDS["noise_explained"] * floor[1] and abs(signed) >= THRESHOLDS["systematic_fraction"] * alv


def sampling_floor(view: LayerView, conv: Converged) -> tuple[float, float] | None:
    """The median gaps sampling noise alone gives a converged layer whose
    batches hold ``info.batch_samples`` examples (N): ``(mean gap, |log var
    ratio|)``, :data:`THRESHOLDS` ``noise_explained``'s reasoning; None when
    the batch size is not logged.

        mean gap      0.674 sqrt(2 / ((2 - p) N)) sqrt(var / (var + eps))
        log var gap   0.674 sqrt(2 / (N - 1)) sqrt(2 / (2 - p))

    with ``p = 1 - momentum`` (0 for a cumulative average) and ``var`` the
    median channel-mean batch variance over the converged steps."""
    info, s = view.layer.info, view.layer.series
    n = int(info.batch_samples)
    if n < 2:
        return None
    p = 0.0 if view.momentum is None else 1.0 - view.momentum
    var = median(s["batch_var"][conv.mask]) if "batch_var" in s else float("nan")
    shrink = math.sqrt(var / (var + info.epsilon)) if np.isfinite(var) and var > 0 else 1.0
    return (0.674 * math.sqrt(2.0 / ((2.0 - p) * n)) * shrink,
            0.674 * math.sqrt(2.0 / (n - 1)) * math.sqrt(2.0 / (2.0 - p)))


def noisy_batches(view: LayerView, conv: Converged, **_: object) -> list[Hit]:
    """BN005 (S6): batch moments far from the converged average step after
    step, not as one systematic shift, and (batch size logged) no larger
    than sampling noise explains (:func:`sampling_floor`): too few samples
    per channel."""
    ev = conv.evidence
    g, alv, signed = ev["mean_gap_p50"], ev["abs_log_var_ratio_p50"], ev["log_var_ratio_mean"]
    floor = sampling_floor(view, conv)
    k = THRESHOLDS["noise_explained"]
    noisy_mean = g > THRESHOLDS["noise_mean"] and (floor is None or g <= k * floor[0])
    noisy_var = (alv > THRESHOLDS["noise_log_var"] and abs(signed) < THRESHOLDS["systematic_fraction"] * alv
                 and (floor is None or alv <= k * floor[1]))
    if not (noisy_mean or noisy_var):
        return []
    if floor is not None:
        ev = {**ev, "sampling_floor_mean_gap": floor[0], "sampling_floor_abs_log_var_ratio": floor[1],
              "batch_samples": int(view.layer.info.batch_samples)}
    return [("BN005", "warning", ev,
             f"{view.name}: batch moments are noisy: on the median channel the batch mean is {g:.2f} std from "
             f"the moving mean and the variance {math.exp(alv):.2f}x off, step after step (too few samples per "
             f"channel{_floor_text(floor, view)}). Fix: {_fix('BN005', view)}.")]


def _floor_text(floor: tuple[float, float] | None, view: LayerView) -> str:
    if floor is None:
        return ""
    return (f": sampling {view.layer.info.batch_samples} examples alone gives about {floor[0]:.2f} std and "
            f"{math.exp(floor[1]):.2f}x")


def probe_shift(name: str, layer: LayerData, probe_is_training_data: bool = False) -> list[Hit]:
    """BN009 (S8) from the probe series: the probe batch's moments far from
    converged moving statistics that fit the training batches; never when
    the probe batch is training data (:func:`probe_is_training_data`)."""
    s = layer.series
    if probe_is_training_data or "probe_mean_gap/p50" not in s or "convergence" not in s or len(layer.steps) == 0:
        return []
    converged = s["convergence"] >= THRESHOLDS["converged"]
    probed = converged & np.isfinite(s["probe_mean_gap/p50"])
    if not probed.any():
        return []
    probe_gap = median(_tail(s["probe_mean_gap/p50"][probed]))
    probe_lv = median(_tail(s.get("probe_abs_log_var_ratio/p50", np.full(len(layer.steps), np.nan))[probed]))
    train_gap = median(_tail(s["mean_gap/p50"][converged]))
    train_lv = median(_tail(s["abs_log_var_ratio/p50"][converged]))
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
             f"than the training data. Fix: {words.fix('BN009', layer.info.framework)}.")]


def block_score(layer: LayerData) -> float:
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
    w = int(THRESHOLDS["block_window"])
    return float(np.minimum(quantities.detrended_autocorrelation(s["mean_gap/p50"][converged], w),
                            quantities.detrended_autocorrelation(s["abs_log_var_ratio/p50"][converged], w)))


def lost_on_restore(run_data: RunData) -> dict[str, int]:
    """``{layer: step}``: the last fit start (callback record
    ``run/train_begin``) at which a trainable layer's moving statistics were
    at their initial values although the optimizer had already taken
    ``step`` > 0 steps."""
    lost: dict[str, int] = {}
    for record in getattr(run_data, "train_begins", None) or []:
        if record.get("step", 0) > 0:
            for name in record.get("moving_at_initializer") or []:
                lost[name] = int(record["step"])
    return lost


# The run metrics (``RunData.metrics`` keys) the rules read.
METRICS_READ = ("probe_train/accuracy", "probe_inference/accuracy", "probe_recalibrated/accuracy",
                "probe_train/samples")


def _at_step(steps: npt.ArrayLike, values: np.ndarray, step: int) -> float | None:
    """The last value of ``values`` logged at ``step`` (``steps`` aligned
    with it), or None when none was."""
    at = np.flatnonzero(np.asarray(steps) == step)
    return float(values[at[-1]]) if at.size else None


def probe_is_training_data(train_begins: Sequence[Mapping[str, Any]] | None) -> bool:
    """Whether the last fit's probe batch was the first training batch (the
    callback's default, ``run/train_begin`` "probe"), not held-out data:
    then the probe says nothing about eval data (no BN009)."""
    records = train_begins or []
    return bool(records) and records[-1].get("probe") == PROBE_FIRST_TRAINING_BATCH


def accuracy_gap_noise(acc_train: float, acc_inference: float, samples: float | None) -> float:
    """The standard error sampling gives the difference of two accuracies
    measured on ``samples`` probe examples (:data:`THRESHOLDS`
    ``accuracy_gap_noise``): ``sqrt(2 p (1 - p) / n)`` with ``p`` their mean
    (``probe_samples_unknown`` examples when the log does not say)."""
    n = float(samples) if samples else THRESHOLDS["probe_samples_unknown"]
    p = min(max((acc_train + acc_inference) / 2.0, 0.0), 1.0)
    return math.sqrt(2.0 * p * (1.0 - p) / max(n, 1.0))


def unexplained_gap(run_data: RunData) -> list[RunHit]:
    """BN012: at the last probe, training-mode accuracy at least
    ``unexplained_accuracy_gap`` above inference-mode accuracy on the same
    batch and ``accuracy_gap_noise`` standard errors of the probe's sampling
    noise (:func:`accuracy_gap_noise`), every BN layer's moving averages
    converged by then. Raised from
    the logs alone;
    :func:`tb_bnstats.diagnosis.merge.merge` drops it when another warning
    or error explains the gap.

    Returns:
        ``[(layer, code, severity, evidence, message)]`` for each BN layer
        whose output differs between the modes by ``mode_drift`` or more at
        that probe (``probe_output_drift``: those layers make the gap, their
        moving statistics do not fit); one hit with layer None (about the
        run) when no layer does: the gap comes from elsewhere. ``[]``: no gap.
    """
    metrics: Mapping[str, Series] = getattr(run_data, "metrics", None) or {}
    train, inference = metrics.get("probe_train/accuracy"), metrics.get("probe_inference/accuracy")
    if train is None or inference is None or not len(inference[0]):
        return []
    step = int(inference[0][-1])
    acc_train, acc_inference = _at_step(*train, step), float(inference[1][-1])
    if acc_train is None:
        return []
    samples = metrics.get("probe_train/samples")
    n = _at_step(*samples, step) if samples is not None else None
    noise = accuracy_gap_noise(acc_train, acc_inference, n)
    if not acc_train - acc_inference >= max(THRESHOLDS["unexplained_accuracy_gap"],
                                            THRESHOLDS["accuracy_gap_noise"] * noise):
        return []
    convergence = [_at_step(layer.steps, layer.series["convergence"], step) for layer in run_data.layers.values()
                   if "convergence" in layer.series]
    if any(c is not None and c < THRESHOLDS["converged"] for c in convergence):
        return []  # the moving averages had not caught up yet at that probe: that explains it (BN001 if it lasts)
    source = "the first training samples" if probe_is_training_data(run_data.train_begins) else "the probe batch"
    gap = (f"on {source}, inference-mode accuracy is {acc_inference:.1%} against {acc_train:.1%} in training "
           f"mode at step {step} ({100 * (acc_train - acc_inference):.1f} points)")
    ev = {"step": step, "accuracy_training_mode": acc_train, "accuracy_inference_mode": acc_inference,
          "probe_samples": int(n or THRESHOLDS["probe_samples_unknown"]), "accuracy_gap_noise": noise}
    hits: list[RunHit] = []
    for name, layer in sorted(run_data.layers.items(), key=lambda kv: (kv[1].info.depth, kv[0])):
        series = layer.series.get("probe_output_drift")
        drift = _at_step(layer.steps, series, step) if series is not None else None
        if drift is not None and drift >= THRESHOLDS["mode_drift"]:
            hits.append((name, "BN012", "warning", {**ev, "output_drift": drift},
                         f"{name}: {gap}; this layer's output differs by {drift:.0%} between the modes: its moving "
                         f"statistics do not fit the batch, although each gap is below the other findings' "
                         f"thresholds. Fix: {words.fix('BN012', layer.info.framework)}."))
    if hits:
        return hits
    return [(None, "BN012", "warning", ev,
             f"{gap}, and no BN layer's output differs by {THRESHOLDS['mode_drift']:.0%} between the modes: the "
             f"gap comes from other layers. Look at what else behaves differently in training and inference "
             f"(Dropout, GaussianNoise, custom layers with a training argument, BN layers left out by layers=); "
             f"pass held-out data as probe_data= to compare with eval data.")]


def frozen_recalibration_of(run_data: RunData) -> dict[str, float] | None:
    """The probe's inference-mode accuracy as it is and with the frozen
    layers recalibrated on it (metric splits ``probe_inference`` and
    ``probe_recalibrated`` at the last step of the latter), or None when
    not measured."""
    metrics: Mapping[str, Series] = getattr(run_data, "metrics", None) or {}
    recalibrated, as_is = metrics.get("probe_recalibrated/accuracy"), metrics.get("probe_inference/accuracy")
    if recalibrated is None or as_is is None or not len(recalibrated[0]):
        return None
    step = recalibrated[0][-1]
    accuracy_inference_mode = _at_step(*as_is, step)
    if accuracy_inference_mode is None:
        return None
    return {"step": int(step), "accuracy_inference_mode": accuracy_inference_mode,
            "accuracy_recalibrated": float(recalibrated[1][-1])}


def pretrained_starts(train_begins: Iterable[Mapping[str, Any]] | None) -> dict[str, int]:
    """``{layer: step}``: the last fit start (callback records
    ``run/train_begin``, ``RunData.train_begins``) at which the layer
    started from pretrained statistics (not its initializers' values, no
    update counted)."""
    starts: dict[str, int] = {}
    for record in train_begins or []:
        for name in record.get("pretrained") or []:
            starts[name] = int(record["step"])
    return starts


def replica_findings(view: LayerView) -> list[Hit]:
    """BN013-BN015 (S11-S13), on several replicas: small per-replica batches
    of unsynchronized BN, a moving variance biased low by them, replicas'
    own moving statistics apart. Median over the last logged steps."""
    info, s = view.layer.info, view.layer.series
    if info.replicas <= 1 or "replica_mean_gap/p50" not in s:
        return []
    at = lambda q: median(_tail(s[q])) if q in s else float("nan")  # noqa: E731
    r, n = info.replicas, at("replica_samples/min")
    ev = {**view.base, "replicas": r, "synchronized": info.synchronized, "samples_per_replica": n,
          "replica_mean_gap_p50": at("replica_mean_gap/p50"),
          "replica_abs_log_var_ratio_p50": at("replica_abs_log_var_ratio/p50"),
          "replica_var_deficit": at("replica_var_deficit/mean"), "log_var_ratio_mean": at("log_var_ratio/mean")}
    out: list[Hit] = []
    if not info.synchronized:
        g, alv = ev["replica_mean_gap_p50"], ev["replica_abs_log_var_ratio_p50"]
        if g > THRESHOLDS["noise_mean"] or alv > THRESHOLDS["noise_log_var"]:
            out.append(("BN013", "warning", ev,
                        f"{view.name}: each of the {r} replicas normalizes with the moments of its own slice of the "
                        f"batch ({n:.0f} values per channel): on the median channel a replica's mean is {g:.2f} "
                        f"std from the global batch's and its variance {math.exp(alv):.2f}x off (BN is not "
                        f"synchronized). Fix: {_fix('BN013', view)}."))
        deficit, signed = ev["replica_var_deficit"], ev["log_var_ratio_mean"]
        converged = s["convergence"][-1] >= THRESHOLDS["converged"]
        if converged and deficit > THRESHOLDS["replica_var_deficit"] and signed > THRESHOLDS["replica_var_deficit"]:
            out.append(("BN014", "warning", ev,
                        f"{view.name}: the moving variance averages the {r} replicas' own batch variances, which "
                        f"miss the spread between replicas: the global batch's variance is {math.exp(deficit):.2f}x "
                        f"the replicas' mean and {math.exp(signed):.2f}x the moving variance, so inference "
                        f"normalizes with too small a variance. Fix: {_fix('BN014', view)}."))
    spread, ratio = at("rank_moving_spread/p50"), at("rank_moving_var_ratio/max")
    last_spread = s.get("rank_moving_spread/p50", np.zeros(1))[-1]
    if info.moving_per_replica and not np.isfinite(last_spread) and np.isfinite(s["moving_mean"][-1]):
        ev = {**ev, "samples_per_replica_min": float(np.nanmin(s["replica_samples/min"]))}
        out.append(("BN015", "error", ev,
                    f"{view.name}: at the last step some of the {r} replicas' own moving statistics are NaN or Inf "
                    f"while replica 0's are finite: a replica got an empty slice (a last batch smaller than the "
                    f"number of replicas: {ev['samples_per_replica_min']:.0f} values per channel on the smallest) "
                    f"and averaged NaN moments. Fix: drop the last partial batch (Dataset.batch(..., "
                    f"drop_remainder=True), or a dataset size divisible by the global batch), then "
                    f"{_fix('BN015', view)}."))
    elif info.moving_per_replica and (spread > THRESHOLDS["replica_moving_spread"]
                                    or ratio > THRESHOLDS["replica_moving_var_ratio"]):
        ev = {**ev, "rank_moving_spread_p50": spread, "rank_moving_var_ratio_max": ratio}
        out.append(("BN015", "warning", ev,
                    f"{view.name}: the {r} replicas keep moving statistics of their own and they differ: moving "
                    f"means {spread:.2f} std apart on the median channel, variances up to {ratio:.2f}x apart; each "
                    f"replica would evaluate differently, and a checkpoint holds replica 0's. Fix: "
                    f"{_fix('BN015', view)}."))
    return out


def layer_findings(name: str, layer: LayerData, lost_at: int | None = None, run_in_blocks: bool = False,
                   pretrained_at: int | None = None, recalibration: Mapping[str, float] | None = None) -> list[Hit]:
    """``[(code, severity, evidence, message)]`` for one layer.

    Args:
        name: the layer's name.
        layer: its :class:`tb_bnstats.format.records.LayerData`.
        lost_at: the step of a restore that found its moving statistics at
            their initial values (:func:`lost_on_restore`).
        run_in_blocks: most layers of the run see batches in runs of alike
            ones (median :func:`block_score` over the run's layers).
        pretrained_at: the step of the fit start at which it started from
            pretrained statistics (:func:`pretrained_starts`).
        recalibration: the run's :func:`frozen_recalibration_of`.
    """
    view = LayerView.of(name, layer, pretrained_at)
    if view is None:
        return []
    replicas = replica_findings(view)
    rest = _state_or_converged_findings(view, lost_at, run_in_blocks, recalibration)
    if any(code in ("BN013", "BN014") for code, *_ in replicas):
        # Unsynchronized replicas explain batches off the moving statistics better than noise of the
        # global batch: the moving statistics average per-replica moments (or rank 0's alone).
        rest = [hit for hit in rest if hit[0] != "BN005"]
    return overridden_training_false(view) + statistics_move_while_frozen(view) + replicas + rest


def _state_or_converged_findings(view: LayerView, lost_at: int | None, run_in_blocks: bool,
                                 recalibration: Mapping[str, float] | None) -> list[Hit]:
    for rule in STATE_RULES:
        hits = rule(view, lost_at=lost_at, recalibration=recalibration)
        if hits is not None:
            return hits
    conv = Converged.of(view)
    if conv is None:
        return []
    drift = drifting_batches(view, conv, run_in_blocks=run_in_blocks)
    return variance_shift(view, conv) + (drift or noisy_batches(view, conv))
