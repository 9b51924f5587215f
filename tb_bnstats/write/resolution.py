"""What a long run keeps of each logged step: the step itself, or its place in
an interval's envelope.

A run of days logs hundreds of thousands of steps. Keeping every one costs
about a kilobyte per layer per step and, worse, TensorBoard keeps only a
random sample of each tag (1,000 points of a scalar, 100 records of a
tensor at its default flags), so the one step that matters is likely not
shown. This module decides, per layer, what is written instead:

* **Full-resolution rows** (``steps`` records): every logged step of the
  first :data:`FULL_RESOLUTION_STEPS` steps; the steps after that while the
  layer's moving averages have not converged (``convergence`` below
  :data:`tb_bnstats.quantities.CONVERGED`), up to :data:`WARMUP_MAX_STEPS`; the
  :data:`EVENT_WINDOW` steps before and after an *event* (a non-finite value,
  or a gap far above its recent neighbours, :func:`outliers`), at most
  :data:`EVENTS_MAX` events per writer; the steps of a measurement (the
  probe's, the population statistics', :meth:`LayerLog.keep`); and the last
  :data:`FINAL_WINDOW` logged steps when the writer closes (the steps the
  end-of-run diagnosis reads).
* **Envelopes** (``envelope`` records) of every logged step from
  :data:`FULL_RESOLUTION_STEPS` on: intervals whose length doubles with each
  *level*. Level ``k >= 1`` covers steps ``[M (2^k - 1), M (2^(k+1) - 1))``
  (``M`` = :data:`FULL_RESOLUTION_STEPS`) in ``M`` intervals of ``2^k``
  steps (:func:`interval_starts`), so a run of ``N`` steps writes about
  ``M log2(N / M)`` intervals: the log grows with the logarithm of the run.
  Each interval stores, per quantity, the mean, the min and the max over its
  logged steps and the steps where the min and the max were (:data:`STATS`),
  so no extreme is lost and the tab can place it on its step.

Records are written when :data:`PENDING_ROWS` rows or intervals wait, and
every layer's at least every ``flush_secs`` and when the writer flushes;
each record goes to a *segment* tag that takes at most
:data:`SEGMENT_RECORDS` records: fewer than TensorBoard's reservoir keeps,
so nothing is sampled away at its default flags.

:class:`LayerLog` is pure (numpy in, rows out): the writer
(:class:`tb_bnstats.write.summary.Writer`) turns its :class:`Pending` rows
into events.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from tb_bnstats import quantities
from tb_bnstats.format import metadata

# M: the first M steps are kept one by one, and each level holds M intervals.
FULL_RESOLUTION_STEPS = 1000
# Full resolution goes on past M while the moving averages converge, up to this step.
WARMUP_MAX_STEPS = 10 * FULL_RESOLUTION_STEPS
# Steps kept one by one before and after an event.
EVENT_WINDOW = 16
# Events kept one by one per layer and writer; later ones are in the envelopes only.
EVENTS_MAX = 64
# An event: a value this many robust standard deviations (1.4826 x the median absolute deviation) above
# the median of the REFERENCE_ROWS steps before it, and above OUTLIER_FLOOR.
OUTLIER_Z = 10.0
OUTLIER_FLOOR = 0.5
REFERENCE_ROWS = 64
# The last logged steps kept in memory, written one by one when the writer closes.
FINAL_WINDOW = 256
# A record is written when this many rows (or intervals) wait, or at a flush.
PENDING_ROWS = 64
# Records per segment tag: below TensorBoard's 100 records per tensor tag.
SEGMENT_RECORDS = 64
# The quantities whose outliers are events: the heat map's measures.
WATCHED = ("mean_gap/max", "abs_log_var_ratio/max", "sym_kl/max")

STATS = metadata.ENVELOPE_STATS
# Below every step (steps are any int64, negative ones too).
NO_STEP = np.iinfo(np.int64).min


def levels(steps: npt.ArrayLike) -> np.ndarray:
    """The level of each step: 0 below :data:`FULL_RESOLUTION_STEPS`, then
    ``k`` for ``M (2^k - 1) <= step < M (2^(k+1) - 1)``."""
    blocks = np.maximum(np.asarray(steps, np.int64), 0) // FULL_RESOLUTION_STEPS + 1
    k = np.floor(np.log2(blocks.astype(np.float64))).astype(np.int64)
    # log2 of an integer just below a power of two can round up: step back where it did.
    k -= (np.left_shift(np.int64(1), k) > blocks).astype(np.int64)
    return k


def interval_starts(steps: npt.ArrayLike) -> np.ndarray:
    """The first step of each step's envelope interval (the step itself at
    level 0): intervals of ``2^k`` steps from the level's first step."""
    steps = np.maximum(np.asarray(steps, np.int64), 0)
    k = levels(steps)
    size = np.left_shift(np.int64(1), k)
    base = FULL_RESOLUTION_STEPS * (size - 1)
    return base + (steps - base) // size * size


def snapshot_strides(steps: npt.ArrayLike, every: int) -> np.ndarray:
    """The spacing of per-channel snapshots at each of ``steps``: ``every``
    steps, doubled at each level, so that each level holds about as many
    (``M / every``) and their count grows with the logarithm of the run."""
    return every * np.left_shift(np.int64(1), levels(steps))


def outliers(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Which of ``values`` [S, W] are events against ``reference`` [R, W]
    (the rows before them): non-finite, or more than :data:`OUTLIER_Z`
    robust standard deviations above the reference's median and above
    :data:`OUTLIER_FLOOR`. Returns a boolean [S] (any watched column)."""
    bad = ~np.isfinite(values).all(axis=1)
    finite_reference = reference[np.isfinite(reference).all(axis=1)]
    if len(finite_reference) < EVENT_WINDOW:
        return bad
    median = np.median(finite_reference, axis=0)
    spread = 1.4826 * np.median(np.abs(finite_reference - median), axis=0)
    # A flat reference (a spread of 0) still leaves room for a rounding error's worth of wobble.
    limit = np.maximum(median + OUTLIER_Z * np.maximum(spread, 1e-3 * np.abs(median) + 1e-6), OUTLIER_FLOOR)
    with np.errstate(invalid="ignore"):
        return bad | (values > limit).any(axis=1)


@dataclasses.dataclass
class Pending:
    """What a :class:`LayerLog` has to write: full-resolution rows
    (``steps`` [n], ``rows`` [n, Q]) and closed intervals (``intervals``
    [m, len(ENVELOPE_HEAD) + len(STATS) Q], steps absolute, in float64)."""

    steps: np.ndarray
    rows: np.ndarray
    intervals: np.ndarray


class _OpenInterval:
    """The interval being filled: sums, extremes and their steps per quantity."""

    def __init__(self, start: int, width: int) -> None:
        self.start, self.last, self.count, self.nonfinite = start, start, 0, 0
        self.sum = np.zeros(width)
        self.finite = np.zeros(width)
        self.min = np.full(width, np.inf)
        self.max = np.full(width, -np.inf)
        self.argmin = np.zeros(width, np.int64)
        self.argmax = np.zeros(width, np.int64)

    def add(self, steps: np.ndarray, rows: np.ndarray) -> None:
        """Adds the rows [n, Q] at ``steps`` [n] (all in this interval)."""
        finite = np.isfinite(rows)
        self.count += len(steps)
        self.nonfinite += int((~finite.all(axis=1)).sum())
        self.last = int(steps[-1])
        self.sum += np.where(finite, rows, 0.0).sum(axis=0)
        self.finite += finite.sum(axis=0)
        low = np.where(finite, rows, np.inf)
        high = np.where(finite, rows, -np.inf)
        i_low, i_high = low.argmin(axis=0), high.argmax(axis=0)
        cols = np.arange(rows.shape[1])
        new_min, new_max = low[i_low, cols], high[i_high, cols]
        lower, higher = new_min < self.min, new_max > self.max
        self.min[lower], self.argmin[lower] = new_min[lower], steps[i_low][lower]
        self.max[higher], self.argmax[higher] = new_max[higher], steps[i_high][higher]

    def row(self) -> np.ndarray:
        """The interval as one envelope row (NaN statistics for a quantity
        without a finite value)."""
        seen = self.finite > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            stats = {"mean": np.where(seen, self.sum / np.maximum(self.finite, 1), np.nan),
                     "min": np.where(seen, self.min, np.nan), "max": np.where(seen, self.max, np.nan),
                     "argmin": np.where(seen, self.argmin, self.start).astype(np.float64),
                     "argmax": np.where(seen, self.argmax, self.start).astype(np.float64)}
        head = np.array([self.start, self.last, self.count, self.nonfinite], np.float64)
        return np.concatenate([head, np.stack([stats[s] for s in STATS], axis=1).reshape(-1)])


class LayerLog:
    """Decides, for one layer's logged steps, which are kept one by one and
    folds every one from :data:`FULL_RESOLUTION_STEPS` on into its interval's
    envelope (see the module docstring).

    Args:
        quantities: the names of the Q columns of the rows it is given.
    """

    def __init__(self, quantities: Sequence[str]) -> None:
        self.quantities = tuple(quantities)
        width = len(self.quantities)
        self._watched = [i for i, q in enumerate(self.quantities) if q in WATCHED]
        self._convergence = self.quantities.index("convergence") if "convergence" in self.quantities else None
        self._recent_steps = np.zeros(0, np.int64)
        self._recent = np.zeros((0, width))
        self._detail_until = NO_STEP  # steps up to this one are kept (an event's window after it)
        self._last_detail = NO_STEP  # the last step kept one by one
        self._warming = True
        self._kept: set[int] = set()  # steps asked for (keep()) that have not come yet
        self.events = 0
        self._open: _OpenInterval | None = None
        self._pending_steps: list[np.ndarray] = []
        self._pending_rows: list[np.ndarray] = []
        self._pending_intervals: list[np.ndarray] = []

    def add(self, steps: npt.ArrayLike, rows: npt.ArrayLike) -> None:
        """Takes the logged ``steps`` [S] (increasing, each after the last
        one given) and their ``rows`` [S, Q]."""
        steps = np.asarray(steps, np.int64).reshape(-1)
        rows = np.asarray(rows, np.float64).reshape(len(steps), len(self.quantities))
        if not len(steps):
            return
        keep = self._full_resolution(steps, rows)
        self._queue_detail(steps[keep], rows[keep])
        self._fold(steps, rows)
        self._recent_steps = np.concatenate([self._recent_steps, steps])[-FINAL_WINDOW:]
        self._recent = np.concatenate([self._recent, rows])[-FINAL_WINDOW:]

    def _full_resolution(self, steps: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Which of the new rows are kept one by one (and, for an event, the
        rows before it still in memory, queued here)."""
        keep = steps < FULL_RESOLUTION_STEPS
        if self._warming and self._convergence is not None:
            warming = (rows[:, self._convergence] < quantities.CONVERGED) & (steps < WARMUP_MAX_STEPS)
            # Warm-up ends at the first converged step past M, for good.
            ended = ~warming & (steps >= FULL_RESOLUTION_STEPS)
            if ended.any():
                warming[np.argmax(ended):] = False
                self._warming = False
            keep |= warming
        keep |= steps <= self._detail_until
        if self._kept:
            asked = np.isin(steps, list(self._kept))
            keep |= asked
            self._kept.difference_update(steps[asked].tolist())
        if self._watched and self.events < EVENTS_MAX:
            reference = self._recent[-REFERENCE_ROWS:][:, self._watched]
            events = outliers(rows[:, self._watched], reference) & (steps >= FULL_RESOLUTION_STEPS)
            for i in np.flatnonzero(events):
                if self.events >= EVENTS_MAX:
                    break
                if steps[i] <= self._detail_until and self.events:  # inside the last event's window
                    self._detail_until = max(self._detail_until, int(steps[i]) + EVENT_WINDOW)
                    continue
                self.events += 1
                before = (self._recent_steps >= steps[i] - EVENT_WINDOW) & (self._recent_steps > self._last_detail)
                self._queue_detail(self._recent_steps[before], self._recent[before])
                keep[(steps >= steps[i] - EVENT_WINDOW) & (steps <= steps[i] + EVENT_WINDOW)] = True
                self._detail_until = max(self._detail_until, int(steps[i]) + EVENT_WINDOW)
        return keep & (steps > self._last_detail)

    def keep(self, step: int) -> None:
        """Keeps ``step`` one by one: a measurement (the probe, the
        population statistics) was taken there, and its points are read
        beside the layer's. A step already given is queued now if it is
        still in memory and after the last one kept; a later one when it
        comes."""
        if step <= self._last_detail:
            return
        here = self._recent_steps == step
        if here.any():
            self._queue_detail(self._recent_steps[here][-1:], self._recent[here][-1:])
        elif not len(self._recent_steps) or step > self._recent_steps[-1]:
            self._kept.add(int(step))

    def _queue_detail(self, steps: np.ndarray, rows: np.ndarray) -> None:
        if len(steps):
            self._pending_steps.append(steps)
            self._pending_rows.append(rows)
            self._last_detail = int(steps[-1])

    def _fold(self, steps: np.ndarray, rows: np.ndarray) -> None:
        """Adds the rows at or past :data:`FULL_RESOLUTION_STEPS` to their
        intervals; closes each interval a later step has left."""
        later = steps >= FULL_RESOLUTION_STEPS
        steps, rows = steps[later], rows[later]
        if not len(steps):
            return
        starts = interval_starts(steps)
        cuts = np.flatnonzero(np.diff(starts)) + 1
        for part_steps, part_rows, start in zip(np.split(steps, cuts), np.split(rows, cuts), starts[np.r_[0, cuts]]):
            if self._open is not None and self._open.start != start:
                self._close_interval()
            if self._open is None:
                self._open = _OpenInterval(int(start), len(self.quantities))
            self._open.add(part_steps, part_rows)

    def _close_interval(self) -> None:
        assert self._open is not None
        self._pending_intervals.append(self._open.row())
        self._open = None

    def full(self) -> bool:
        """Whether :data:`PENDING_ROWS` rows or intervals wait (a record is
        due; the writer also writes every log at least every ``flush_secs``)."""
        return sum(map(len, self._pending_steps)) + len(self._pending_intervals) >= PENDING_ROWS

    def take(self, final: bool = False) -> Pending:
        """What is waiting, taken out. ``final``: the writer closes: the open
        interval is closed and the last :data:`FINAL_WINDOW` steps not kept
        yet are kept one by one."""
        if final:
            tail = self._recent_steps > self._last_detail
            self._queue_detail(self._recent_steps[tail], self._recent[tail])
            if self._open is not None:
                self._close_interval()
        width = len(self.quantities)
        out = Pending(
            np.concatenate(self._pending_steps) if self._pending_steps else np.zeros(0, np.int64),
            np.concatenate(self._pending_rows) if self._pending_rows else np.zeros((0, width)),
            np.stack(self._pending_intervals) if self._pending_intervals
            else np.zeros((0, len(metadata.ENVELOPE_HEAD) + len(STATS) * width)))
        self._pending_steps, self._pending_rows, self._pending_intervals = [], [], []
        return out
