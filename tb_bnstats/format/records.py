"""A run's records in memory: what the reader returns, what the writer keeps
for the end-of-fit diagnosis, what the plugin diagnoses.

:func:`run_data` is the one place a :class:`RunData` is assembled from
per-quantity ``(steps, values)`` pairs; :func:`aligned` puts a layer's series
on one step axis.
"""

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from tb_bnstats.format import metadata

Series = tuple[np.ndarray, np.ndarray]  # (steps int64 [n], values float64 [n])


@dataclasses.dataclass
class Envelope:
    """A layer's interval envelopes (:mod:`tb_bnstats.write.resolution`), in
    order of their first step: each interval's ``first_step``, ``last_step``
    (int64 [n]), ``count`` of logged steps and of steps with a non-finite
    value (``nonfinite``), and per quantity ``stats[q][s]`` [n] for ``s`` in
    :data:`metadata.ENVELOPE_STATS` (``argmin`` / ``argmax`` are steps)."""

    first_step: np.ndarray
    last_step: np.ndarray
    count: np.ndarray
    nonfinite: np.ndarray
    stats: dict[str, dict[str, np.ndarray]]

    @classmethod
    def empty(cls) -> "Envelope":
        """No interval (a log of version 1, or a run shorter than the first level)."""
        none = np.zeros(0, np.int64)
        return cls(none, none, none, none, {})

    def __len__(self) -> int:
        return len(self.first_step)

    def extremes(self, quantity: str) -> Series:
        """Each interval's min and max of ``quantity`` at the steps they were
        reached, in step order: the points that draw the envelope."""
        stats = self.stats.get(quantity)
        if stats is None or not len(self):
            return np.zeros(0, np.int64), np.zeros(0)
        apart = stats["argmax"] != stats["argmin"]  # one point where min and max are one step's value
        steps = np.concatenate([stats["argmin"], stats["argmax"][apart]]).astype(np.int64)
        values = np.concatenate([stats["min"], stats["max"][apart]])
        order = np.argsort(steps, kind="stable")
        return steps[order], values[order]


def drawn(full: Series | None, envelope: Envelope, quantity: str) -> Series:
    """The points that show ``quantity`` of a layer over the whole run: its
    full-resolution points ``full`` and the extremes of each interval of its
    ``envelope``, in step order (what the tab downsamples and bins: every
    extreme is in)."""
    steps, values = envelope.extremes(quantity)
    if full is not None:
        fresh = ~np.isin(steps, full[0])  # an extreme at a full-resolution step is that step's point
        steps, values = steps[fresh], values[fresh]
        steps = np.concatenate([np.asarray(full[0], np.int64), steps])
        values = np.concatenate([np.asarray(full[1], np.float64), values])
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order], values[order]
    return steps, values


def latest(full: Series | None, envelope: Envelope, quantity: str) -> tuple[int, float] | None:
    """The newest ``(step, value)`` of ``quantity``: the last full-resolution
    point, or the mean of the last interval when that one ends later; None
    when there is neither."""
    candidates = []
    if full is not None and len(full[0]):
        candidates.append((int(full[0][-1]), float(full[1][-1])))
    stats = envelope.stats.get(quantity)
    if stats is not None and len(envelope):
        last = int(np.argmax(envelope.last_step))
        candidates.append((int(envelope.last_step[last]), float(stats["mean"][last])))
    return max(candidates, key=lambda c: c[0]) if candidates else None


@dataclasses.dataclass
class LayerData:
    """One layer's records.

    ``series[q]`` is aligned with ``steps`` (NaN where ``q`` was not logged,
    e.g. probe series between probe steps); ``snapshots[row]`` is
    ``[len(snapshot_steps), channels]`` for each :data:`metadata.SNAPSHOT_ROWS`.
    On several replicas ``replica_snapshots[row]`` is ``[len(replica_steps),
    replicas, channels]`` for each :data:`metadata.REPLICA_ROWS` (empty on one).
    In a log of version 2, ``steps`` are the steps kept at full resolution
    and ``envelope`` summarizes every logged step past the first level
    (:func:`drawn` puts the two together).
    """

    info: metadata.LayerInfo
    steps: np.ndarray
    series: dict[str, np.ndarray]
    snapshot_steps: np.ndarray
    snapshots: dict[str, np.ndarray]
    replica_steps: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    replica_snapshots: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    envelope: Envelope = dataclasses.field(default_factory=Envelope.empty)


@dataclasses.dataclass
class RunData:
    """One run's records.

    ``metrics["train/loss"]`` is ``(steps, values)``. ``stored_findings``: the
    findings the callback stored at the end of its last fit (a list of dicts),
    None when none were stored. ``train_begins``: the callback's record of each
    fit's start (:data:`metadata.TRAIN_BEGIN_TAG`), dicts with ``step``,
    ``resumed``, ``moving_at_initializer``, in step order.
    ``newer_format_versions``: versions newer than this reader's seen in the
    run's records (read as far as possible).
    """

    layers: dict[str, LayerData]
    metrics: dict[str, Series]
    stored_findings: list | None = None
    train_begins: list = dataclasses.field(default_factory=list)
    newer_format_versions: tuple = ()


def aligned(series_by_quantity: Mapping[str, Series]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``{quantity: (steps, values)}`` -> ``(steps, {quantity: values})`` on
    the union of the steps, NaN where a quantity has no point."""
    if not series_by_quantity:
        return np.zeros(0, np.int64), {}
    steps = np.unique(np.concatenate([np.asarray(s, np.int64) for s, _ in series_by_quantity.values()]))
    out: dict[str, np.ndarray] = {}
    for quantity, (s, v) in series_by_quantity.items():
        full = np.full(steps.shape, np.nan)
        full[np.searchsorted(steps, np.asarray(s, np.int64))] = v
        out[quantity] = full
    return steps, out


def with_layer_series(steps: np.ndarray,
                      series: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The aligned steps at which the layer's :data:`metadata.LAYER_SERIES`
    were logged. The probe's and the population's points fall on such steps;
    one at a step without them (its block dropped by a writer that fell
    behind training, :mod:`tb_bnstats.write.background`) has nothing to be
    compared with and is left out, rather than read as NaN moments."""
    core = [series[q] for q in metadata.LAYER_SERIES if q in series]
    if not core:
        return steps, series
    keep = np.any(np.isfinite(np.stack(core)), axis=0)
    if keep.all():
        return steps, series
    return steps[keep], {q: v[keep] for q, v in series.items()}


def complete_steps(series_by_quantity: Mapping[str, Series]) -> Mapping[str, Series]:
    """The series cut at the last step every logged one of
    :data:`metadata.LAYER_SERIES` has reached: all of them are written at
    every logged step, so a later step with some missing is one whose
    records are not all read yet (a run being written, read at a moment
    between two of its records)."""
    ends = [int(s[-1]) for q, (s, _) in series_by_quantity.items() if q in metadata.LAYER_SERIES and len(s)]
    if not ends or min(ends) == max(ends):
        return series_by_quantity
    last = min(ends)
    out: dict[str, Series] = {}
    for quantity, (s, v) in series_by_quantity.items():
        keep = np.asarray(s, np.int64) <= last
        out[quantity] = (np.asarray(s)[keep], np.asarray(v)[keep])
    return out


def run_data(layer_infos: Mapping[str, metadata.LayerInfo], series_by_layer: Mapping[str, Mapping[str, Series]],
             metrics: Mapping[str, Series] | None = None,
             snapshots_by_layer: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
             stored_findings: list | None = None, train_begins: Iterable[dict[str, Any]] = (),
             newer_format_versions: Iterable[int] = (),
             replicas_by_layer: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
             envelopes: Mapping[str, Envelope] | None = None) -> RunData:
    """Assembles a :class:`RunData`.

    Args:
        layer_infos: ``{layer: LayerInfo}``; every layer gets a
            :class:`LayerData`, empty when it has no series.
        series_by_layer: ``{layer: {quantity: (steps, values)}}``, cut to
            the steps read completely (:func:`complete_steps`) and aligned
            with :func:`aligned`.
        metrics: ``{"split/name": (steps, values)}``.
        snapshots_by_layer: ``{layer: (steps [k], tensor [k, rows, channels])}``
            with rows in :data:`metadata.SNAPSHOT_ROWS` order (the tensors of
            another shape are left out, their steps kept).
        stored_findings, train_begins, newer_format_versions: as in
            :class:`RunData`.
        replicas_by_layer: ``{layer: (steps [k], tensor [k, rows, replicas,
            channels])}`` with rows in :data:`metadata.REPLICA_ROWS` order.
        envelopes: ``{layer: Envelope}`` of a log of version 2.

    Returns:
        The :class:`RunData`.
    """
    layers: dict[str, LayerData] = {}
    for name, info in layer_infos.items():
        steps, series = with_layer_series(*aligned(complete_steps(series_by_layer.get(name, {}))))
        snap_steps: np.ndarray = np.zeros(0, np.int64)
        snaps: dict[str, np.ndarray] = {}
        if snapshots_by_layer and name in snapshots_by_layer:
            snap_steps, tensor = snapshots_by_layer[name]
            if tensor.ndim == 3 and tensor.shape[1] == len(metadata.SNAPSHOT_ROWS):
                snaps = {row: tensor[:, i, :] for i, row in enumerate(metadata.SNAPSHOT_ROWS)}
        layers[name] = LayerData(info, steps, series, snap_steps, snaps)
        if envelopes and name in envelopes:
            layers[name].envelope = envelopes[name]
        if replicas_by_layer and name in replicas_by_layer:
            replica_steps, tensor = replicas_by_layer[name]
            if tensor.ndim == 4 and tensor.shape[1] == len(metadata.REPLICA_ROWS):
                layers[name].replica_steps = replica_steps
                layers[name].replica_snapshots = {row: tensor[:, i] for i, row in enumerate(metadata.REPLICA_ROWS)}
    return RunData(layers=layers, metrics=dict(metrics or {}), stored_findings=stored_findings,
                   train_begins=list(train_begins), newer_format_versions=tuple(sorted(set(newer_format_versions))))
