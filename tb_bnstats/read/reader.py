"""Reads the log format back through TensorBoard's data provider, so it works
for every logdir TensorBoard can read. The plugin and :func:`load` share it.

:func:`load` returns, per run, a :class:`tb_bnstats.format.records.RunData`::

    runs = tb_bnstats.load("logs")
    layer = runs["run1"].layers["conv1_bn"]
    layer.steps                      # int64 [n]
    layer.series["mean_gap/max"]     # float64 [n], aligned with layer.steps
    layer.snapshot_steps             # int64 [k]
    layer.snapshots["batch_mean"]    # float64 [k, channels]
    runs["run1"].metrics["train/loss"]   # (steps, values)
    runs["run1"].train_begins        # [{"step": 0, "resumed": [], "moving_at_initializer": []}, ...]
"""

import collections
import dataclasses
import json
import logging
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from tensorboard.data import provider

from tb_bnstats.format import filesystem, metadata, names, records
from tb_bnstats.read import integrity, logs

# A downsample that keeps every point the provider holds. Not much larger: with 2**62 the plugin's
# routes answered 500 under TensorBoard's data server (measured; the in-process reader accepts it).
READ_ALL = 10**9


@dataclasses.dataclass
class TagIndex:
    """What one run holds: layer tags by layer and quantity, and metric tags.
    ``newer_versions``: format versions newer than this reader's that its
    records carry (read as far as possible, :func:`metadata.parse_content`)."""

    layer_infos: dict[str, metadata.LayerInfo]
    layer_tags: dict[str, dict[str, str]]  # layer -> quantity -> tag
    channel_tags: dict[str, str]  # layer -> tag
    metric_tags: dict[str, str]  # "train/loss" -> tag
    max_step: dict[str, int]  # tag -> max step
    diagnosis_tag: str | None = None
    train_begin_tag: str | None = None
    newer_versions: set[int] = dataclasses.field(default_factory=set)
    replica_tags: dict[str, str] = dataclasses.field(default_factory=dict)  # layer -> per-replica tensor tag
    # layer -> the segment tags of its log (format version 2)
    log_tags: dict[str, list[logs.LogTag]] = dataclasses.field(default_factory=dict)
    # "train/loss" -> the segment tags of a per-step metric's log (format version 2)
    metric_logs: dict[str, list[logs.LogTag]] = dataclasses.field(default_factory=dict)
    # The run as the data provider names it (what its reads take): "." for the log directory itself,
    # which the index is keyed under its own name (tb_bnstats.format.names).
    source: str = ""


def index_runs(data_provider: Any, ctx: Any, experiment_id: str = "",
               logdir: str | None = None) -> dict[str, TagIndex]:
    """Lists every run holding bn_stats data and what it holds.

    Args:
        data_provider: a TensorBoard data provider.
        ctx: a ``tensorboard.context.RequestContext``.
        experiment_id: the experiment ("" for a plain logdir).
        logdir: the log directory the provider reads, when known: the run in
            the log directory itself is then named after it
            (:func:`tb_bnstats.format.names.run_name`) instead of ``"."``.

    Returns:
        ``{run name: TagIndex}``, each index's ``source`` the provider's name
        of the run; tags whose metadata is not ours or unreadable are left
        out.
    """
    out: collections.defaultdict[str, TagIndex] = collections.defaultdict(
        lambda: TagIndex({}, collections.defaultdict(dict), {}, {}, {}))
    listings = (
        data_provider.list_scalars(ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME),
        data_provider.list_tensors(ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME),
    )
    for listing in listings:
        for run, tags in listing.items():
            for tag, ts in tags.items():
                content = metadata.parse_content(ts.plugin_content)
                if content is None:
                    continue
                index = out[run]
                index.max_step[tag] = ts.max_step
                if metadata.is_newer(content):
                    index.newer_versions.add(content["version"])
                if content["kind"] == metadata.KIND_DIAGNOSIS:
                    index.diagnosis_tag = tag
                    continue
                if content["kind"] == metadata.KIND_TRAIN_BEGIN:
                    index.train_begin_tag = tag
                    continue
                if content["kind"] == metadata.KIND_METRIC:
                    index.metric_tags[f"{content['split']}/{content['name']}"] = tag
                    continue
                if content["kind"] == metadata.KIND_METRIC_LOG:
                    log = logs.log_tag(content, tag)
                    if log is not None:
                        index.metric_logs.setdefault(f"{content['split']}/{content['name']}", []).append(log)
                    continue
                try:
                    info = metadata.LayerInfo.from_dict(content["layer"])
                except (TypeError, ValueError, KeyError):
                    continue
                index.layer_infos.setdefault(info.name, info)
                if content["kind"] == metadata.KIND_LAYER_LOG:
                    log = logs.log_tag(content, tag)
                    if log is not None:
                        index.log_tags.setdefault(info.name, []).append(log)
                elif content["kind"] == metadata.KIND_LAYER_CHANNELS:
                    index.channel_tags[info.name] = tag
                elif content["kind"] == metadata.KIND_LAYER_REPLICAS:
                    index.replica_tags[info.name] = tag
                else:
                    index.layer_tags[info.name][content["quantity"]] = tag
    # Named over every run the provider has (bn_stats data or not), as the integrity check names them.
    naming = {source: source for source in out}
    if logdir is not None:
        every = set(out) | {r.run_name for r in data_provider.list_runs(ctx, experiment_id=experiment_id)}
        naming = names.run_names(every, logdir)
    named: dict[str, TagIndex] = {}
    for source, index in out.items():
        index.source = source
        named[naming[source]] = index
    return named


# Tags per data-provider read in read_series: the provider answers with Python
# objects (~150 bytes a point); read all 4,200 tags of a 200-layer run at once
# (1000 points each) and that is ~0.6 GB at the peak of one request. In chunks,
# only the numpy arrays (16 bytes a point) add up.
READ_CHUNK_TAGS = 32


def read_series(data_provider: Any, ctx: Any, run: str, tags: Iterable[str], downsample: int,
                experiment_id: str = "") -> dict[str, records.Series]:
    """``{tag: (steps, values)}`` for scalar tags of one run."""
    tags = list(tags)
    out: dict[str, records.Series] = {}
    for start in range(0, len(tags), READ_CHUNK_TAGS):
        result = data_provider.read_scalars(
            ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME, downsample=downsample,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=tags[start:start + READ_CHUNK_TAGS]),
        ).get(run, {})
        for tag, data in result.items():
            out[tag] = (np.array([d.step for d in data], np.int64), np.array([d.value for d in data], np.float64))
    return out


def read_snapshots(data_provider: Any, ctx: Any, run: str, tag: str, downsample: int,
                   experiment_id: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``(steps [k], tensor [k, ...])`` of one layer's snapshots: ``[k, rows,
    channels]`` of ``bn/<layer>/channels``, ``[k, rows, replicas, channels]``
    of ``bn/<layer>/replicas``."""
    result = data_provider.read_tensors(
        ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME, downsample=downsample,
        run_tag_filter=provider.RunTagFilter(runs=[run], tags=[tag]),
    ).get(run, {}).get(tag, [])
    steps = np.array([d.step for d in result], np.int64)
    arrays = [np.asarray(d.numpy, np.float64) for d in result]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:  # the layer changed shape between snapshots: keep the last shape
        last = arrays[-1].shape
        keep = [i for i, a in enumerate(arrays) if a.shape == last]
        steps, arrays = steps[keep], [arrays[i] for i in keep]
    return steps, (np.stack(arrays) if arrays else np.zeros((0, 0, 0)))


def series_by_layer(index: TagIndex, raw: Mapping[str, records.Series]) -> dict[str, dict[str, records.Series]]:
    """``{layer: {quantity: (steps, values)}}`` from ``raw`` ``{tag: (steps,
    values)}`` (what :func:`read_series` read of the index's layer tags)."""
    out: collections.defaultdict[str, dict[str, records.Series]] = collections.defaultdict(dict)
    for layer, tags in index.layer_tags.items():
        for quantity, tag in tags.items():
            if tag in raw:
                out[layer][quantity] = raw[tag]
    return out


def with_logs(series: dict[str, dict[str, records.Series]],
              layer_logs: Mapping[str, logs.LayerLogData]) -> dict[str, records.Envelope]:
    """Adds each layer log's full-resolution series to ``series`` (``{layer:
    {quantity: (steps, values)}}``, the scalar tags' as
    :func:`series_by_layer` gives them) and returns the logs' envelopes."""
    for name, log in layer_logs.items():
        series[name] = {**series.get(name, {}), **log.series}
    return {name: log.envelope for name, log in layer_logs.items()}


def metric_points(metric_logs: Mapping[str, logs.LayerLogData]) -> dict[str, records.Series]:
    """``{"train/loss": (steps, values)}`` of per-step metrics' logs: their
    full-resolution points and each interval's min and max
    (:func:`records.drawn`)."""
    out = {}
    for key, log in metric_logs.items():
        name = key.split("/", 1)[1]
        out[key] = records.drawn(log.series.get(name), log.envelope, name)
    return out


def layer_series_tags(index: TagIndex) -> list[str]:
    """Every layer series tag of the index."""
    return [tag for tags in index.layer_tags.values() for tag in tags.values()]


def read_run(data_provider: Any, ctx: Any, index: TagIndex, downsample: int, experiment_id: str = "",
             snapshots: bool = True) -> records.RunData:
    """One run's records (:func:`tb_bnstats.format.records.run_data`):
    ``downsample`` points per tag at most, the snapshots unless
    ``snapshots=False``."""
    source = index.source
    raw = read_series(data_provider, ctx, source, layer_series_tags(index) + list(index.metric_tags.values()),
                      downsample, experiment_id)
    series = series_by_layer(index, raw)
    envelopes = with_logs(series, logs.read_logs(data_provider, ctx, source, index.log_tags, downsample,
                                                 experiment_id))
    snaps = {name: read_snapshots(data_provider, ctx, source, tag, downsample, experiment_id)
             for name, tag in index.channel_tags.items()} if snapshots else None
    replicas = {name: read_snapshots(data_provider, ctx, source, tag, downsample, experiment_id)
                for name, tag in index.replica_tags.items()} if snapshots else None
    metrics = {key: raw[tag] for key, tag in index.metric_tags.items() if tag in raw}
    metrics.update(metric_points(logs.read_logs(data_provider, ctx, source, index.metric_logs, downsample,
                                                experiment_id)))
    return records.run_data(
        index.layer_infos, series, envelopes=envelopes, metrics=metrics,
        snapshots_by_layer=snaps, replicas_by_layer=replicas,
        stored_findings=read_stored_findings(data_provider, ctx, index, experiment_id),
        train_begins=read_train_begins(data_provider, ctx, index, experiment_id),
        newer_format_versions=index.newer_versions)


def read_stored_findings(data_provider: Any, ctx: Any, index: TagIndex, experiment_id: str = "") -> list[Any] | None:
    """The last findings list the callback wrote for the run of ``index``, or None."""
    records = _json_records(data_provider, ctx, index.source, index.diagnosis_tag, 1, experiment_id)
    return records[-1] if records and isinstance(records[-1], list) else None


def read_train_begins(data_provider: Any, ctx: Any, index: TagIndex,
                      experiment_id: str = "") -> list[dict[str, Any]]:
    """Every record of :data:`metadata.TRAIN_BEGIN_TAG` for the run of
    ``index`` (dicts, in step order); unreadable ones are left out."""
    records = _json_records(data_provider, ctx, index.source, index.train_begin_tag, READ_ALL, experiment_id)
    return [r for r in records if isinstance(r, dict) and isinstance(r.get("step"), int)]


def _json_records(data_provider: Any, ctx: Any, run: str, tag: str | None, downsample: int,
                  experiment_id: str) -> list[Any]:
    """The JSON values of a scalar DT_STRING tensor tag (the last
    ``downsample`` of them), in step order; [] when none or unreadable."""
    if tag is None:
        return []
    out: list[Any] = []
    data = data_provider.read_tensors(
        ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME, downsample=downsample,
        run_tag_filter=provider.RunTagFilter(runs=[run], tags=[tag]),
    ).get(run, {}).get(tag, [])
    for datum in data:
        try:
            value = np.asarray(datum.numpy).reshape(-1)[0]
            out.append(json.loads(value.decode("utf-8") if isinstance(value, bytes) else str(value)))
        except (ValueError, UnicodeDecodeError, IndexError):
            continue
    return out


class _DataLossNotes(logging.Filter):
    """Notes the records TensorBoard's Python reader stops at: it logs
    ``Truncated record in <path> (corrupted record at <offset>)`` at debug
    level and reads no further in that file. Lets through only what the
    logger's level let through before."""

    PATTERN = re.compile(r"^Truncated record in (.*) \(corrupted record at (\d+)\)$")

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level
        self.seen: list[tuple[str, int]] = []

    def filter(self, record: logging.LogRecord) -> bool:
        match = self.PATTERN.match(record.getMessage())
        if match:
            self.seen.append((os.path.normpath(match.group(1)), int(match.group(2))))
        return record.levelno >= self.level


def multiplexer_provider(logdir: str | os.PathLike[str], data_loss: list[tuple[str, int]] | None = None) -> Any:
    """An in-process TensorBoard data provider over ``logdir`` that keeps every
    point of this plugin (TensorBoard's defaults keep 10 per tag for it).
    ``data_loss``, a list, receives ``(path, offset)`` of each corrupted
    record the reader stopped at. A URL (``s3://...``) is read through
    TensorBoard's own file systems unless this process imported TensorFlow
    (:func:`tb_bnstats.format.filesystem.read_url_without_tensorflow`)."""
    if filesystem.is_url(str(logdir)):
        filesystem.read_url_without_tensorflow(str(logdir))
    from tensorboard.backend.event_processing import data_provider as mdp
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.util import tb_logging

    multiplexer = pem.EventMultiplexer(tensor_size_guidance={metadata.PLUGIN_NAME: 0})
    multiplexer.AddRunsFromDirectory(str(logdir))
    tb_logger = tb_logging.get_logger()
    level = tb_logger.level
    notes = _DataLossNotes(tb_logger.getEffectiveLevel())
    tb_logger.addFilter(notes)
    tb_logger.setLevel(logging.DEBUG)
    try:
        multiplexer.Reload()
    finally:
        tb_logger.setLevel(level)
        tb_logger.removeFilter(notes)
    if data_loss is not None:
        data_loss.extend(notes.seen)
    return mdp.MultiplexerDataProvider(multiplexer, str(logdir))


def load(logdir: str | os.PathLike[str], run: str | None = None) -> dict[str, records.RunData]:
    """Every run under ``logdir`` with bn_stats data (or just ``run``), all
    points, as numpy arrays. See the module docstring for the layout.

    Args:
        logdir: a TensorBoard log directory.
        run: only this run, by its name (:mod:`tb_bnstats.format.names`) or
            as TensorBoard names it (``"."`` for ``logdir`` itself).

    Returns:
        ``{run name: RunData}``, each run named by
        :func:`tb_bnstats.format.names.run_name`: its directory's path
        relative to ``logdir``, and ``logdir`` itself by its own name.

    Raises:
        KeyError: ``run`` is given and has no bn_stats data.

    Parts of event files that cannot be read (a corrupted record, a file cut
    off) are left out with a ``RuntimeWarning`` each
    (:class:`tb_bnstats.read.integrity.EventFileCheck`); so are records of a
    newer format version than this one reads, read as far as possible.
    """
    from tensorboard import context

    data_loss: list[tuple[str, int]] = []
    data_provider = multiplexer_provider(logdir, data_loss)
    ctx = context.RequestContext()
    indexes = index_runs(data_provider, ctx, logdir=str(logdir))
    if run is not None:
        by_source = {index.source: name for name, index in indexes.items()}
        if run not in indexes and run in by_source:  # TensorBoard's name of it (".": the logdir itself)
            run = by_source[run]
        if run not in indexes:
            raise KeyError(f"no bn_stats data for run {run!r} under {logdir}; runs: {sorted(indexes)}")
        indexes = {run: indexes[run]}
    integrity.warn_file_problems(logdir, None if run is None else indexes[run].source, data_loss)
    for name, index in indexes.items():
        if index.newer_versions:
            warnings.warn(f"tb_bnstats: run {name!r} was {metadata.newer_version_message(index.newer_versions)}",
                          RuntimeWarning, stacklevel=2)
    return {name: read_run(data_provider, ctx, index, READ_ALL) for name, index in indexes.items()}
