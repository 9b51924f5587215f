"""The recorder's state and its pure choices: which steps of a drained
block to log (:func:`choose_rows`, :func:`stride_due`), what an adapter can
do in a run (:class:`Capabilities`), one run's state (:class:`Run`, made by
:meth:`tb_bnstats.recorder.Recorder.begin`), the writer thread's part of
a drain (:class:`BlockWrite`) and the measurements' time budget
(:func:`within_budget`, :class:`TimeBudget`). No framework, no I/O:
unit-tested on their own (tests/test_recorder_state.py)."""

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tb_bnstats.capture import Block
from tb_bnstats.options import PROBE_OFF
from tb_bnstats.write import background, resolution, summary


def stride_due(step: int, every: int, last_step: int | None) -> bool:
    """Whether something done every ``every`` steps (0: never), last at
    ``last_step`` (None: not yet), is due at ``step``: ``step`` is in a new
    stride of ``every`` steps."""
    return every > 0 and (last_step is None or step // every != last_step // every)


def stride_starts(steps: Any, every: int, last_step: int | None) -> NDArray[np.bool_]:
    """:func:`stride_due` for each of the increasing ``steps`` in turn, as a
    boolean mask: the steps that begin a new stride of ``every`` steps (none
    for ``every`` = 0), the first compared with ``last_step`` (None: not yet)."""
    steps = np.asarray(steps, np.int64)
    if every <= 0 or not len(steps):
        return np.zeros(len(steps), bool)
    stride = steps // every
    before = np.concatenate([[-1 if last_step is None else last_step // every], stride[:-1]])
    return np.asarray(stride != before)


def snapshot_starts(steps: Any, every: int, last_step: int | None) -> NDArray[np.bool_]:
    """:func:`stride_starts` with the stride that doubles at each level of the
    log (:func:`tb_bnstats.write.resolution.snapshot_strides`): a step
    begins a new stride when the step before it (``last_step``, the last
    snapshot, for the first) is in an earlier one, counted in this step's."""
    steps = np.asarray(steps, np.int64)
    if every <= 0 or not len(steps):
        return np.zeros(len(steps), bool)
    stride = resolution.snapshot_strides(steps, every)
    before = np.concatenate([[-1 if last_step is None else last_step], steps[:-1]])
    return np.asarray(steps // stride != before // stride)


@dataclasses.dataclass(frozen=True)
class Choice:
    """What to log of a drained block (:func:`choose_rows`).

    Attributes:
        rows: the block's rows to log, increasing (empty: none).
        snapshot_steps: the steps among them that get a full snapshot.
        newest_unlogged: the block's last step is new and not logged: kept,
            to be logged should the run end before another step.
    """

    rows: NDArray[np.int64]
    snapshot_steps: NDArray[np.int64]
    newest_unlogged: bool


def choose_rows(steps: Any, log_every: int, snapshot_every: int, last_logged: int | None,
                last_snapshot: int | None, log_last: bool = False, final: bool = False) -> Choice:
    """Which steps of a drained block to log, and which get a snapshot.

    A step is logged once: of a step repeated in the block its last row,
    and nothing at or before ``last_logged``. Among those, the ones that
    begin a stride of ``log_every`` steps are logged, and the last too with
    ``log_last`` (a measurement follows at it) or ``final`` (the run's
    end). Of the logged steps, those that begin a stride of
    ``snapshot_every`` steps get a snapshot, and the last at ``final``.

    Args:
        steps: the block's steps, in the order run (non-decreasing).
        log_every: ``log_every_n_steps``.
        snapshot_every: ``snapshot_every_n_steps`` (0: none but the final).
        last_logged: the last step logged before (None: none yet).
        last_snapshot: the last step snapshotted before (None: none yet).
        log_last: log the block's last step even off the stride.
        final: the run ends with this block.
    """
    steps = np.asarray(steps, np.int64)
    if not len(steps):
        return Choice(np.zeros(0, np.int64), np.zeros(0, np.int64), False)
    # One row per step (the last, should a step repeat), none logged before.
    keep = np.concatenate([steps[1:] != steps[:-1], [True]]) & (steps > (-1 if last_logged is None else last_logged))
    kept = np.flatnonzero(keep)
    chosen = np.zeros(len(steps), bool)
    chosen[kept[stride_starts(steps[kept], log_every, last_logged)]] = True
    if (log_last or final) and keep[-1]:
        chosen[-1] = True
    rows = np.flatnonzero(chosen).astype(np.int64)
    logged = steps[rows]
    snapshot = snapshot_starts(logged, snapshot_every, last_snapshot)
    if final and len(rows):
        snapshot[-1] = True
    return Choice(rows, logged[snapshot], bool(keep[-1] and not chosen[-1]))


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What the adapter can do in this run, given to :meth:`Recorder.begin`.

    Attributes:
        writes: this process writes the run (False: another process or rank
            does; this one only captures).
        probe: the train/inference probe may run (False: a tf_keras model,
            several processes, SyncBatchNorm under DDP).
        population: population statistics may be measured (as ``probe``).
    """

    writes: bool = True
    probe: bool = True
    population: bool = True


@dataclasses.dataclass(frozen=True)
class BlockWrite:
    """One write job's part for the writer thread (:meth:`Recorder._write_block`).

    Attributes:
        block: the drained block.
        rows: its rows to write (None: all).
        wall_times: when each of those steps ended.
        snapshot_steps: the steps among them that get a snapshot.
        metrics: the per-step metrics at those rows (``{name: [S]}``).
        series: write the layer series (False: the snapshot only).
    """

    block: Block
    rows: NDArray[np.int64] | None
    wall_times: Any
    snapshot_steps: Any
    metrics: dict[str, Any]
    series: bool = True

    def first_step(self) -> int:
        return int(self.block.steps[0 if self.rows is None else self.rows[0]])


@dataclasses.dataclass
class Measurements:
    """The callables that measure the model (:meth:`Recorder.measure_with`);
    None: not measured (a failure turns one off)."""

    probe: Callable[[], Any] | None = None
    population: Callable[[], Any] | None = None
    live_findings: Callable[[str], Any] | None = None
    frozen_recalibration: Callable[[], Any] | None = None


@dataclasses.dataclass
class Run:
    """The state of one training run, made by :meth:`Recorder.begin` (the
    recorder's run before any begins, and after one ends, is a run that
    writes nothing: ``writer`` None).

    Attributes:
        capabilities: what the adapter can do in it.
        probe_source: where the probe's batch comes from
            (:attr:`Options.probe_source`, or :data:`PROBE_OFF` without the
            capability).
        writer: the event writer (None: this run writes nothing -- another
            process writes it, the log could not be opened, or it ended).
        jobs: the writer thread's queue, with ``writer``.
        step: the optimizer's step as last counted (None: unknown).
        execution_steps: training steps per execution of the train step at most.
        epoch_start_step: the step at the epoch's start.
        epoch_steps_drained: steps of this epoch (the adapter's count) drained.
        execution_end: when the training step last returned (wall time).
        drained_at: when the capture was last drained (monotonic).
        undrained: steps may have run since the last drain.
        step_times: ``(step, wall time)`` seen since the last drain.
        newest: the last step drained, when it was not logged (a 1-row block).
        last_totals: ``{metric: (total, count)}`` at the last logged step.
        last_logged: the last logged step's row (a 1-row block).
        last_logged_step: its step (None: none yet); likewise the last
            snapshot, probe and population steps.
        measure: the measurements of the model.
    """

    capabilities: Capabilities = Capabilities(writes=False, probe=False, population=False)
    probe_source: str | None = PROBE_OFF
    writer: summary.Writer | None = None
    jobs: background.JobQueue | None = None
    step: int | None = None
    execution_steps: int = 1
    epoch_start_step: int | None = None
    epoch_steps_drained: int = 0
    execution_end: float | None = None
    drained_at: float = dataclasses.field(default_factory=time.monotonic)
    undrained: bool = False
    step_times: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    newest: Block | None = None
    last_totals: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    last_logged: Block | None = None
    last_logged_step: int | None = None
    last_snapshot_step: int | None = None
    last_probe_step: int | None = None
    last_population_step: int | None = None
    measure: Measurements = dataclasses.field(default_factory=Measurements)

    @property
    def population(self) -> bool:
        """Population statistics may be measured in this run."""
        return self.capabilities.population


# -- the measurements' time budget ------------------------------------------------------


def within_budget(spent: float, last: float | None, trained: float, fraction: float | None) -> bool:
    """Whether a due measurement may run under the time budget.

    The measurements of an account (the probe's, the population's) may take
    ``fraction`` of the training time: a due one runs when what the account
    has spent plus what this measurement took last time stays within
    ``fraction`` of the training time so far; else it is skipped, and runs
    at the next due point that fits. A measurement that has not run yet
    runs at once (its cost is not known).

    Args:
        spent: seconds the measurement's account has spent so far.
        last: seconds the measurement took the last time it ran (None: it
            has not run yet).
        trained: seconds of training so far (measurements excluded).
        fraction: the budget (:attr:`tb_bnstats.Options.measure_budget`;
            None: no budget, every due measurement runs).

    Returns:
        True: run it now.
    """
    if fraction is None or last is None:
        return True
    return spent + last <= fraction * trained


@dataclasses.dataclass
class TimeBudget:
    """What the measurements on the model cost against the training time,
    across the training runs of one recorder (:func:`within_budget`).

    Training time is the wall time from each run's begin to its close, less
    the measurements' own time. Each measurement (``kind``: the probe, the
    checks on the model at the end of a run...) is charged to an
    ``account``; the measurements of one account share its budget.

    Attributes:
        fraction: the budget (None: none).
        wall: seconds inside the runs that have closed.
        since: when the open run began (monotonic; None: no run open).
        measured: seconds measured in all (every account).
        spent: ``{account: seconds}``.
        last: ``{kind: seconds}`` of each measurement's last run.
    """

    fraction: float | None
    wall: float = 0.0
    since: float | None = None
    measured: float = 0.0
    spent: dict[str, float] = dataclasses.field(default_factory=dict)
    last: dict[str, float] = dataclasses.field(default_factory=dict)

    def start(self, now: float) -> None:
        """A run begins at ``now`` (one still open is closed first)."""
        self.stop(now)
        self.since = now

    def stop(self, now: float) -> None:
        """The open run closes at ``now`` (nothing when none is open)."""
        if self.since is not None:
            self.wall += max(0.0, now - self.since)
            self.since = None

    def trained(self, now: float) -> float:
        """Seconds of training up to ``now``, measurements excluded."""
        open_run = 0.0 if self.since is None else max(0.0, now - self.since)
        return max(0.0, self.wall + open_run - self.measured)

    def allows(self, kind: str, account: str, now: float) -> bool:
        """Whether measurement ``kind`` of ``account`` may run at ``now``."""
        return within_budget(self.spent.get(account, 0.0), self.last.get(kind), self.trained(now), self.fraction)

    def charge(self, kind: str, account: str, seconds: float) -> None:
        """Measurement ``kind`` of ``account`` took ``seconds``."""
        seconds = max(0.0, seconds)
        self.spent[account] = self.spent.get(account, 0.0) + seconds
        self.last[kind] = seconds
        self.measured += seconds
