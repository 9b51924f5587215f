"""Writes the log format of :mod:`tb_bnstats.format.metadata` into TensorBoard
event files, without TensorFlow ops, appended to an event file of
:mod:`tb_bnstats.write.eventfile`. A layer's per-step series go through its
:class:`tb_bnstats.write.resolution.LayerLog`: the steps kept one by one and
the envelopes of the others, packed into a few tensor records.

The Keras callback uses it, and so can a custom training loop or a hand-written
batch norm::

    from tb_bnstats import Writer

    writer = Writer("logs/run1")
    for step, (x, y) in enumerate(data, start=1):
        mean, var = tf.nn.moments(h, axes=[0])          # what your BN normalizes with
        ...                                            # update moving_mean / moving_var
        writer.layer_moments(
            "block1/bn", step,
            batch_mean=mean, batch_var=var,
            moving_mean=moving_mean, moving_var=moving_var,
            updates=step, momentum=0.99, epsilon=1e-3,
        )
        writer.metrics("train", {"loss": loss}, step)
    writer.close()
"""

import collections
import dataclasses
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

from tb_bnstats import quantities
from tb_bnstats.format import metadata, records
from tb_bnstats.write import eventfile, events, resolution

logger = logging.getLogger("tb_bnstats")

# How often what was kept reaches the disk, at least. TensorBoard's own
# summary writers flush every 120 s; 30 s keeps a live tab fresh while the
# callback reads the device rarely (one read per 30 s at most, for slow steps).
DEFAULT_FLUSH_SECS = 30.0

# A step axis: [S] steps.
Steps = Sequence[int] | np.ndarray
# One value, or one per channel.
Values = float | Sequence[float] | np.ndarray


def _json_proto(obj: Any) -> tensor_pb2.TensorProto:
    """A scalar DT_STRING tensor holding ``obj`` as JSON."""
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                                  string_val=[json.dumps(obj, sort_keys=True).encode("utf-8")])


def _tensor_proto(array: npt.ArrayLike) -> tensor_pb2.TensorProto:
    array = np.ascontiguousarray(array, dtype=np.float32)
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in array.shape]
        ),
        tensor_content=array.tobytes(),
    )


def layer_series(q: quantities.LayerQuantities) -> dict[str, float] | dict[str, np.ndarray]:
    """The per-step values of :data:`metadata.LAYER_SERIES` of one layer: the
    channel means of the moments, the channel aggregates
    (:func:`quantities.channel_aggregates`) of each gap measure, and the
    layer's state. Floats for one step; [S] arrays for a block of S steps."""
    out = {name: np.mean(getattr(q, name), axis=-1) for name in metadata.MOMENT_SERIES}
    gaps = np.stack([q.mean_gap, np.abs(q.log_var_ratio), q.sym_kl])  # GAP_MEASURES order
    for measure, aggregates in zip(metadata.GAP_MEASURES, zip(*quantities.channel_aggregates(gaps))):
        for aggregate, value in zip(metadata.GAP_AGGREGATES, aggregates):
            out[f"{measure}/{aggregate}"] = value
    out["log_var_ratio/mean"] = np.mean(q.log_var_ratio, axis=-1)
    out["convergence"] = q.convergence
    out["updates"] = q.updates
    out["start_mean_gap/p50"], out["start_abs_log_var_ratio/p50"] = quantities.percentiles(
        np.stack([q.start_mean_gap, np.abs(q.start_log_var_ratio)]), (50,))[0]
    if np.ndim(q.updates) == 0:
        return {k: float(v) for k, v in out.items()}
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def snapshot_rows(q: quantities.LayerQuantities) -> np.ndarray:
    """The per-channel rows of :data:`metadata.SNAPSHOT_ROWS`, shape [rows, C]
    (of one step's quantities)."""
    return np.stack([np.asarray(getattr(q, row), np.float64) for row in metadata.SNAPSHOT_ROWS])


def replica_series(info: metadata.LayerInfo, batch_mean: npt.ArrayLike, batch_var: npt.ArrayLike,
                   replicas: Any) -> dict[str, np.ndarray]:
    """The per-step values of :data:`metadata.REPLICA_SERIES` of one layer on
    several replicas.

    Args:
        info: the layer.
        batch_mean, batch_var: [S, C] the global batch's moments (biased).
        replicas: its :class:`tb_bnstats.capture.ReplicaBlock` (or anything
            with ``batch_mean``, ``batch_var`` [S, R, C], ``samples`` [S, R],
            ``moving_mean`` / ``moving_var`` [S, R, C] or None).

    Returns:
        ``{quantity: [S]}``; the ``rank_moving_*`` ones only where each
        replica keeps its own moving statistics.
    """
    spread = quantities.replica_spread(float(info.epsilon), batch_mean, batch_var, replicas.batch_mean,
                                       replicas.batch_var, replicas.moving_mean, replicas.moving_var)
    aggregate = {"mean": lambda v: v.mean(axis=-1), "max": lambda v: v.max(axis=-1),
                 "p50": lambda v: quantities.percentiles(v, (50,))[0]}
    out = {"replica_samples/min": np.min(np.asarray(replicas.samples, np.float64), axis=-1)}
    for quantity in metadata.REPLICA_SERIES:
        measure, how = quantity.split("/")
        if measure in spread:
            out[quantity] = aggregate[how](spread[measure])
    return {q: np.asarray(out[q], np.float64) for q in metadata.REPLICA_SERIES if q in out}


def replica_rows(replicas: Any, i: int | np.integer) -> np.ndarray:
    """The per-replica tensor of :data:`metadata.REPLICA_ROWS` at step ``i``
    of a :class:`tb_bnstats.capture.ReplicaBlock`, [rows, R, C] (replica 0's
    moving rows are NaN where the replicas share one copy of the moving
    statistics: the per-channel snapshot holds it)."""
    mean = np.asarray(replicas.batch_mean[i], np.float64)
    shared = np.full_like(mean, np.nan)
    moving_mean = shared if replicas.moving_mean is None else replicas.moving_mean[i]
    moving_var = shared if replicas.moving_var is None else replicas.moving_var[i]
    return np.stack([mean, replicas.batch_var[i], moving_mean, moving_var])


def _spans(first: np.ndarray, last: np.ndarray) -> list[slice]:
    """Consecutive slices of rows (``first`` / ``last`` step of each,
    increasing) that each span fewer than :data:`metadata.MAX_RECORD_SPAN`
    steps: one record each, its steps exact as float32 offsets."""
    out, start = [], 0
    for i in range(1, len(first) + 1):
        if i == len(first) or last[i] - first[start] >= metadata.MAX_RECORD_SPAN:
            out.append(slice(start, i))
            start = i
    return out


def _step_rows(q: quantities.LayerQuantities, i: int | np.integer) -> quantities.LayerQuantities:
    """The quantities of step ``i`` of a block's :class:`LayerQuantities`."""
    pick = lambda v: v[i] if np.ndim(v) else v  # noqa: E731
    return quantities.LayerQuantities(**{f: pick(getattr(q, f)) for f in q.__dataclass_fields__})


@dataclasses.dataclass(frozen=True)
class _LogOwner:
    """What a :class:`resolution.LayerLog` logs: a layer's series, or one
    per-step metric (``key``), its records' tag per part and segment, and
    their metadata per part and columns."""

    key: str
    tag: Callable[[str, int], str]
    make_metadata: Callable[[str, tuple[str, ...]], summary_pb2.SummaryMetadata]

    @classmethod
    def of_layer(cls, info: metadata.LayerInfo) -> "_LogOwner":
        return cls(info.name, functools.partial(metadata.layer_log_tag, info.name),
                   functools.partial(metadata.layer_log_metadata, info))

    @classmethod
    def of_metric(cls, split: str, name: str) -> "_LogOwner":
        return cls(metadata.metric_tag(split, name), functools.partial(metadata.metric_log_tag, split, name),
                   lambda part, _: metadata.metric_log_metadata(split, name, part))


class Writer:
    """An event-file writer for BN statistics.

    Args:
        logdir: the run's directory (created if missing).
        flush_secs: a remote file (``gs://``...) is flushed this often; a
            local one gets each write at once.
        keep_history: also keep in memory the last this many logged steps of
            every layer series and metric (~350 bytes per layer per step),
            for :meth:`run_data`; 0 keeps nothing.
        max_queue: ignored (kept so that code written for earlier versions
            runs): each call writes at once, there is no queue.
    """

    def __init__(self, logdir: str | os.PathLike[str], flush_secs: float = DEFAULT_FLUSH_SECS, keep_history: int = 0,
                 max_queue: int | None = None) -> None:
        self._writer = eventfile.EventFile(logdir, flush_secs)
        self._keep = int(keep_history)
        # {layer: [LayerInfo, LAYER_SERIES, deque of (step, row)]}
        self.history: dict[str, list[Any]] | None = {} if self._keep else None
        self.metric_history: dict[str, collections.deque[tuple[int, float]]] | None = {} if self._keep else None
        # probe and population points
        self.sparse_history: dict[str, collections.deque[tuple[int, dict[str, float]]]] | None = (
            {} if self._keep else None)
        # replica series points, every logged step
        self.replica_history: dict[str, collections.deque[tuple[int, dict[str, float]]]] | None = (
            {} if self._keep else None)
        self.train_begins: list[dict[str, Any]] | None = [] if self._keep else None
        self._tags_with_metadata: set[str] = set()
        self._layers: dict[str, metadata.LayerInfo] = {}
        self._flush_secs = float(flush_secs)
        # Each layer's log of its per-step series, and its open segment per part: (first step, records).
        self._logs: dict[str, tuple[_LogOwner, resolution.LayerLog]] = {}
        self._segments: dict[tuple[str, str], tuple[int, int]] = {}
        self._keep_later: dict[str, set[int]] = {}  # steps to keep of layers whose log has not begun
        # Every layer log is written at least every flush_secs (and when it fills, PENDING_ROWS).
        self._logs_written_at = time.monotonic()
        self._templates: dict[tuple[str, ...], events.ScalarEvents] = {}
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        """The event file being written."""
        return self._writer.path

    def _value(self, tag: str, make_metadata: Callable[[], summary_pb2.SummaryMetadata],
               **payload: Any) -> summary_pb2.Summary.Value:
        value = summary_pb2.Summary.Value(tag=tag, **payload)
        if tag not in self._tags_with_metadata:
            # TensorBoard keeps the metadata of a tag's first record.
            value.metadata.CopyFrom(make_metadata())
            self._tags_with_metadata.add(tag)
        return value

    def _emit(self, step: int, values: list[summary_pb2.Summary.Value]) -> None:
        event = event_pb2.Event(step=int(step), wall_time=time.time(), summary=summary_pb2.Summary(value=values))
        self._writer.add_event(event)

    def _emit_scalars(self, tags: tuple[str, ...], make_metadata: Callable[[str], summary_pb2.SummaryMetadata],
                      steps: npt.ArrayLike, values: np.ndarray, wall_times: npt.ArrayLike | None) -> None:
        """Events of scalar ``values`` [S, len(tags)] at ``steps``. A first
        event carrying the tags' metadata is made with protobuf; every other
        one is filled into a serialized template (:mod:`events`): building
        ~20 protos per layer per step is the writer's main cost otherwise."""
        steps = np.asarray(steps, np.int64)
        wall_times = np.full(len(steps), time.time()) if wall_times is None else np.asarray(wall_times, np.float64)
        first = 0
        if any(tag not in self._tags_with_metadata for tag in tags):
            self._writer.add_event(event_pb2.Event(
                step=int(steps[0]), wall_time=float(wall_times[0]), summary=summary_pb2.Summary(value=[
                    self._value(tag, functools.partial(make_metadata, tag), tensor=events.scalar_tensor(float(v)))
                    for tag, v in zip(tags, values[0])])))
            first = 1
        if first < len(steps):
            template = self._templates.get(tags)
            if template is None:
                template = self._templates[tags] = events.ScalarEvents(tags)
            self._writer.add_serialized(template.serialize(steps[first:], wall_times[first:], values[first:]))

    def _forget_layer_metadata(self, info: metadata.LayerInfo) -> None:
        """A changed layer description goes into its tags' metadata again."""
        previous = self._layers.setdefault(info.name, info)
        if previous != info:
            self._layers[info.name] = info
            prefix = metadata.layer_tag(info.name, "")
            self._tags_with_metadata = {t for t in self._tags_with_metadata if not t.startswith(prefix)}

    def layer_series_rows(self, info: metadata.LayerInfo, steps: Steps, rows: npt.ArrayLike,
                          wall_times: npt.ArrayLike | None = None) -> None:
        """Logs precomputed values of :data:`metadata.LAYER_SERIES` of one
        layer: ``rows`` [S, len(LAYER_SERIES)] at ``steps`` [S].
        :meth:`layer_block` computes them from moments; this is for values
        computed elsewhere. ``wall_times`` is ignored (kept so that code
        written for earlier versions runs): the layer's records carry the
        time they are written."""
        rows = np.asarray(rows, np.float64).reshape(len(steps), len(metadata.LAYER_SERIES))
        with self._lock:
            self._forget_layer_metadata(info)
            self._log_rows(_LogOwner.of_layer(info), steps, metadata.LAYER_SERIES, rows)
            self._remember(info, steps, rows)

    def _remember(self, info: metadata.LayerInfo, steps: Steps, rows: np.ndarray) -> None:
        """Keeps the last ``keep_history`` rows of :data:`metadata.LAYER_SERIES`
        for :meth:`run_data` (with the lock held)."""
        if self.history is not None:
            entry = self.history.setdefault(info.name, [info, metadata.LAYER_SERIES,
                                                        collections.deque(maxlen=self._keep)])
            entry[0] = info
            entry[2].extend(zip(np.asarray(steps, np.int64).tolist(), rows))

    def layer_block(self, info: metadata.LayerInfo, steps: Steps, batch_mean: npt.ArrayLike, batch_var: npt.ArrayLike,
                    moving_mean: npt.ArrayLike, moving_var: npt.ArrayLike, updates: npt.ArrayLike,
                    samples_per_channel: npt.ArrayLike | None = None, init_mean: npt.ArrayLike | None = None,
                    init_var: npt.ArrayLike | None = None, wall_times: npt.ArrayLike | None = None,
                    snapshot_steps: npt.ArrayLike = (), series: bool = True,
                    replicas: Any = None) -> quantities.LayerQuantities:
        """Logs one layer at S steps at once: per step the aggregates of
        :data:`metadata.LAYER_SERIES` (unless ``series=False``) and, at the
        steps in ``snapshot_steps``, the per-channel rows; on several
        replicas also :data:`metadata.REPLICA_SERIES` per step and the
        per-replica tensor at the snapshot steps.

        Args:
            info: the layer.
            steps: [S] the step axis values (the optimizer's step after each update).
            batch_mean: [S, C].
            batch_var: [S, C].
            moving_mean: [S, C].
            moving_var: [S, C].
            updates: [S].
            samples_per_channel: as in :func:`quantities.compute`.
            init_mean: as in :func:`quantities.compute`.
            init_var: as in :func:`quantities.compute`.
            wall_times: [S] when each step ended (seconds; default now).
            snapshot_steps: the steps whose per-channel snapshot is written.
            series: write the per-step series (False: the snapshots only).
            replicas: the layer's :class:`tb_bnstats.capture.ReplicaBlock`
                (its moments per replica), or None on one replica; the
                moments above are then the global batch's.

        Returns:
            The :class:`quantities.LayerQuantities` ([S, C] fields).

        Raises:
            ValueError: moments without one value per channel and step.
        """
        steps = np.asarray(steps, np.int64).reshape(-1)
        q = quantities.compute(info, batch_mean, batch_var, moving_mean, moving_var, updates,
                               samples_per_channel, init_mean, init_var)
        if q.batch_mean.shape[0] != len(steps):
            raise ValueError(f"{info.name}: {q.batch_mean.shape[0]} rows of moments for {len(steps)} steps")
        if series:
            by_quantity = layer_series(q)
            if replicas is None:
                self.layer_series_rows(info, steps,
                                       np.stack([by_quantity[k] for k in metadata.LAYER_SERIES], axis=1), wall_times)
            else:
                self._with_replicas(info, steps, by_quantity, replica_series(info, batch_mean, batch_var, replicas))
        with self._lock:
            self._forget_layer_metadata(info)
            for i in np.flatnonzero(np.isin(steps, np.asarray(snapshot_steps, np.int64))):
                values = [self._value(metadata.layer_tag(info.name, metadata.CHANNELS_QUANTITY),
                                      lambda: metadata.layer_channels_metadata(info),
                                      tensor=_tensor_proto(snapshot_rows(_step_rows(q, i))))]
                if replicas is not None:
                    values.append(self._value(metadata.layer_tag(info.name, metadata.REPLICAS_QUANTITY),
                                              lambda: metadata.layer_replicas_metadata(info),
                                              tensor=_tensor_proto(replica_rows(replicas, i))))
                self._emit(steps[i], values)
        return q

    def _with_replicas(self, info: metadata.LayerInfo, steps: np.ndarray, layer: Mapping[str, Any],
                       replicas: Mapping[str, np.ndarray]) -> None:
        """Logs a layer's series ``layer`` and its :func:`replica_series`
        ``replicas`` ({quantity: [S]}) at ``steps``, as one log."""
        names = metadata.LAYER_SERIES + tuple(replicas)
        table = np.stack([layer[q] for q in metadata.LAYER_SERIES] + [replicas[q] for q in replicas], axis=1)
        with self._lock:
            self._forget_layer_metadata(info)
            self._log_rows(_LogOwner.of_layer(info), steps, names, table)
            self._remember(info, steps, table[:, :len(metadata.LAYER_SERIES)])
            if self.replica_history is not None:
                points = self.replica_history.setdefault(info.name, collections.deque(maxlen=self._keep))
                points.extend((int(step), dict(zip(replicas, row.tolist())))
                              for step, row in zip(steps, table[:, len(metadata.LAYER_SERIES):]))

    def _log_rows(self, owner: _LogOwner, steps: Steps, quantities_: tuple[str, ...], rows: np.ndarray) -> None:
        """Hands rows [S, Q] of ``quantities_`` at ``steps`` to the
        :class:`resolution.LayerLog` of ``owner`` and writes what is due
        (with the lock held)."""
        _, log = self._logs.get(owner.key, (owner, None))
        if log is not None and log.quantities != quantities_:  # other columns (replicas came or went)
            self._write_log(owner, log, final=True)
            log = None
        if log is None:
            log = resolution.LayerLog(quantities_)
            for step in sorted(self._keep_later.pop(owner.key, ())):
                log.keep(step)
        self._logs[owner.key] = (owner, log)
        log.add(steps, rows)
        if time.monotonic() - self._logs_written_at >= self._flush_secs:
            self._write_pending_logs()
        elif log.full():
            self._write_log(owner, log)

    def _write_log(self, owner: _LogOwner, log: resolution.LayerLog, final: bool = False) -> None:
        """Writes what ``log`` has waiting as a record of each part (with the
        lock held); ``final`` closes it (:meth:`resolution.LayerLog.take`)."""
        pending = log.take(final)
        for part in _spans(pending.steps, pending.steps):
            at = int(pending.steps[part][-1])
            self._log_record(owner, log, metadata.PART_STEPS, at,
                             np.column_stack([at - pending.steps[part], pending.rows[part]]))
        offsets = metadata.envelope_step_columns(len(log.quantities))
        for part in _spans(pending.intervals[:, 0], pending.intervals[:, 1]):
            table = pending.intervals[part].copy()
            at = int(table[:, 1].max())
            table[:, offsets] = at - table[:, offsets]
            self._log_record(owner, log, metadata.PART_ENVELOPE, at, table)

    def _log_record(self, owner: _LogOwner, log: resolution.LayerLog, part: str, step: int,
                    table: np.ndarray) -> None:
        """One record of a log's ``part`` at ``step``: a header row (its
        number in its segment) over ``table``, in the open segment's tag or
        a new one's (:data:`resolution.SEGMENT_RECORDS` records each)."""
        first, records_ = self._segments.get((owner.key, part), (step, resolution.SEGMENT_RECORDS))
        if records_ >= resolution.SEGMENT_RECORDS:
            first, records_ = step, 0
        self._segments[(owner.key, part)] = (first, records_ + 1)
        header = np.zeros((1, table.shape[1]))
        header[0, 0] = records_
        self._emit(step, [self._value(owner.tag(part, first), lambda: owner.make_metadata(part, log.quantities),
                                      tensor=_tensor_proto(np.concatenate([header, table])))])

    def layer(self, info: metadata.LayerInfo, step: int, batch_mean: npt.ArrayLike, batch_var: npt.ArrayLike,
              moving_mean: npt.ArrayLike, moving_var: npt.ArrayLike, updates: int,
              samples_per_channel: npt.ArrayLike | None = None, snapshot: bool = False,
              init_mean: npt.ArrayLike | None = None, init_var: npt.ArrayLike | None = None,
              series: bool = True) -> quantities.LayerQuantities:
        """Logs one layer at one step: :meth:`layer_block` of that step.

        Args:
            info: the layer.
            step: the step axis value (the optimizer's step after the update).
            batch_mean: one value per channel (any shape).
            batch_var: one value per channel (any shape).
            moving_mean: one value per channel (any shape).
            moving_var: one value per channel (any shape).
            updates: as in :func:`quantities.compute`.
            samples_per_channel: as in :func:`quantities.compute`.
            init_mean: as in :func:`quantities.compute`.
            init_var: as in :func:`quantities.compute`.
            snapshot: also write the per-channel snapshot.
            series: write the per-step series (False: the snapshot only).

        Returns:
            The :class:`quantities.LayerQuantities`.

        Raises:
            ValueError: moments without one value per channel.
        """
        row = lambda a: np.asarray(a, np.float64).reshape(1, -1)  # noqa: E731
        q = self.layer_block(info, [step], row(batch_mean), row(batch_var), row(moving_mean), row(moving_var),
                             [int(updates)], samples_per_channel, init_mean, init_var,
                             snapshot_steps=[step] if snapshot else (), series=series)
        return _step_rows(q, 0)

    def layer_moments(self, name: str, step: int, *, batch_mean: npt.ArrayLike, batch_var: npt.ArrayLike,
                      moving_mean: npt.ArrayLike, moving_var: npt.ArrayLike, updates: int, momentum: float,
                      epsilon: float, init_mean: Values = 0.0, init_var: Values = 1.0,
                      moving_var_unbiased: bool = False, samples_per_channel: npt.ArrayLike | None = None,
                      snapshot: bool = False, depth: int | None = None,
                      **layer_fields: Any) -> quantities.LayerQuantities:
        """:meth:`layer` for a custom loop: describe the layer by keywords.

        ``updates`` is how many times the moving averages were updated, this
        step's update included. Pass ``moving_var_unbiased=True`` and
        ``samples_per_channel`` when your moving variance averages
        Bessel-corrected batch variances (PyTorch-style).
        """
        channels = int(np.asarray(batch_mean).size)
        if depth is None:
            depth = self._layers[name].depth if name in self._layers else len(self._layers)
        info = metadata.LayerInfo(
            name=name, channels=channels, momentum=float(momentum), epsilon=float(epsilon),
            init_mean=float(np.mean(init_mean)), init_var=float(np.mean(init_var)),
            moving_var_unbiased=bool(moving_var_unbiased), depth=int(depth),
            **{"framework": "custom", **layer_fields},
        )
        return self.layer(info, step, batch_mean, batch_var, moving_mean, moving_var, updates,
                          samples_per_channel=samples_per_channel, snapshot=snapshot,
                          init_mean=np.broadcast_to(np.asarray(init_mean, np.float64), (channels,)),
                          init_var=np.broadcast_to(np.asarray(init_var, np.float64), (channels,)))

    def probe(self, info: metadata.LayerInfo, step: int, values: Mapping[str, float]) -> None:
        """Logs one layer's train/inference probe series
        (:data:`metadata.PROBE_SERIES`, e.g. from
        :func:`quantities.probe_series`) at ``step``. Log them at a step where
        :meth:`layer` logs the layer's series too: readers align a layer's
        series on the union of their steps."""
        self._sparse_series(info, step, values, metadata.PROBE_SERIES, "probe")

    def population(self, info: metadata.LayerInfo, step: int, values: Mapping[str, float]) -> None:
        """Logs one layer's population-statistics series
        (:data:`metadata.POPULATION_SERIES`, from
        :func:`quantities.population_series`) at ``step``, a step where
        :meth:`layer` logs the layer's series too."""
        self._sparse_series(info, step, values, metadata.POPULATION_SERIES, "population")

    def _sparse_series(self, info: metadata.LayerInfo, step: int, values: Mapping[str, float], known: tuple[str, ...],
                       what: str) -> None:
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"unknown {what} series {sorted(unknown)}; known: {list(known)}")
        with self._lock:
            # The layer's own values at that step, to compare with, are kept one by one.
            if info.name in self._logs:
                self._logs[info.name][1].keep(int(step))
            else:
                self._keep_later.setdefault(info.name, set()).add(int(step))
            self._emit(step, [self._value(metadata.layer_tag(info.name, q),
                                          functools.partial(metadata.layer_series_metadata, info, q),
                                          tensor=events.scalar_tensor(float(v))) for q, v in values.items()])
            if self.sparse_history is not None:
                points = self.sparse_history.setdefault(info.name, collections.deque(maxlen=self._keep))
                points.append((int(step), {q: float(v) for q, v in values.items()}))

    def metrics(self, split: str, values: Mapping[str, float], step: int) -> None:
        """Logs scalar metrics (``loss``, ``accuracy``...) for ``split`` in
        :data:`metadata.METRIC_SPLITS` at ``step``: ``{name: value}``."""
        self.metrics_block(split, [step], {name: [v] for name, v in values.items()})

    def metrics_block(self, split: str, steps: Steps, values: Mapping[str, npt.ArrayLike],
                      wall_times: npt.ArrayLike | None = None) -> None:
        """Logs scalar metrics for ``split`` at S ``steps``: ``values`` is
        ``{name: [S] values}``, ``wall_times`` [S] (default now).

        Raises:
            ValueError: an unknown split.
        """
        if split not in metadata.METRIC_SPLITS:
            raise ValueError(f"split must be one of {list(metadata.METRIC_SPLITS)}, got {split!r}")
        if not values or not len(steps):
            return
        names = tuple(values)
        tags = tuple(metadata.metric_tag(split, name) for name in names)
        name_of = dict(zip(tags, names))
        table = np.stack([np.asarray(values[name], np.float64).reshape(-1) for name in names], axis=1)
        with self._lock:
            if split in metadata.PER_STEP_SPLITS:  # one log per metric, as a layer's series
                for name, column in zip(names, table.T):
                    self._log_rows(_LogOwner.of_metric(split, name), steps, (name,), column[:, None])
            else:
                self._emit_scalars(tags, lambda tag: metadata.metric_metadata(split, name_of[tag]), steps, table,
                                   wall_times)
            if self.metric_history is not None:
                step_list = np.asarray(steps, np.int64).tolist()
                for name, column in zip(names, table.T):
                    points = self.metric_history.setdefault(f"{split}/{name}", collections.deque(maxlen=self._keep))
                    points.extend(zip(step_list, column.tolist()))

    def findings(self, step: int, findings: Iterable[dict[str, Any]]) -> None:
        """Logs a diagnosis: ``findings`` is a list of JSON-able dicts (see
        :data:`metadata.DIAGNOSIS_TAG`)."""
        with self._lock:
            self._emit(step, [self._value(metadata.DIAGNOSIS_TAG, metadata.diagnosis_metadata,
                                          tensor=_json_proto(list(findings)))])

    def train_begin(self, step: int, record: Mapping[str, Any]) -> None:
        """Logs what the callback found at the start of a ``fit`` (see
        :data:`metadata.TRAIN_BEGIN_TAG`): a JSON-able dict with ``step``."""
        record = {**record, "step": int(step)}
        with self._lock:
            self._emit(step, [self._value(metadata.TRAIN_BEGIN_TAG, metadata.train_begin_metadata,
                                          tensor=_json_proto(record))])
            if self.train_begins is not None:
                self.train_begins.append(record)

    def run_data(self) -> records.RunData:
        """What this writer wrote, as a :class:`tb_bnstats.format.records.RunData`
        (series only, no snapshots), as a reader would read it back.

        Raises:
            ValueError: the writer was made with ``keep_history=0``.
        """
        if self.history is None:
            raise ValueError("Writer(keep_history=N) keeps what it writes; this one did not")
        # Made with keep_history: every history is kept.
        assert self.sparse_history is not None and self.replica_history is not None
        assert self.metric_history is not None and self.train_begins is not None
        infos: dict[str, metadata.LayerInfo] = {}
        by_layer: dict[str, dict[str, records.Series]] = {}
        for name, (info, keys, rows) in self.history.items():
            infos[name] = info
            steps = np.array([step for step, _ in rows], np.int64)
            table = np.stack([row for _, row in rows]) if rows else np.zeros((0, len(keys)))
            series = by_layer[name] = {k: (steps, table[:, i]) for i, k in enumerate(keys)}
            sparse: dict[str, list[tuple[int, float]]] = {}
            for step, values in [*self.sparse_history.get(name, ()), *self.replica_history.get(name, ())]:
                for q, v in values.items():
                    sparse.setdefault(q, []).append((step, v))
            for q, points in sparse.items():
                series[q] = (np.array([s for s, _ in points], np.int64), np.array([v for _, v in points]))
        metrics = {k: (np.array([s for s, _ in pts], np.int64), np.array([v for _, v in pts], np.float64))
                   for k, pts in self.metric_history.items()}
        return records.run_data(infos, by_layer, metrics=metrics, train_begins=self.train_begins)

    def _write_pending_logs(self, final: bool = False) -> None:
        """Writes what every layer log holds back (with the lock held)."""
        for owner, log in self._logs.values():
            self._write_log(owner, log, final)
        self._logs_written_at = time.monotonic()

    def flush(self) -> None:
        """Writes what the layer logs hold back and pending records to disk."""
        with self._lock:
            self._write_pending_logs()
        self._writer.flush()

    def close(self) -> None:
        """Writes the layer logs' last rows (:meth:`resolution.LayerLog.take`
        with ``final``), flushes and closes the event file."""
        with self._lock:
            self._write_pending_logs(final=True)
            self._logs.clear()
        self._writer.close()

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
