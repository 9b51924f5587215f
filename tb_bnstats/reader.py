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
"""

import collections
import dataclasses
import json
from typing import Dict, Optional, Tuple

import numpy as np
from tensorboard.data import provider

from tb_bnstats import metadata


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


@dataclasses.dataclass
class TagIndex:
    """What one run holds: layer tags by layer and quantity, and metric tags."""

    layer_infos: Dict[str, metadata.LayerInfo]
    layer_tags: Dict[str, Dict[str, str]]  # layer -> quantity -> tag
    channel_tags: Dict[str, str]  # layer -> tag
    metric_tags: Dict[str, str]  # "train/loss" -> tag
    max_step: Dict[str, int]  # tag -> max step
    diagnosis_tag: Optional[str] = None


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


def read_series(data_provider, ctx, run, tags, downsample, experiment_id=""):
    """``{tag: (steps, values)}`` for scalar tags of one run."""
    if not tags:
        return {}
    result = data_provider.read_scalars(
        ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME, downsample=downsample,
        run_tag_filter=provider.RunTagFilter(runs=[run], tags=list(tags)),
    ).get(run, {})
    return {
        tag: (np.array([d.step for d in data], np.int64), np.array([d.value for d in data], np.float64))
        for tag, data in result.items()
    }


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
                   stored_findings=read_stored_findings(data_provider, ctx, run, index, experiment_id))


def read_stored_findings(data_provider, ctx, run, index: TagIndex, experiment_id=""):
    """The last findings list the callback wrote for ``run``, or None."""
    if index.diagnosis_tag is None:
        return None
    try:
        data = data_provider.read_tensors(
            ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME, downsample=1,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=[index.diagnosis_tag]),
        ).get(run, {}).get(index.diagnosis_tag, [])
        if not data:
            return None
        value = np.asarray(data[-1].numpy).reshape(-1)[0]
        parsed = json.loads(value.decode("utf-8") if isinstance(value, bytes) else str(value))
        return parsed if isinstance(parsed, list) else None
    except (ValueError, UnicodeDecodeError, IndexError):
        return None


def multiplexer_provider(logdir):
    """An in-process TensorBoard data provider over ``logdir`` that keeps every
    point of this plugin (TensorBoard's defaults keep 10 per tag for it)."""
    from tensorboard.backend.event_processing import data_provider as mdp
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem

    multiplexer = pem.EventMultiplexer(tensor_size_guidance={metadata.PLUGIN_NAME: 0})
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    return mdp.MultiplexerDataProvider(multiplexer, str(logdir))


def load(logdir, run: Optional[str] = None) -> Dict[str, RunData]:
    """Every run under ``logdir`` with bn_stats data (or just ``run``), all
    points, as numpy arrays. See the module docstring for the layout."""
    from tensorboard import context

    data_provider = multiplexer_provider(logdir)
    ctx = context.RequestContext()
    indexes = index_runs(data_provider, ctx)
    if run is not None:
        if run not in indexes:
            raise KeyError(f"no bn_stats data for run {run!r} under {logdir}; runs: {sorted(indexes)}")
        indexes = {run: indexes[run]}
    downsample = 2**62
    return {name: read_run(data_provider, ctx, name, index, downsample) for name, index in indexes.items()}
