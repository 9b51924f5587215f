"""``BNStatsPlugin``: the JSON routes of the BN Convergence tab.

Every route reads through :mod:`tb_bnstats.reader` with
``context.data_provider`` (never ``context.multiplexer``, which is None under
TensorBoard's data server). All query parameters are validated: a malformed or
unknown run, layer, step, size or parameter name answers 400 with
``{"error": reason}``.

Routes (GET, relative to ``data/plugin/bn_stats/``):

========== ===================================================== ==========================
route      parameters                                            answer
========== ===================================================== ==========================
/index.js                                                        the tab's ES module
/runs                                                            runs, layers (depth order), file_problems
/overview  run                                                   latest values, badges
/heatmap   run, measure=mean_gap/max, bins=200, format            layers x step bins, max
/series    run, layer, quantities=a,b, points=1000, format        min/max-downsampled series
/snapshot  run, layer, step=<latest>, format                      per-channel rows, nearest step
/bands     run, layer, format                                     channel spread per snapshot
/loss      run, points=1000, format                               loss/metrics on the step axis
/compare   run (repeated), layer, quantity, points=1000, format   one quantity from many runs
/findings  run                                                   the run's diagnosis findings
========== ===================================================== ==========================

``format`` is ``json`` (default) or ``csv`` (a download).
"""

import collections
import functools
import json
import logging
import math
import os
import posixpath
import re
import threading
import time

import numpy as np
from tensorboard import errors
from tensorboard import context as tb_context
from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from tensorboard import plugin_util
from werkzeug import wrappers

from tb_bnstats import diagnosis, metadata, reader
from tb_bnstats.plugin import data

logger = logging.getLogger("tb_bnstats")

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
READ_ALL = 10**9  # "every point the provider holds"
MAX_POINTS = 20000
MAX_BINS = 2000
MAX_COMPARE_RUNS = 12
# A run's tag index (list_scalars + list_tensors, a JSON parse per tag) is
# reused this long: a page load asks for it 3-4 times at once, and with 100
# layers (2,100 tags) listing costs about 100 ms. New data shows up at most
# this much later than TensorBoard reloads it.
INDEX_TTL_S = 2.0
# Series read from the provider are kept (per tag, while the tag's max_step is
# unchanged) up to this many points in all: the heat map, the overview and a
# layer's charts read the same tags again on every view change and reload.
SERIES_CACHE_POINTS = 4_000_000
# Each /runs checks the event files' framing (reader.EventFileCheck) for at
# most this long, going on from there at the next call.
FILE_CHECK_BUDGET_S = 0.2
_INT_RE = re.compile(r"^[0-9]{1,15}$")

# Latest values the overview shows per layer (and its badges use).
OVERVIEW_QUANTITIES = ("convergence", "updates", "mean_gap/p90", "mean_gap/max",
                       "abs_log_var_ratio/max", "log_var_ratio/mean", "probe_output_drift",
                       "population_mean_gap/max")
HEATMAP_MEASURES = metadata.GAP_SERIES
DEFAULT_SERIES = metadata.LAYER_SERIES
# What /series and /compare serve: the per-step series, the probe's and the
# population statistics' (the last two only at the steps they were measured).
SERVED_SERIES = metadata.LAYER_SERIES + metadata.PROBE_SERIES + metadata.POPULATION_SERIES
KERAS_PLUGIN = "scalars"


class _SeriesCache:
    """LRU of ``(experiment, run, tag, downsample) -> (max_step, steps, values)``,
    bounded by the number of points held. An entry is used only while the
    tag's ``max_step`` in the current index is the one it was read at."""

    def __init__(self, budget_points):
        self._budget = budget_points
        self._held = 0
        self._entries = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, max_step):
        with self._lock:
            hit = self._entries.get(key)
            if hit is None or hit[0] != max_step:
                return None
            self._entries.move_to_end(key)
            return hit[1], hit[2]

    def put(self, key, max_step, steps, values):
        n = int(len(steps))
        if n > self._budget:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._held -= len(old[1])
            self._entries[key] = (max_step, steps, values)
            self._held += n
            while self._held > self._budget and self._entries:
                _, (_, s, _) = self._entries.popitem(last=False)
                self._held -= len(s)


class BadRequest(Exception):
    """A request the routes refuse with 400 and this message."""


def _route(allowed, csv_ok=False):
    """Wraps a handler ``fn(self, request, args) -> (payload, csv)``.

    ``allowed`` lists the parameter names the route accepts; ``csv`` is None
    or a function returning ``(filename, header, rows)`` for ``format=csv``
    (called only then).
    """
    allowed = set(allowed) | ({"format"} if csv_ok else set())

    def wrap(fn):
        @wrappers.Request.application
        @functools.wraps(fn)
        def handler(self, request):
            try:
                try:
                    args = request.args
                except UnicodeDecodeError:  # raw (not %-encoded) bytes that are not UTF-8
                    raise BadRequest("the query string is not valid UTF-8") from None
                for name in args:
                    if name not in allowed:
                        raise BadRequest(f"unknown parameter {name!r}; this route takes {sorted(allowed)}")
                fmt = _one(args, "format", "json") if csv_ok else "json"
                if fmt not in ("json", "csv"):
                    raise BadRequest(f"format must be 'json' or 'csv', got {fmt!r}")
                payload, csv = fn(self, request, args)
                if fmt == "csv":
                    filename, header, rows = csv()
                    return http_util.Respond(
                        request, data.csv_text(header, rows), "text/csv",
                        headers=[("Content-Disposition", f'attachment; filename="{filename}"')])
                # Payloads hold no NaN/inf (data.finite_list): plain json.dumps is
                # valid JSON and much faster than Respond's recursive Cleanse.
                try:
                    body = json.dumps(payload, separators=(",", ":"), allow_nan=False)
                except ValueError:  # a non-finite number from metadata: let TensorBoard cleanse it
                    body = payload
                return http_util.Respond(request, body, "application/json")
            except BadRequest as exc:
                return http_util.Respond(request, {"error": str(exc)}, "application/json", code=400)
            except errors.PublicError as exc:
                return http_util.Respond(request, {"error": str(exc)}, "application/json", code=exc.http_code)

        return handler

    return wrap


def _one(args, name, default=None, multi_ok=False):
    values = args.getlist(name)
    if not values:
        return default
    if len(values) > 1 and not multi_ok:
        raise BadRequest(f"parameter {name!r} given {len(values)} times")
    return values[0]


def _int_arg(args, name, default, lo, hi):
    raw = _one(args, name)
    if raw is None:
        return default
    if not _INT_RE.match(raw):
        raise BadRequest(f"{name} must be an integer in [{lo}, {hi}], got {raw!r}")
    value = int(raw)
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be an integer in [{lo}, {hi}], got {value}")
    return value


def _safe_name(name):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "data"


class BNStatsPlugin(base_plugin.TBPlugin):
    """Serves the BN Convergence tab and its JSON routes."""

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context):
        self._provider = context.data_provider
        hints = getattr(context, "sampling_hints", None) or {}
        self._cap_hint = hints.get(metadata.PLUGIN_NAME)
        self._index_cache = {}
        self._index_lock = threading.Lock()
        self._series_cache = _SeriesCache(SERIES_CACHE_POINTS)
        logdir = getattr(context, "logdir", None)
        self._file_check = reader.EventFileCheck(logdir) if logdir and "://" not in logdir else None
        self._file_check_lock = threading.Lock()
        self._reported = set()

    # -- TensorBoard interface -------------------------------------------------

    def frontend_metadata(self):
        # The tab follows TensorBoard's reload button through the
        # experimental.DataReloaded message (see frontend/src/reload.js).
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="BN Convergence",
                                            disable_reload=False)

    def is_active(self):
        # TensorBoard first checks data_plugin_names() against the provider's
        # list_plugins(); this answers for providers without that listing.
        if self._provider is None:
            return False
        try:
            return bool(reader.index_runs(self._provider, tb_context.RequestContext()))
        except Exception:  # noqa: BLE001 - an inactive tab, not a broken TensorBoard
            logger.exception("bn_stats: listing runs failed")
            return False

    def get_plugin_apps(self):
        return {
            "/index.js": self._serve_js,
            "/runs": self._serve_runs,
            "/overview": self._serve_overview,
            "/heatmap": self._serve_heatmap,
            "/series": self._serve_series,
            "/snapshot": self._serve_snapshot,
            "/bands": self._serve_bands,
            "/loss": self._serve_loss,
            "/compare": self._serve_compare,
            "/findings": self._serve_findings,
        }

    # -- helpers -------------------------------------------------------------------

    def _ctx(self, request):
        return plugin_util.context(request.environ), plugin_util.experiment_id(request.environ)

    def _index(self, request):
        if self._provider is None:
            raise BadRequest("TensorBoard has no data provider")
        ctx, eid = self._ctx(request)
        now = time.monotonic()
        with self._index_lock:
            hit = self._index_cache.get(eid)
        if hit is not None and now - hit[0] < INDEX_TTL_S:
            return hit[1], ctx, eid
        indexes = reader.index_runs(self._provider, ctx, eid)
        with self._index_lock:
            self._index_cache[eid] = (now, indexes)
        return indexes, ctx, eid

    def _run_arg(self, args, indexes):
        run = _one(args, "run")
        if run is None:
            raise BadRequest("missing parameter 'run'")
        if run not in indexes:
            raise BadRequest(f"unknown run {run!r}: no bn_stats data in it")
        return run

    def _layer_arg(self, args, index, run):
        layer = _one(args, "layer")
        if layer is None:
            raise BadRequest("missing parameter 'layer'")
        if layer not in index.layer_infos:
            raise BadRequest(f"unknown layer {layer!r} in run {run!r}")
        return layer

    def _read(self, ctx, eid, run, index, tags, downsample):
        """:func:`reader.read_series` through the per-tag cache."""
        out, missing = {}, []
        for tag in dict.fromkeys(tags):
            hit = self._series_cache.get((eid, run, tag, downsample), index.max_step.get(tag))
            if hit is None:
                missing.append(tag)
            else:
                out[tag] = hit
        if missing:
            fresh = reader.read_series(self._provider, ctx, run, missing, downsample, eid)
            for tag, (steps, values) in fresh.items():
                steps.setflags(write=False)
                values.setflags(write=False)
                self._series_cache.put((eid, run, tag, downsample), index.max_step.get(tag), steps, values)
                out[tag] = (steps, values)
        return out

    def _sampling(self, steps):
        return data.sampling_info(steps, self._cap_hint)

    def _file_problems(self):
        """What the local event files hold that TensorBoard cannot read (a
        corrupted record, a file cut off), each logged once as a warning."""
        if self._file_check is None or not os.path.isdir(self._file_check.logdir):
            return []
        with self._file_check_lock:
            found = self._file_check.problems(budget_s=FILE_CHECK_BUDGET_S)
            for p in found:
                if (p.run, p.file, p.kind, p.offset) not in self._reported:
                    self._reported.add((p.run, p.file, p.kind, p.offset))
                    logger.warning("bn_stats: %s", p.message)
        return [p.to_dict() for p in found]

    @staticmethod
    def _layer_json(info, index):
        d = info.to_dict()
        d.update(data.derived(info))
        d["has_snapshots"] = info.name in index.channel_tags
        tags = index.layer_tags.get(info.name, {})
        d["quantities"] = [q for q in SERVED_SERIES if q in tags]
        d["max_step"] = max((index.max_step.get(t, 0) for t in tags.values()), default=None)
        return d

    @staticmethod
    def _ordered_layers(index):
        return sorted(index.layer_infos.values(), key=lambda i: (i.depth, i.name))

    # -- routes --------------------------------------------------------------------

    @wrappers.Request.application
    def _serve_js(self, request):
        path = os.path.join(STATIC_DIR, "index.js")
        try:
            with open(path, "rb") as f:
                body = f.read()
        except OSError:
            body = b'export function render(){document.body.textContent="tb_bnstats: the frontend bundle is missing (run make bundle)";}'
        return http_util.Respond(request, body, "text/javascript")

    @_route(())
    def _serve_runs(self, request, args):
        indexes, ctx, eid = self._index(request)
        runs = []
        for run in sorted(indexes):
            index = indexes[run]
            layers = [self._layer_json(info, index) for info in self._ordered_layers(index)]
            runs.append({
                "run": run,
                "layers": layers,
                "max_step": max(index.max_step.values(), default=None),
                "metrics": sorted(index.metric_tags),
            })
        return {
            "runs": runs,
            "gap_measures": list(metadata.GAP_SERIES),
            "layer_quantities": list(metadata.LAYER_SERIES),
            "probe_quantities": list(metadata.PROBE_SERIES),
            "population_quantities": list(metadata.POPULATION_SERIES),
            "snapshot_rows": list(metadata.SNAPSHOT_ROWS),
            "sampling_hint": self._cap_hint,
            "file_problems": self._file_problems(),
            "thresholds": {"converged": diagnosis.THRESHOLDS["converged"]},
        }, None

    @_route(("run",))
    def _serve_overview(self, request, args):
        indexes, ctx, eid = self._index(request)
        run = self._run_arg(args, indexes)
        index = indexes[run]
        tags = {}
        for layer, by_q in index.layer_tags.items():
            for q in OVERVIEW_QUANTITIES:
                if q in by_q:
                    tags[by_q[q]] = (layer, q)
        # downsample=1 keeps each tag's latest point (the provider contract).
        raw = self._read(ctx, eid, run, index, list(tags), 1)
        latest = {layer: {} for layer in index.layer_infos}
        latest_step = {layer: None for layer in index.layer_infos}
        for tag, (steps, values) in raw.items():
            if not len(steps):
                continue
            layer, q = tags[tag]
            i = int(np.argmax(steps))
            v = float(values[i])
            latest[layer][q] = v if math.isfinite(v) else None
            s = int(steps[i])
            latest_step[layer] = s if latest_step[layer] is None else max(s, latest_step[layer])
        layers = []
        for info in self._ordered_layers(index):
            d = self._layer_json(info, index)
            d["latest"] = latest[info.name]
            d["latest_step"] = latest_step[info.name]
            d["badges"] = data.badges(info, latest[info.name])
            layers.append(d)
        return {"run": run, "layers": layers, "max_step": max(index.max_step.values(), default=None)}, None

    @_route(("run", "measure", "bins"), csv_ok=True)
    def _serve_heatmap(self, request, args):
        indexes, ctx, eid = self._index(request)
        run = self._run_arg(args, indexes)
        index = indexes[run]
        measure = _one(args, "measure", "mean_gap/max")
        if measure not in HEATMAP_MEASURES:
            raise BadRequest(f"unknown measure {measure!r}; one of {list(HEATMAP_MEASURES)}")
        bins = _int_arg(args, "bins", 200, 1, MAX_BINS)
        infos = self._ordered_layers(index)
        tag_of = {info.name: index.layer_tags.get(info.name, {}).get(measure) for info in infos}
        raw = self._read(ctx, eid, run, index, [t for t in tag_of.values() if t], READ_ALL)
        series = {name: raw.get(tag, (np.zeros(0, np.int64), np.zeros(0))) for name, tag in tag_of.items() if tag}
        nonempty = [s for s, _ in series.values() if len(s)]
        if nonempty:
            first = min(int(s.min()) for s in nonempty)
            last = max(int(s.max()) for s in nonempty)
            edges = data.step_edges(first, last, bins)
        else:
            edges = np.zeros(1)
        names = [info.name for info in infos]
        matrix = [data.bin_max(*series[n], edges) if n in series else np.full(len(edges) - 1, np.nan) for n in names]
        flat = np.concatenate(matrix) if matrix else np.zeros(0)
        finite = flat[np.isfinite(flat)]
        sampling = data.merge_sampling([self._sampling(s) for s, _ in series.values()])
        payload = {
            "run": run,
            "measure": measure,
            "layers": names,
            "step_edges": [float(e) for e in edges],
            "values": [data.finite_list(row) for row in matrix],
            "max": float(finite.max()) if finite.size else None,
            "min": float(finite.min()) if finite.size else None,
            "sampling": sampling,
        }
        rows = lambda: [[n, float(edges[j]), float(edges[j + 1]), float(matrix[i][j])]  # noqa: E731
                        for i, n in enumerate(names) for j in range(len(edges) - 1)]
        return payload, lambda: (f"heatmap_{_safe_name(run)}_{_safe_name(measure)}.csv",
                                 ["layer", "step_from", "step_to", measure], rows())

    @_route(("run", "layer", "quantities", "points"), csv_ok=True)
    def _serve_series(self, request, args):
        indexes, ctx, eid = self._index(request)
        run = self._run_arg(args, indexes)
        index = indexes[run]
        layer = self._layer_arg(args, index, run)
        raw_q = _one(args, "quantities")
        wanted = list(DEFAULT_SERIES) if raw_q is None else [q for q in raw_q.split(",") if q]
        if not wanted:
            raise BadRequest("quantities is empty")
        for q in wanted:
            if q not in SERVED_SERIES:
                raise BadRequest(f"unknown quantity {q!r}; one of {list(SERVED_SERIES)}")
        points = _int_arg(args, "points", 1000, 2, MAX_POINTS)
        tags = index.layer_tags.get(layer, {})
        tag_of = {q: tags[q] for q in dict.fromkeys(wanted) if q in tags}
        raw = self._read(ctx, eid, run, index, list(tag_of.values()), READ_ALL)
        out, samplings, full = {}, [], {}
        for q, tag in tag_of.items():
            steps, values = raw.get(tag, (np.zeros(0, np.int64), np.zeros(0)))
            samplings.append(self._sampling(steps))
            s, v = data.minmax_downsample(steps, values, points)
            full[q] = (s, v)
            out[q] = {"steps": s.tolist(), "values": data.finite_list(v), "stored_points": int(len(steps))}
        info = index.layer_infos[layer]
        payload = {
            "run": run, "layer": layer, "info": self._layer_json(info, index), "points": points,
            "series": out, "missing": [q for q in wanted if q not in tag_of],
            "sampling": data.merge_sampling(samplings),
        }
        return payload, lambda: (f"{_safe_name(run)}_{_safe_name(layer)}.csv", *data.wide_rows(full))

    def _snapshots(self, request, args, ctx, eid, indexes):
        run = self._run_arg(args, indexes)
        index = indexes[run]
        layer = self._layer_arg(args, index, run)
        if layer not in index.channel_tags:
            raise BadRequest(f"layer {layer!r} of run {run!r} has no per-channel snapshots")
        steps, tensor = reader.read_snapshots(self._provider, ctx, run, index.channel_tags[layer], READ_ALL, eid)
        if not len(steps) or tensor.ndim != 3 or tensor.shape[1] != len(metadata.SNAPSHOT_ROWS):
            raise BadRequest(f"layer {layer!r} of run {run!r} has no readable per-channel snapshot")
        order = np.argsort(steps, kind="stable")
        return run, layer, index, steps[order], tensor[order]

    @_route(("run", "layer", "step"), csv_ok=True)
    def _serve_snapshot(self, request, args):
        indexes, ctx, eid = self._index(request)
        requested = _int_arg(args, "step", None, 0, 2**62)
        run, layer, index, steps, tensor = self._snapshots(request, args, ctx, eid, indexes)
        if requested is None:
            i = len(steps) - 1
        else:
            i = int(np.argmin(np.abs(steps - requested)))  # nearest; ties go to the earlier step
        snap = tensor[i]
        rows = {row: data.finite_list(snap[k]) for k, row in enumerate(metadata.SNAPSHOT_ROWS)}
        payload = {
            "run": run, "layer": layer, "requested_step": requested, "step": int(steps[i]),
            "steps": steps.tolist(), "channels": int(snap.shape[1]), "rows": rows,
            "info": self._layer_json(index.layer_infos[layer], index),
            "sampling": data.merge_sampling([self._sampling(steps)]),
        }
        csv_rows = lambda: [[c] + [float(snap[k, c]) for k in range(snap.shape[0])]  # noqa: E731
                            for c in range(snap.shape[1])]
        return payload, lambda: (f"{_safe_name(run)}_{_safe_name(layer)}_step{int(steps[i])}.csv",
                                 ["channel"] + list(metadata.SNAPSHOT_ROWS), csv_rows())

    @_route(("run", "layer"), csv_ok=True)
    def _serve_bands(self, request, args):
        """Spread over channels (10th and 90th percentiles, min, max) of each
        snapshot row at every snapshot step: the band around the channel
        averages of the layer view."""
        indexes, ctx, eid = self._index(request)
        run, layer, index, steps, tensor = self._snapshots(request, args, ctx, eid, indexes)
        out, rows = {}, []
        for k, row in enumerate(metadata.SNAPSHOT_ROWS):
            values = tensor[:, k, :]
            p10, p90, lo, hi = data.channel_spread(values)
            out[row] = {"p10": data.finite_list(p10), "p90": data.finite_list(p90),
                        "min": data.finite_list(lo), "max": data.finite_list(hi)}
            rows += [[row, int(s), float(lo[i]), float(p10[i]), float(p90[i]), float(hi[i])]
                     for i, s in enumerate(steps)]
        payload = {"run": run, "layer": layer, "steps": steps.tolist(), "rows": out,
                   "sampling": data.merge_sampling([self._sampling(steps)])}
        return payload, lambda: (f"{_safe_name(run)}_{_safe_name(layer)}_bands.csv",
                         ["row", "step", "min", "p10", "p90", "max"], rows)

    @_route(("run", "points"), csv_ok=True)
    def _serve_loss(self, request, args):
        """The run's own metrics (``metric/train/*`` per step, ``metric/val/*``
        per epoch) and, when Keras' TensorBoard callback wrote next to it
        (``<run>/train``, ``<run>/validation`` or siblings of the run's parent),
        its ``batch_*`` (step = batch counter) and ``epoch_*`` (step = epoch,
        mapped to the step where that epoch ended) scalars."""
        indexes, ctx, eid = self._index(request)
        run = self._run_arg(args, indexes)
        points = _int_arg(args, "points", 1000, 2, MAX_POINTS)
        index = indexes[run]
        raw = self._read(ctx, eid, run, index, list(index.metric_tags.values()), READ_ALL)
        series = []
        val_steps = None
        for key in sorted(index.metric_tags):
            steps, values = raw.get(index.metric_tags[key], (np.zeros(0, np.int64), np.zeros(0)))
            if key.startswith("val/") and val_steps is None and len(steps):
                val_steps = np.sort(steps)
            series.append({"key": key, "source": "bn_stats", "split": key.split("/", 1)[0],
                           "name": key.split("/", 1)[1], "steps": steps, "values": values,
                           "aligned": "step"})
        series += self._keras_series(ctx, eid, run, val_steps, max(index.max_step.values(), default=0))
        out, samplings, full = [], [], {}
        for s in series:
            samplings.append(self._sampling(s["steps"]) if s["aligned"] == "step" else None)
            st, v = data.minmax_downsample(s["steps"], s["values"], points)
            full[s["key"]] = (st, v)
            out.append({**s, "steps": st.tolist(), "values": data.finite_list(v)})
        payload = {"run": run, "series": out, "sampling": data.merge_sampling(samplings)}
        return payload, lambda: (f"{_safe_name(run)}_metrics.csv", *data.wide_rows(full))

    def _keras_series(self, ctx, eid, run, val_steps, max_step):
        try:
            listing = self._provider.list_scalars(ctx, experiment_id=eid, plugin_name=KERAS_PLUGIN)
        except errors.PublicError:
            return []
        parent = posixpath.dirname(run)
        candidates = []
        for split, names in (("train", ("train",)), ("val", ("validation", "val"))):
            for base in (run, parent) if parent else (run,):
                for n in names:
                    candidates.append((split, posixpath.join(base, n) if base and base != "." else n))
        out, seen = [], set()
        for split, krun in candidates:
            if krun in seen or krun == run or krun not in listing:
                continue
            seen.add(krun)
            tags = [t for t in listing[krun] if t.startswith(("batch_", "epoch_"))]
            if not tags:
                continue
            result = self._provider.read_scalars(
                ctx, experiment_id=eid, plugin_name=KERAS_PLUGIN, downsample=READ_ALL,
                run_tag_filter=provider.RunTagFilter(runs=[krun], tags=tags)).get(krun, {})
            for tag in sorted(result):
                pts = result[tag]
                steps = np.array([p.step for p in pts], np.int64)
                values = np.array([p.value for p in pts], np.float64)
                aligned = "step"
                if tag.startswith("epoch_"):
                    steps, aligned = _epoch_to_step(steps, val_steps, max_step)
                    if steps is None:
                        continue
                out.append({"key": f"keras:{krun}:{tag}", "source": f"keras run {krun}", "split": split,
                            "name": tag, "steps": steps, "values": values, "aligned": aligned})
        return out

    @_route(("run", "layer", "quantity", "points"), csv_ok=True)
    def _serve_compare(self, request, args):
        indexes, ctx, eid = self._index(request)
        runs = args.getlist("run")
        if not runs:
            raise BadRequest("missing parameter 'run' (give it once per run to compare)")
        if len(runs) > MAX_COMPARE_RUNS:
            raise BadRequest(f"at most {MAX_COMPARE_RUNS} runs, got {len(runs)}")
        for r in runs:
            if r not in indexes:
                raise BadRequest(f"unknown run {r!r}: no bn_stats data in it")
        runs = list(dict.fromkeys(runs))
        layer = _one(args, "layer")
        if layer is None:
            raise BadRequest("missing parameter 'layer'")
        if not any(layer in indexes[r].layer_infos for r in runs):
            raise BadRequest(f"unknown layer {layer!r}: none of the runs has it")
        quantity = _one(args, "quantity", "mean_gap/max")
        if quantity not in SERVED_SERIES:
            raise BadRequest(f"unknown quantity {quantity!r}; one of {list(SERVED_SERIES)}")
        points = _int_arg(args, "points", 1000, 2, MAX_POINTS)
        out, missing, samplings, full = [], [], [], {}
        for r in runs:
            index = indexes[r]
            tag = index.layer_tags.get(layer, {}).get(quantity)
            if layer not in index.layer_infos or tag is None:
                missing.append(r)
                continue
            steps, values = self._read(ctx, eid, r, index, [tag], READ_ALL).get(
                tag, (np.zeros(0, np.int64), np.zeros(0)))
            samplings.append(self._sampling(steps))
            s, v = data.minmax_downsample(steps, values, points)
            full[r] = (s, v)
            out.append({"run": r, "info": self._layer_json(index.layer_infos[layer], index),
                        "steps": s.tolist(), "values": data.finite_list(v)})
        payload = {"layer": layer, "quantity": quantity, "runs": out, "missing": missing,
                   "sampling": data.merge_sampling(samplings)}
        return payload, lambda: (f"compare_{_safe_name(layer)}_{_safe_name(quantity)}.csv", *data.wide_rows(full))

    def _run_data(self, ctx, eid, run, index):
        """The run's layer series (every stored point, through the series
        cache) as a :class:`reader.RunData` for :mod:`tb_bnstats.diagnosis`."""
        tag_to_layer = {tag: (layer, q) for layer, tags in index.layer_tags.items() for q, tag in tags.items()}
        raw = self._read(ctx, eid, run, index, list(tag_to_layer), READ_ALL)
        by_layer = collections.defaultdict(dict)
        for tag, (layer, q) in tag_to_layer.items():
            if tag in raw:
                by_layer[layer][q] = raw[tag]
        layers = {}
        for name, info in index.layer_infos.items():
            steps, series = reader.aligned(by_layer.get(name, {}))
            layers[name] = reader.LayerData(info, steps, series, np.zeros(0, np.int64), {})
        return reader.RunData(layers=layers, metrics={},
                              train_begins=reader.read_train_begins(self._provider, ctx, run, index, eid)), raw

    @_route(("run",))
    def _serve_findings(self, request, args):
        """The run's findings: those the callback stored in the logs
        (``diagnosis/findings``, its last ``fit``) first, then those
        :func:`tb_bnstats.diagnosis.diagnose_run` finds now over every stored
        point whose ``(code, severity)`` the stored ones lack. Each finding
        says where it came from (``source``: ``stored`` or ``computed``)."""
        indexes, ctx, eid = self._index(request)
        run = self._run_arg(args, indexes)
        index = indexes[run]
        stored = _stored_findings(reader.read_stored_findings(self._provider, ctx, run, index, eid))
        run_data, raw = self._run_data(ctx, eid, run, index)
        computed = [f.to_dict() for f in diagnosis.diagnose_run(run, run_data)]
        findings = [{**f, "source": "stored"} for f in stored or []]
        have = {(f["code"], f["severity"]) for f in findings}
        findings += [{**f, "source": "computed"} for f in computed if (f["code"], f["severity"]) not in have]
        order = {sev: i for i, sev in enumerate(diagnosis.SEVERITIES)}
        findings.sort(key=lambda f: (order.get(f["severity"], len(order)), f["code"]))
        sources = sorted({f["source"] for f in findings}, key=("stored", "computed").index)
        counts = {sev: sum(f["severity"] == sev for f in findings) for sev in diagnosis.SEVERITIES}
        stored_step = index.max_step.get(index.diagnosis_tag) if stored is not None else None
        return {
            "run": run, "findings": findings, "counts": counts,
            "source": "+".join(sources) or ("stored" if stored is not None else "computed"),
            "stored": stored is not None, "stored_step": stored_step, "computed": len(computed),
            "titles": {code: v[2] for code, v in diagnosis.CODES.items()},
            "sampling": data.merge_sampling([self._sampling(s) for s, _ in raw.values()]),
        }, None


def _stored_findings(parsed):
    """The well-formed findings of what the callback stored (None: none stored)."""
    if parsed is None:
        return None
    out = []
    for d in parsed:
        if not isinstance(d, dict):
            continue
        try:
            f = diagnosis.Finding.from_dict(d)
        except (TypeError, ValueError, KeyError):
            continue
        if (f.severity not in diagnosis.SEVERITIES or not isinstance(f.code, str)
                or not isinstance(f.layers, list) or not all(isinstance(n, str) for n in f.layers)):
            continue
        f.message = str(f.message)
        out.append(f.to_dict())
    return out


def _epoch_to_step(epochs, val_steps, max_step):
    """Maps Keras' epoch index to the optimizer step where that epoch ended:
    the step of the k-th ``metric/val`` point when there are enough of them,
    else ``(epoch + 1) * max_step / epochs`` (marked "estimated")."""
    if not len(epochs):
        return None, None
    n = int(epochs.max()) + 1
    if val_steps is not None and len(val_steps) >= n and np.all(epochs >= 0):
        return val_steps[epochs], "epoch_end"
    if max_step and n > 0 and np.all(epochs >= 0):
        return np.round((epochs + 1) * (max_step / n)).astype(np.int64), "estimated"
    return None, None
