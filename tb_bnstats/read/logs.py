"""Reads the layer logs of format version 2 (:data:`metadata.KIND_LAYER_LOG`):
the full-resolution rows and the interval envelopes of each layer, from every
segment tag, back into per-quantity series and a
:class:`tb_bnstats.format.records.Envelope`.

A record's first row is its header (its number in its segment); the rows
after it hold step offsets below the record's step (:mod:`metadata`).
"""

import collections
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from tensorboard.data import provider

from tb_bnstats.format import metadata, records

# Tags per data-provider read (as read_series: Python objects per record add up).
READ_CHUNK_TAGS = 32


@dataclasses.dataclass(frozen=True)
class LogTag:
    """One segment tag of a layer log: its ``part`` and the quantities its columns follow."""

    tag: str
    part: str
    quantities: tuple[str, ...]


@dataclasses.dataclass
class LayerLogData:
    """One layer's log as read: ``series`` ``{quantity: (steps, values)}`` of
    the full-resolution rows, the ``envelope``; how many records were read,
    and how many the segments' record numbers say were written
    (``expected_records``: more when the reader was given a sample)."""

    series: dict[str, records.Series]
    envelope: records.Envelope
    records: int = 0
    expected_records: int = 0

    def holds(self, quantity: str) -> bool:
        """Whether the log has ``quantity`` (one by one, in envelopes, or both)."""
        return quantity in self.series or quantity in self.envelope.stats


def log_tag(content: Mapping[str, Any], tag: str) -> LogTag | None:
    """The :class:`LogTag` of a ``layer_log`` tag's metadata, None when malformed."""
    part, quantities = content.get("part"), content.get("quantities")
    if part not in (metadata.PART_STEPS, metadata.PART_ENVELOPE) or not isinstance(quantities, list) or not all(
            isinstance(q, str) for q in quantities):
        return None
    return LogTag(tag, part, tuple(quantities))


def _columns(part: str, quantities: Sequence[str]) -> int:
    if part == metadata.PART_STEPS:
        return 1 + len(quantities)
    return len(metadata.ENVELOPE_HEAD) + len(metadata.ENVELOPE_STATS) * len(quantities)


def decode(log_tags: Iterable[LogTag], data: Mapping[str, Sequence[Any]]) -> LayerLogData:
    """One layer's log from the records read of its tags.

    Args:
        log_tags: the layer's segment tags.
        data: ``{tag: [datum]}`` as a data provider's ``read_tensors`` gives
            them (``.step``, ``.numpy``).

    Returns:
        The :class:`LayerLogData`; records of another shape than their
        metadata says are left out (and count as missing).
    """
    detail: collections.defaultdict[str, list[tuple[np.ndarray, np.ndarray]]] = collections.defaultdict(list)
    envelopes: list[tuple[tuple[str, ...], np.ndarray]] = []
    count = expected = 0
    for log in log_tags:
        numbers = []
        for datum in data.get(log.tag, ()):
            table = np.asarray(datum.numpy, np.float64)
            if table.ndim != 2 or table.shape[0] < 1 or table.shape[1] != _columns(log.part, log.quantities):
                continue
            numbers.append(int(table[0, 0]))
            rows, step = table[1:], int(datum.step)
            if log.part == metadata.PART_STEPS:
                steps = step - np.rint(rows[:, 0]).astype(np.int64)
                for i, q in enumerate(log.quantities):
                    detail[q].append((steps, rows[:, 1 + i]))
            else:
                envelopes.append((log.quantities, _absolute(rows, step, len(log.quantities))))
        count += len(numbers)
        expected += max(numbers) + 1 if numbers else 0
    series = {}
    for q, parts in detail.items():
        steps = np.concatenate([s for s, _ in parts])
        values = np.concatenate([v for _, v in parts])
        order = np.argsort(steps, kind="stable")
        series[q] = (steps[order], values[order])
    return LayerLogData(series, _envelope(envelopes), count, expected)


def _absolute(rows: np.ndarray, step: int, quantities: int) -> np.ndarray:
    """Envelope rows with their step offsets made steps again."""
    out = rows.copy()
    steps = metadata.envelope_step_columns(quantities)
    out[:, steps] = step - np.rint(out[:, steps])
    return out


def _envelope(parts: Sequence[tuple[tuple[str, ...], np.ndarray]]) -> records.Envelope:
    """One :class:`records.Envelope` of the envelope rows of every record
    (their quantities may differ: a quantity missing from a record is NaN
    there)."""
    if not parts:
        return records.Envelope.empty()
    table = np.concatenate([rows for _, rows in parts])
    order = np.argsort(table[:, 0], kind="stable")
    head, width = len(metadata.ENVELOPE_HEAD), len(metadata.ENVELOPE_STATS)
    every = list(dict.fromkeys(q for quantities, _ in parts for q in quantities))
    stats: dict[str, dict[str, np.ndarray]] = {}
    for q in every:
        columns = []
        for quantities, rows in parts:
            if q in quantities:
                at = head + quantities.index(q) * width
                columns.append(rows[:, at:at + width])
            else:
                columns.append(np.full((len(rows), width), np.nan))
        block = np.concatenate(columns)[order]
        stats[q] = {s: block[:, i] for i, s in enumerate(metadata.ENVELOPE_STATS)}
    as_int = lambda c: np.rint(table[order, c]).astype(np.int64)  # noqa: E731
    return records.Envelope(as_int(0), as_int(1), as_int(2), as_int(3), stats)


def read_logs(data_provider: Any, ctx: Any, run: str, log_tags: Mapping[str, Sequence[LogTag]], downsample: int,
              experiment_id: str = "") -> dict[str, LayerLogData]:
    """``{layer: LayerLogData}`` of the layers in ``log_tags`` (``{layer:
    [LogTag]}``), at most ``downsample`` records per tag."""
    tags = [log.tag for logs in log_tags.values() for log in logs]
    data: dict[str, Sequence[Any]] = {}
    for start in range(0, len(tags), READ_CHUNK_TAGS):
        data.update(data_provider.read_tensors(
            ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME, downsample=downsample,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=tags[start:start + READ_CHUNK_TAGS]),
        ).get(run, {}))
    return {layer: decode(logs, data) for layer, logs in log_tags.items()}
