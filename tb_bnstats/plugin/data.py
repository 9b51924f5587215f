"""Pure helpers of the plugin's routes: downsampling that keeps spikes, the
heat-map binning, the "TensorBoard sampled this series" signal, overview
badges and CSV encoding. numpy only; no TensorBoard, no TensorFlow.
"""

import csv
import io
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from tb_bnstats import quantities
from tb_bnstats.diagnosis import words
from tb_bnstats.diagnosis.codes import THRESHOLDS
from tb_bnstats.diagnosis.finding import Finding
from tb_bnstats.format.metadata import LayerInfo
from tb_bnstats.format.records import Series

# Points per tag that TensorBoard keeps unless told otherwise: the data server
# keeps 1000 per SCALAR tag and 100 per TENSOR tag; the Python loader
# (--load_fast=false) keeps 10 per tag for a third-party plugin.
KNOWN_SAMPLING_CAPS = (10, 100, 1000)
# TensorBoard 2.21 parses --samples_per_plugin values as integers: "bn_stats=all"
# is rejected at start-up ("invalid _parse_samples_per_plugin value"); 0 keeps all.
LIFT_SAMPLING_HINT = "--samples_per_plugin=bn_stats=0"


# -- downsampling ------------------------------------------------------------

def minmax_downsample(steps: npt.ArrayLike, values: npt.ArrayLike, points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``points`` points of a series, keeping its spikes.

    The step range is cut into ``points // 2`` buckets of equal width; in each
    bucket the lowest and the highest point are kept (in step order), so a
    one-step spike survives any reduction. The first and last points are always
    kept. NaN values are ignored when picking extremes; a bucket holding only
    NaN keeps one NaN point (a gap in the drawn line).

    Returns ``(steps, values)`` sorted by step.
    """
    steps = np.asarray(steps, np.int64)
    values = np.asarray(values, np.float64)
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    n = steps.size
    if n <= max(int(points), 2):
        return steps, values
    buckets = max(int(points) // 2, 1)
    lo, hi = int(steps[0]), int(steps[-1])
    width = (hi - lo + 1) / buckets
    bucket = np.minimum(((steps - lo) / width).astype(np.int64), buckets - 1)
    finite = ~np.isnan(values)
    for_min = np.where(finite, values, np.inf)
    for_max = np.where(finite, values, -np.inf)
    # Sorting by (bucket, value): the first of each bucket holds its minimum.
    by_min = np.lexsort((for_min, bucket))
    by_max = np.lexsort((-for_max, bucket))
    starts = np.flatnonzero(np.r_[True, bucket[by_min][1:] != bucket[by_min][:-1]])
    keep = np.concatenate([by_min[starts], by_max[starts], [0, n - 1]])
    keep = np.unique(keep)
    return steps[keep], values[keep]


def bin_max(steps: npt.ArrayLike, values: npt.ArrayLike, edges: np.ndarray) -> np.ndarray:
    """Max of ``values`` in each step bin ``[edges[i], edges[i+1])`` (the last
    bin includes its right edge); NaN where a bin holds no finite value."""
    steps = np.asarray(steps, np.int64)
    values = np.asarray(values, np.float64)
    bins = len(edges) - 1
    out = np.full(bins, -np.inf)
    if steps.size and bins > 0:
        idx = np.clip(np.searchsorted(edges, steps, side="right") - 1, 0, bins - 1)
        ok = np.isfinite(values) & (steps >= edges[0]) & (steps <= edges[-1])
        np.maximum.at(out, idx[ok], values[ok])
    out[np.isneginf(out)] = np.nan
    return out


def step_edges(first: int, last: int, bins: int) -> np.ndarray:
    """``bins + 1`` integer-valued edges covering ``[first, last]``; fewer bins
    when there are fewer steps than bins."""
    first, last = int(first), int(last)
    bins = max(1, min(int(bins), last - first + 1))
    return np.linspace(first, last + 1, bins + 1)


# -- sampling signal ---------------------------------------------------------

def sampling_info(steps: npt.ArrayLike, cap_hint: int | None = None) -> dict[str, Any]:
    """Says whether TensorBoard kept only a sample of a series.

    The writer logs on a regular stride (every N steps, the last step of each
    ``steps_per_execution`` block), so the gaps between logged steps are
    nearly constant. TensorBoard's reservoir sampling keeps random points:
    gaps become irregular (coefficient of variation near 1) and fewer points
    remain than the stride implies. The series is reported as sampled when
    fewer points are stored than ``(last - first) / stride + 1`` (stride = the
    most common gap) *and* either the gaps are irregular or the number of
    points equals a known TensorBoard cap. ``cap_hint`` is this plugin's
    ``--samples_per_plugin`` value (0 = keep all: never sampled).
    """
    steps = np.unique(np.asarray(steps, np.int64))
    n = int(steps.size)
    info: dict[str, Any] = {"points": n, "first_step": int(steps[0]) if n else None,
            "last_step": int(steps[-1]) if n else None, "stride": None,
            "expected_points": n, "sampled": False}
    if n < 3 or cap_hint == 0:
        return info
    gaps = np.diff(steps)
    values, counts = np.unique(gaps, return_counts=True)
    stride = int(values[np.argmax(counts)])  # ties go to the smallest gap
    expected = int((steps[-1] - steps[0]) // stride + 1)
    cv = float(np.std(gaps) / np.mean(gaps))
    caps = set(KNOWN_SAMPLING_CAPS) | ({int(cap_hint)} if cap_hint else set())
    info.update(stride=stride, expected_points=expected,
                sampled=bool(n < expected and (cv > 0.5 or n in caps)))
    return info


def sparse_sampling(steps: npt.ArrayLike, cap_hint: int | None = None) -> dict[str, Any]:
    """:func:`sampling_info` of a series logged at irregular steps (the
    probe's and the population's, spaced by their time budget; the
    snapshots of a log of version 2, spaced by level), where gaps say
    nothing: sampled when it holds exactly as many points as a known
    TensorBoard cap (``cap_hint`` 0: never)."""
    n = int(np.unique(np.asarray(steps, np.int64)).size)
    caps = set(KNOWN_SAMPLING_CAPS) | ({int(cap_hint)} if cap_hint else set())
    return {"points": n, "expected_points": n, "sampled": cap_hint != 0 and n in caps}


def log_sampling(records: int, expected_records: int) -> dict[str, Any]:
    """:func:`sampling_info` of a layer log (format version 2): sampled
    when fewer records were read than its segments numbered."""
    return {"points": records, "expected_points": max(records, expected_records),
            "sampled": records < expected_records}


def merge_sampling(infos: Iterable[dict[str, Any] | None]) -> dict[str, Any]:
    """One summary over several series: sampled if any is."""
    present = [i for i in infos if i]
    sampled = [i for i in present if i["sampled"]]
    out: dict[str, Any] = {"sampled": bool(sampled), "series": len(present), "sampled_series": len(sampled)}
    if sampled:
        kept = min(i["points"] for i in sampled)
        expected = max(i["expected_points"] for i in sampled)
        out.update(points=kept, expected_points=expected, hint=LIFT_SAMPLING_HINT, message=(
            f"TensorBoard kept only a sample of these series ({kept} of about {expected} logged points "
            f"in the most reduced one): it keeps 1000 points per scalar tag and 100 per tensor tag with "
            f"its default data server, 10 with --load_fast=false. Spikes between kept points are invisible. "
            f"Restart TensorBoard with {LIFT_SAMPLING_HINT} (0 = keep all) to see every point."))
    return out


# -- layer-level numbers -------------------------------------------------------

def derived(info: LayerInfo) -> dict[str, Any]:
    """Numbers the tab shows next to a layer, from :mod:`tb_bnstats.quantities`
    (the frontend never re-derives them)."""
    m = info.momentum
    window = quantities.effective_window(m)
    return {
        "momentum_label": words.momentum_setting(m, info),
        "momentum_convention": words.momentum_convention(info),
        "effective_window": window if math.isfinite(window) else None,
        "steps_to_95": quantities.steps_to_converge(m, THRESHOLDS["converged"]),
        "steps_to_99": quantities.steps_to_converge(m, 0.99),
    }


# Overview badges: the layer's findings first (the diagnosis), then its state
# (frozen, pretrained, no updates, training=False overridden), then plain
# thresholds that flag a layer at a glance: those are marked ``hint``.
TONE_OF_SEVERITY = {"error": "bad", "warning": "warn", "info": "info"}


def finding_badges(findings: Iterable[Finding], layer: str) -> list[dict[str, Any]]:
    """One badge per finding that names ``layer`` (``id`` ``finding-<code>``,
    the tone of its severity, its message about this layer as the detail):
    the badges and the findings are one source."""
    return [{"id": f"finding-{f.code}", "tone": TONE_OF_SEVERITY[f.severity], "label": f.code,
             "severity": f.severity, "detail": f.message_of(layer)}
            for f in findings if layer in f.layers]

MEAN_GAP_P90_WARN = 0.5  # |mu_B - mu_R| / sigma_B, 90th percentile over channels
LOG_VAR_RATIO_WARN = 0.25  # |mean log((var_B+eps)/(var_R+eps))|, exp(0.25) = 1.28x


def badges(info: LayerInfo, latest: Mapping[str, float | None],
           pretrained_at: int | None = None) -> list[dict[str, Any]]:
    """State and hint badges of one layer from its latest values, each
    ``{"id", "tone", "label", "detail"}`` (``tone`` "bad", "warn" or "info";
    ``hint`` on the threshold ones, which are not the diagnosis).

    Args:
        info: its LayerInfo.
        latest: its latest values (:data:`OVERVIEW_QUANTITIES` of the plugin).
        pretrained_at: the step of the fit start at which it started from
            pretrained statistics (:func:`tb_bnstats.diagnosis.rules.pretrained_starts`).
    """
    out: list[dict[str, Any]] = []
    conv, updates = latest.get("convergence"), latest.get("updates")
    start_gap, start_lvr = latest.get("start_mean_gap/p50"), latest.get("start_abs_log_var_ratio/p50")
    if info.frozen:
        origin = "pretrained statistics" if pretrained_at is not None else "moving statistics"
        out.append({"id": "frozen", "tone": "info", "label": "frozen",
                    "detail": f"frozen on purpose ({words.frozen_how(info)}): normalizes with its {origin}, which "
                              f"do not update; BN010 says how far they are from the batches it sees"})
    elif not info.trainable or (updates is not None and updates == 0):
        out.append({"id": "no_updates", "tone": "bad", "label": "no updates",
                    "detail": f"moving averages never updated ({words.not_updating(info)})"
                    if updates == 0 else f"layer {words.frozen(info)}"})
    elif pretrained_at is not None:
        moved = "" if start_gap is None else f", moved {start_gap:.2f} std"
        out.append({"id": "pretrained", "tone": "info", "label": f"pretrained{moved}",
                    "detail": f"started from pretrained statistics at step {pretrained_at}; after "
                              f"{int(updates or 0)} updates {100 * (conv or 0):.0f}% of the average is the new "
                              f"batches'" + ("" if start_gap is None else
                                             f"; the moving mean moved {start_gap:.2f} std and the variance "
                                             f"{math.exp(start_lvr or 0):.2f}x from the pretrained values")})
    elif conv is not None and conv < THRESHOLDS["converged"]:
        need = quantities.steps_to_converge(info.momentum, THRESHOLDS["converged"])
        out.append({"id": "not_converged", "tone": "warn", "hint": True, "label": f"{conv * 100:.0f}% converged",
                    "detail": f"moving averages still hold {100 - conv * 100:.1f}% of their initial values after "
                              f"{int(updates or 0)} updates; {words.momentum_setting(info.momentum, info)} needs "
                              f"{need} for 95%"})
    gap = latest.get("mean_gap/p90")
    if gap is not None and gap > MEAN_GAP_P90_WARN:
        out.append({"id": "mean_gap", "tone": "warn", "hint": True, "label": "mean gap",
                    "detail": f"1 channel in 10 has its batch mean {gap:.2f} or more train-time std away from the "
                              f"moving mean (flagged above {MEAN_GAP_P90_WARN})"})
    lvr = latest.get("log_var_ratio/mean")
    if lvr is not None and abs(lvr) > LOG_VAR_RATIO_WARN:
        out.append({"id": "var_gap", "tone": "warn", "hint": True,
                    "label": "variance " + ("wider" if lvr > 0 else "narrower"),
                    "detail": f"batch variance is {math.exp(lvr):.2f}x the moving variance on average"
                              + (" (dropout before BN does this)" if lvr > 0 else "")})
    return out


# -- output encoding -------------------------------------------------------------

def finite_list(values: npt.ArrayLike) -> list[float | None]:
    """A JSON-safe list: NaN and infinities become None."""
    arr = np.asarray(values, np.float64)
    return [float(v) if math.isfinite(v) else None for v in arr.tolist()]


def csv_text(header: Iterable[Any], rows: Iterable[Iterable[Any]]) -> str:
    """CSV with text cells guarded against spreadsheet formula injection."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([_cell(h) for h in header])
    for row in rows:
        w.writerow([_cell(c) for c in row])
    return buf.getvalue()


def _cell(c: object) -> object:
    if c is None:
        return ""
    if isinstance(c, float):
        return repr(c) if math.isfinite(c) else ""
    if isinstance(c, str) and c[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + c
    return c


def wide_rows(series: Mapping[str, Series]) -> tuple[list[str], list[list[Any]]]:
    """``{name: (steps, values)}`` -> header and rows aligned on the union of steps."""
    names = list(series)
    all_steps = sorted({int(s) for steps, _ in series.values() for s in steps})
    lookup = {name: dict(zip((int(s) for s in steps), (float(v) for v in values)))
              for name, (steps, values) in series.items()}
    rows = [[step] + [lookup[n].get(step) for n in names] for step in all_steps]
    return ["step"] + names, rows


def channel_spread(values: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(p10, p90, min, max)`` over channels of each row of ``values``
    ``[snapshots, channels]``, ignoring NaN; NaN for a row of NaN only
    (without numpy's "All-NaN slice" warning in the server log)."""
    values = np.asarray(values, np.float64)
    out = np.full((4, values.shape[0]), np.nan)
    some = ~np.isnan(values).all(axis=1) if values.size else np.zeros(values.shape[0], bool)
    if some.any():
        v = values[some]
        with np.errstate(all="ignore"):
            out[:2, some] = np.nanpercentile(v, [10, 90], axis=1)
            out[2, some], out[3, some] = np.nanmin(v, axis=1), np.nanmax(v, axis=1)
    return out[0], out[1], out[2], out[3]
