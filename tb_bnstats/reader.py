"""Reads the log format back through TensorBoard's data provider, so it works
for every logdir TensorBoard can read. The plugin and :func:`load` share it.

:func:`load` returns, per run, a :class:`RunData`::

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
import time
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np
from tensorboard.data import provider

from tb_bnstats import eventfile, metadata

# An event file that ends inside a record is being written, unless it has not
# changed for this long: then it was cut off (a killed run, a full disk).
STALE_S = 30.0


@dataclasses.dataclass
class LayerData:
    info: metadata.LayerInfo
    steps: np.ndarray
    series: Dict[str, np.ndarray]
    snapshot_steps: np.ndarray
    snapshots: Dict[str, np.ndarray]


@dataclasses.dataclass
class RunData:
    layers: Dict[str, LayerData]
    metrics: Dict[str, Tuple[np.ndarray, np.ndarray]]
    # The findings the callback stored at the end of its last fit (a list of
    # dicts), None when none were stored. ``tb_bnstats.diagnose`` recomputes.
    stored_findings: Optional[list] = None
    # The callback's record of each fit's start (metadata.TRAIN_BEGIN_TAG),
    # dicts with "step", "resumed", "moving_at_initializer", in step order.
    train_begins: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class TagIndex:
    """What one run holds: layer tags by layer and quantity, and metric tags."""

    layer_infos: Dict[str, metadata.LayerInfo]
    layer_tags: Dict[str, Dict[str, str]]  # layer -> quantity -> tag
    channel_tags: Dict[str, str]  # layer -> tag
    metric_tags: Dict[str, str]  # "train/loss" -> tag
    max_step: Dict[str, int]  # tag -> max step
    diagnosis_tag: Optional[str] = None
    train_begin_tag: Optional[str] = None


def index_runs(data_provider, ctx, experiment_id="") -> Dict[str, TagIndex]:
    """Lists every run holding bn_stats data and what it holds."""
    out = collections.defaultdict(lambda: TagIndex({}, collections.defaultdict(dict), {}, {}, {}))
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
                if content["kind"] == metadata.KIND_DIAGNOSIS:
                    index.diagnosis_tag = tag
                    continue
                if content["kind"] == metadata.KIND_TRAIN_BEGIN:
                    index.train_begin_tag = tag
                    continue
                if content["kind"] == metadata.KIND_METRIC:
                    index.metric_tags[f"{content['split']}/{content['name']}"] = tag
                    continue
                try:
                    info = metadata.LayerInfo.from_dict(content["layer"])
                except (TypeError, ValueError, KeyError):
                    continue
                index.layer_infos.setdefault(info.name, info)
                if content["kind"] == metadata.KIND_LAYER_CHANNELS:
                    index.channel_tags[info.name] = tag
                else:
                    index.layer_tags[info.name][content["quantity"]] = tag
    return dict(out)


# Tags per data-provider read in read_series: the provider answers with Python
# objects (~150 bytes a point); read all 4,200 tags of a 200-layer run at once
# (1000 points each) and that is ~0.6 GB at the peak of one request. In chunks,
# only the numpy arrays (16 bytes a point) add up.
READ_CHUNK_TAGS = 32


def read_series(data_provider, ctx, run, tags, downsample, experiment_id=""):
    """``{tag: (steps, values)}`` for scalar tags of one run."""
    tags = list(tags)
    out = {}
    for start in range(0, len(tags), READ_CHUNK_TAGS):
        result = data_provider.read_scalars(
            ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME, downsample=downsample,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=tags[start:start + READ_CHUNK_TAGS]),
        ).get(run, {})
        for tag, data in result.items():
            out[tag] = (np.array([d.step for d in data], np.int64), np.array([d.value for d in data], np.float64))
    return out


def read_snapshots(data_provider, ctx, run, tag, downsample, experiment_id=""):
    """``(steps [k], tensor [k, rows, channels])`` of one layer's snapshots."""
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
    return steps, (np.stack(arrays) if arrays else np.zeros((0, len(metadata.SNAPSHOT_ROWS), 0)))


def aligned(series_by_quantity):
    """``{quantity: (steps, values)}`` -> ``(steps, {quantity: values})`` on
    the union of the steps, NaN where a quantity has no point."""
    if not series_by_quantity:
        return np.zeros(0, np.int64), {}
    steps = np.unique(np.concatenate([np.asarray(s, np.int64) for s, _ in series_by_quantity.values()]))
    out = {}
    for quantity, (s, v) in series_by_quantity.items():
        full = np.full(steps.shape, np.nan)
        full[np.searchsorted(steps, s)] = v
        out[quantity] = full
    return steps, out


def read_run(data_provider, ctx, run, index: TagIndex, downsample, experiment_id="") -> RunData:
    tag_to_layer = {tag: (layer, q) for layer, tags in index.layer_tags.items() for q, tag in tags.items()}
    raw = read_series(data_provider, ctx, run, list(tag_to_layer) + list(index.metric_tags.values()),
                      downsample, experiment_id)
    by_layer = collections.defaultdict(dict)
    for tag, (layer, quantity) in tag_to_layer.items():
        if tag in raw:
            by_layer[layer][quantity] = raw[tag]
    layers = {}
    for name, info in index.layer_infos.items():
        steps, series = aligned(by_layer.get(name, {}))
        snap_steps, snaps = np.zeros(0, np.int64), {}
        if name in index.channel_tags:
            snap_steps, tensor = read_snapshots(data_provider, ctx, run, index.channel_tags[name], downsample, experiment_id)
            if tensor.ndim == 3 and tensor.shape[1] == len(metadata.SNAPSHOT_ROWS):
                snaps = {row: tensor[:, i, :] for i, row in enumerate(metadata.SNAPSHOT_ROWS)}
        layers[name] = LayerData(info, steps, series, snap_steps, snaps)
    metrics = {key: raw[tag] for key, tag in index.metric_tags.items() if tag in raw}
    return RunData(layers=layers, metrics=metrics,
                   stored_findings=read_stored_findings(data_provider, ctx, run, index, experiment_id),
                   train_begins=read_train_begins(data_provider, ctx, run, index, experiment_id))


def read_stored_findings(data_provider, ctx, run, index: TagIndex, experiment_id=""):
    """The last findings list the callback wrote for ``run``, or None."""
    records = _json_records(data_provider, ctx, run, index.diagnosis_tag, 1, experiment_id)
    return records[-1] if records and isinstance(records[-1], list) else None


def read_train_begins(data_provider, ctx, run, index: TagIndex, experiment_id=""):
    """Every record of :data:`metadata.TRAIN_BEGIN_TAG` for ``run`` (dicts,
    in step order); unreadable ones are left out."""
    records = _json_records(data_provider, ctx, run, index.train_begin_tag, 2**62, experiment_id)
    return [r for r in records if isinstance(r, dict) and isinstance(r.get("step"), int)]


def _json_records(data_provider, ctx, run, tag, downsample, experiment_id):
    """The JSON values of a scalar DT_STRING tensor tag (the last
    ``downsample`` of them), in step order; [] when none or unreadable."""
    if tag is None:
        return []
    out = []
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

    def __init__(self, level):
        super().__init__()
        self.level, self.seen = level, []

    def filter(self, record):
        match = self.PATTERN.match(record.getMessage())
        if match:
            self.seen.append((os.path.normpath(match.group(1)), int(match.group(2))))
        return record.levelno >= self.level


def multiplexer_provider(logdir, data_loss=None):
    """An in-process TensorBoard data provider over ``logdir`` that keeps every
    point of this plugin (TensorBoard's defaults keep 10 per tag for it).
    ``data_loss``, a list, receives ``(path, offset)`` of each corrupted
    record the reader stopped at."""
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


def load(logdir, run: Optional[str] = None) -> Dict[str, RunData]:
    """Every run under ``logdir`` with bn_stats data (or just ``run``), all
    points, as numpy arrays. See the module docstring for the layout.
    Parts of event files that cannot be read (a corrupted record, a file cut
    off) are left out with a ``RuntimeWarning`` each (:class:`EventFileCheck`)."""
    from tensorboard import context

    data_loss = []
    data_provider = multiplexer_provider(logdir, data_loss)
    ctx = context.RequestContext()
    indexes = index_runs(data_provider, ctx)
    if run is not None:
        if run not in indexes:
            raise KeyError(f"no bn_stats data for run {run!r} under {logdir}; runs: {sorted(indexes)}")
        indexes = {run: indexes[run]}
    warn_file_problems(logdir, run, data_loss)
    downsample = 2**62
    return {name: read_run(data_provider, ctx, name, index, downsample) for name, index in indexes.items()}


@dataclasses.dataclass
class FileProblem:
    """Part of an event file that TensorBoard cannot read (or not yet)."""

    run: str  # TensorBoard's run name of the file's directory ("." for the logdir)
    file: str  # the file name
    kind: str  # "bad_length", "incomplete", "empty", "unreadable" (check_records), "bad_data" (load)
    offset: int  # bytes before this one were read
    size: int
    message: str

    def to_dict(self):
        return dataclasses.asdict(self)


class EventFileCheck:
    """Checks the record framing of every event file under a local ``logdir``
    (:func:`eventfile.check_records`), incrementally: each file is read on
    from where the last call stopped, so a live run costs only its new bytes."""

    def __init__(self, logdir):
        self.logdir = os.fspath(logdir)
        self._state = {}  # path -> (offset, size, problem)

    def problems(self, budget_s=None) -> List[FileProblem]:
        """The files' problems now; with ``budget_s`` the scan stops after
        that long and goes on at the next call (unscanned bytes: no problem yet)."""
        deadline = None if budget_s is None else time.monotonic() + budget_s
        out = []
        for dirpath, _, files in os.walk(self.logdir):
            for name in sorted(f for f in files if "tfevents" in f):
                path = os.path.join(dirpath, name)
                try:
                    stat = os.stat(path)
                    offset, size, problem = self._state.get(path, (0, 0, None))
                    if stat.st_size < size:  # replaced or rewritten: from the start
                        offset, problem = 0, None
                    if problem != "bad_length" and offset < stat.st_size and (
                            deadline is None or time.monotonic() < deadline):
                        offset, size, problem = eventfile.check_records(path, offset, deadline)
                    size = max(size, stat.st_size)
                    self._state[path] = (offset, size, problem)
                except OSError as exc:
                    out.append(self._problem(dirpath, name, "unreadable", 0, 0, f"cannot be read: {exc}"))
                    continue
                stale = time.time() - stat.st_mtime > STALE_S
                if problem == "bad_length":
                    out.append(self._problem(dirpath, name, problem, offset, size,
                                             f"corrupted record at byte {offset} (bad length checksum): TensorBoard "
                                             f"stops reading this file there, its last {size - offset} bytes are not shown"))
                elif problem == "incomplete" and stale:
                    out.append(self._problem(dirpath, name, problem, offset, size,
                                             f"ends inside a record (cut off: a killed run, a full disk?): its last "
                                             f"{size - offset} bytes are not shown"))
                elif size == 0 and stale:
                    out.append(self._problem(dirpath, name, "empty", 0, 0, "is empty (0 bytes): nothing to show"))
        return out

    def _problem(self, dirpath, name, kind, offset, size, message):
        run = os.path.relpath(dirpath, self.logdir).replace(os.sep, "/")
        return FileProblem(run, name, kind, offset, size, f"{run}/{name} {message}")


def warn_file_problems(logdir, run=None, data_loss=()):
    """Warns (``RuntimeWarning``) about each unreadable part of the event
    files under a local ``logdir`` (of ``run`` only, when given): framing
    problems (:class:`EventFileCheck`) and the ``(path, offset)`` of
    ``data_loss``, corrupted records the reader stopped at (a bad data
    checksum, which the framing check does not see)."""
    if "://" in os.fspath(logdir):
        return []
    check = EventFileCheck(logdir)
    found = check.problems()
    framed = {os.path.normpath(os.path.join(check.logdir, p.run, p.file)) for p in found}
    for path, offset in data_loss:
        if path not in framed:
            framed.add(path)
            size = os.path.getsize(path) if os.path.exists(path) else offset
            found.append(check._problem(os.path.dirname(path), os.path.basename(path), "bad_data", offset, size,
                                        f"corrupted record at byte {offset} (bad data checksum): the reader stops "
                                        f"reading this file there, its last {size - offset} bytes are not shown"))
    found = [p for p in found if run is None or p.run == run]
    for p in found:
        warnings.warn(f"tb_bnstats: {p.message}", RuntimeWarning, stacklevel=3)
    return found
