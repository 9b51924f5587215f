"""``BNStatsPlugin``: the JSON routes of the BN Convergence tab.

Every route reads through :mod:`tb_bnstats.read.reader` with
``context.data_provider`` (never ``context.multiplexer``, which is None under
TensorBoard's data server). All query parameters are validated
(:mod:`tb_bnstats.plugin.http`): a malformed or unknown run, layer, step,
size or parameter name answers 400 with ``{"error": reason}``. Each route is a
thin handler that parses its parameters and calls its ``*_impl`` method,
which does the work on parsed values (as TensorBoard's own scalars plugin).
Nothing here imports TensorFlow, Keras, a capture, the measurements or the
writer.

Routes (GET, relative to ``data/plugin/bn_stats/``):

========== ===================================================== ==========================
route      parameters                                            answer
========== ===================================================== ==========================
/index.js                                                        the tab's ES module
/runs                                                            runs (worst severity), layers (depth order),
                                                                 file_problems,
                                                                 thresholds, newer_format
/overview  run                                                   latest values, badges (findings', then state and hints)
/heatmap   run, measure=mean_gap/max, bins=200, format            layers x step bins, max
/series    run, layer, quantities=a,b, points=1000, format        min/max-downsampled series
/snapshot  run, layer, step=<latest>, format                      per-channel rows, nearest step
/bands     run, layer, format                                     channel spread per snapshot
/replicas  run, layer, step=<latest>, format                      per-replica moments, nearest step
/loss      run, points=1000, format                               loss/metrics on the step axis (the
                                                                 run's, its SummaryWriter scalars, Keras')
/compare   run (repeated), layer, quantity, points=1000, format   one quantity from many runs
/findings  run                                                   the run's diagnosis findings
========== ===================================================== ==========================

``format`` is ``json`` (default) or ``csv`` (a download).
"""

import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from tensorboard import context as tb_context
from tensorboard import plugin_util
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tb_bnstats import diagnosis
from tb_bnstats.diagnosis.finding import Finding
from tb_bnstats.format import metadata, records
from tb_bnstats.plugin import cache, data, scalars
from tb_bnstats.plugin.http import Answer, Args, BadRequest, int_arg, one, route, safe_name
from tb_bnstats.read import integrity, logs, reader
from tb_bnstats.read.reader import READ_ALL, TagIndex

logger = logging.getLogger("tb_bnstats")

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_POINTS = 20000
MAX_BINS = 2000
MAX_COMPARE_RUNS = 12
# Each /runs checks the event files' framing (reader.EventFileCheck) for at
# most this long, going on from there at the next call.
FILE_CHECK_BUDGET_S = 0.2

# Latest values the overview shows per layer (and its badges use).
OVERVIEW_QUANTITIES = ("convergence", "updates", "mean_gap/p90", "mean_gap/max",
                       "abs_log_var_ratio/max", "log_var_ratio/mean", "probe_output_drift",
                       "population_mean_gap/max") + metadata.START_SERIES
HEATMAP_MEASURES = metadata.GAP_SERIES
DEFAULT_SERIES = metadata.LAYER_SERIES
# What /series and /compare serve: the per-step series, the probe's and the
# population statistics' (the last two only at the steps they were measured).
# and, on several replicas, the replica series.
SERVED_SERIES = metadata.LAYER_SERIES + metadata.PROBE_SERIES + metadata.POPULATION_SERIES + metadata.REPLICA_SERIES
# Logged at some steps only (the probe's and the population's, spaced by their time budget).
SPARSE_SERIES = frozenset(metadata.PROBE_SERIES + metadata.POPULATION_SERIES)
# The series cache's key of a layer's log: a prefix no tag has (tags start with bn/ or metric/).
LOG_KEY = "log:"


def worst_severity(findings: Iterable[Finding]) -> str:
    """The worst severity of ``findings`` ("ok" for none)."""
    found = {f.severity for f in findings}
    return next((sev for sev in diagnosis.SEVERITIES if sev in found), "ok")


class BNStatsPlugin(base_plugin.TBPlugin):
    """Serves the BN Convergence tab and its JSON routes."""

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context: Any) -> None:
        self._provider = context.data_provider
        hints = getattr(context, "sampling_hints", None) or {}
        self._cap_hint = hints.get(metadata.PLUGIN_NAME)
        self._index_cache = cache.IndexCache()
        self._series_cache = cache.SeriesCache()
        self._findings_cache = cache.FindingsCache()
        logdir = getattr(context, "logdir", None)
        # Names the run in the logdir itself after it, as tb_bnstats.load and the CLI do (format.names).
        self._logdir = logdir or None
        self._file_check = integrity.EventFileCheck(logdir) if logdir and "://" not in logdir else None
        self._file_check_lock = threading.Lock()
        self._reported: set[tuple[Any, ...]] = set()  # what was logged once

    # -- TensorBoard interface -------------------------------------------------

    def frontend_metadata(self) -> Any:
        # The tab follows TensorBoard's reload button through the
        # experimental.DataReloaded message (see frontend/src/ui/reload.js).
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="BN Convergence",
                                            disable_reload=False)

    def is_active(self) -> bool:
        # TensorBoard first checks data_plugin_names() against the provider's
        # list_plugins(); this answers for providers without that listing.
        if self._provider is None:
            return False
        try:
            return bool(reader.index_runs(self._provider, tb_context.RequestContext()))
        except Exception:  # noqa: BLE001 - an inactive tab, not a broken TensorBoard
            logger.exception("bn_stats: listing runs failed")
            return False

    def get_plugin_apps(self) -> dict[str, Callable[..., Any]]:
        return {
            "/index.js": self._serve_js,
            "/runs": self._serve_runs,
            "/overview": self._serve_overview,
            "/heatmap": self._serve_heatmap,
            "/series": self._serve_series,
            "/snapshot": self._serve_snapshot,
            "/bands": self._serve_bands,
            "/replicas": self._serve_replicas,
            "/loss": self._serve_loss,
            "/compare": self._serve_compare,
            "/findings": self._serve_findings,
        }

    # -- helpers -------------------------------------------------------------------

    def _ctx(self, request: wrappers.Request) -> tuple[Any, str]:
        return plugin_util.context(request.environ), plugin_util.experiment_id(request.environ)

    def _index(self, request: wrappers.Request) -> tuple[dict[str, TagIndex], Any, str]:
        if self._provider is None:
            raise BadRequest("TensorBoard has no data provider")
        ctx, eid = self._ctx(request)
        return self._index_cache.get(eid, lambda: reader.index_runs(self._provider, ctx, eid, self._logdir)), ctx, eid

    def _run_arg(self, args: Args, indexes: Mapping[str, TagIndex]) -> str:
        run = one(args, "run")
        if run is None:
            raise BadRequest("missing parameter 'run'")
        if run not in indexes:
            raise BadRequest(f"unknown run {run!r}: no bn_stats data in it")
        return run

    def _layer_arg(self, args: Args, index: TagIndex, run: str) -> str:
        layer = one(args, "layer")
        if layer is None:
            raise BadRequest("missing parameter 'layer'")
        if layer not in index.layer_infos:
            raise BadRequest(f"unknown layer {layer!r} in run {run!r}")
        return layer

    def _read(self, ctx: Any, eid: str, run: str, index: TagIndex, tags: Iterable[str],
              downsample: int) -> dict[str, records.Series]:
        """:func:`reader.read_series` through the per-tag cache."""
        out: dict[str, records.Series] = {}
        missing: list[str] = []
        for tag in dict.fromkeys(tags):
            hit = self._series_cache.get((eid, index.source, tag, downsample), index.max_step.get(tag))
            if hit is None:
                missing.append(tag)
            else:
                out[tag] = hit
        if missing:
            fresh = reader.read_series(self._provider, ctx, index.source, missing, downsample, eid)
            for tag, (steps, values) in fresh.items():
                steps.setflags(write=False)
                values.setflags(write=False)
                self._series_cache.put((eid, index.source, tag, downsample), index.max_step.get(tag), (steps, values),
                                       len(steps))
                out[tag] = (steps, values)
        return out

    def _logs(self, ctx: Any, eid: str, index: TagIndex, layers: Iterable[str],
              log_tags: Mapping[str, list[logs.LogTag]] | None = None) -> dict[str, logs.LayerLogData]:
        """The logs (format version 2) of ``layers`` that have one in
        ``log_tags`` (default: the layers' logs; ``index.metric_logs`` for
        the per-step metrics'), through the cache (kept while none of their
        tags has grown)."""
        prefix = LOG_KEY + ("layer:" if log_tags is None else "metric:")
        log_tags = index.log_tags if log_tags is None else log_tags
        out: dict[str, logs.LayerLogData] = {}
        missing: dict[str, list[logs.LogTag]] = {}
        version = lambda tags: tuple(index.max_step.get(t.tag) for t in tags)  # noqa: E731
        for layer in layers:
            tags = log_tags.get(layer)
            if tags:
                hit = self._series_cache.get((eid, index.source, prefix + layer, READ_ALL), version(tags))
                if hit is None:
                    missing[layer] = tags
                else:
                    out[layer] = hit
        if missing:
            for layer, log in logs.read_logs(self._provider, ctx, index.source, missing, READ_ALL, eid).items():
                size = sum(len(s) for s, _ in log.series.values()) + len(log.envelope) * max(len(log.envelope.stats), 1)
                self._series_cache.put((eid, index.source, prefix + layer, READ_ALL), version(missing[layer]), log,
                                       size)
                out[layer] = log
        return out

    def _layer_series(self, ctx: Any, eid: str, run: str, index: TagIndex, wanted: Mapping[str, Sequence[str]],
                      ) -> tuple[dict[str, dict[str, records.Series]], list[dict[str, Any]]]:
        """``{layer: {quantity: (steps, values)}}`` of the ``wanted``
        quantities of each layer, every point that draws them: a layer log's
        full-resolution points and envelope extremes (:func:`records.drawn`),
        or a scalar tag's points (version 1, and the probe's and the
        population's series); with how each was sampled."""
        layer_logs = self._logs(ctx, eid, index, wanted)
        out: dict[str, dict[str, records.Series]] = {layer: {} for layer in wanted}
        samplings: list[dict[str, Any]] = []
        tags: dict[str, tuple[str, str]] = {}
        for layer, quantities in wanted.items():
            log = layer_logs.get(layer)
            for q in quantities:
                if log is not None and log.holds(q):
                    out[layer][q] = records.drawn(log.series.get(q), log.envelope, q)
                elif q in index.layer_tags.get(layer, {}):
                    tags[index.layer_tags[layer][q]] = (layer, q)
            if log is not None:
                samplings.append(data.log_sampling(log.records, log.expected_records))
        for tag, series in self._read(ctx, eid, run, index, list(tags), READ_ALL).items():
            layer, q = tags[tag]
            out[layer][q] = series
            samplings.append(self._sampling(series[0], sparse=q in SPARSE_SERIES))
        return out, samplings

    def _sampling(self, steps: npt.ArrayLike, sparse: bool = False) -> dict[str, Any]:
        """Whether TensorBoard kept a sample of a series (``sparse``: logged at
        irregular steps, :func:`data.sparse_sampling`)."""
        return (data.sparse_sampling if sparse else data.sampling_info)(steps, self._cap_hint)

    def _snapshot_sampling(self, index: TagIndex, layer: str, steps: npt.ArrayLike) -> dict[str, Any]:
        """Of a layer's snapshots: spaced by level in a log of version 2."""
        return self._sampling(steps, sparse=layer in index.log_tags)

    def _file_problems(self) -> list[dict[str, Any]]:
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
    def _layer_json(info: metadata.LayerInfo, index: TagIndex) -> dict[str, Any]:
        d = info.to_dict()
        d.update(data.derived(info))
        d["has_snapshots"] = info.name in index.channel_tags
        d["has_replica_snapshots"] = info.name in index.replica_tags
        tags = list(index.layer_tags.get(info.name, {}).values())
        log_tags = index.log_tags.get(info.name, [])
        served = set(index.layer_tags.get(info.name, {})) | {q for t in log_tags for q in t.quantities}
        d["quantities"] = [q for q in SERVED_SERIES if q in served]
        d["max_step"] = max((index.max_step.get(t, 0) for t in tags + [t.tag for t in log_tags]), default=None)
        return d

    @staticmethod
    def _ordered_layers(index: TagIndex) -> list[metadata.LayerInfo]:
        return sorted(index.layer_infos.values(), key=lambda i: (i.depth, i.name))

    # -- routes --------------------------------------------------------------------

    @wrappers.Request.application  # type: ignore[arg-type]  # a method: see http.route
    def _serve_js(self, request: wrappers.Request) -> Any:
        path = os.path.join(STATIC_DIR, "index.js")
        try:
            with open(path, "rb") as f:
                body = f.read()
        except OSError:
            body = (b'export function render(){document.body.textContent='
                    b'"tb_bnstats: the frontend bundle is missing (run make bundle)";}')
        return http_util.Respond(request, body, "text/javascript")

    @route(())
    def _serve_runs(self, request: wrappers.Request, args: Args) -> Answer:
        indexes, ctx, eid = self._index(request)
        runs = []
        for run in sorted(indexes):
            index = indexes[run]
            layers = [self._layer_json(info, index) for info in self._ordered_layers(index)]
            runs.append({
                "run": run,
                "severity": self._severity(ctx, eid, run, index),
                "layers": layers,
                "max_step": max(index.max_step.values(), default=None),
                "metrics": sorted({*index.metric_tags, *index.metric_logs}),
                "newer_format_versions": sorted(index.newer_versions),
            })
        newer = sorted({v for index in indexes.values() for v in index.newer_versions})
        if newer and ("newer", tuple(newer)) not in self._reported:
            self._reported.add(("newer", tuple(newer)))
            logger.warning("bn_stats: some runs were %s", metadata.newer_version_message(newer))
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
            # Records of a newer log format, shown as far as this version reads them (a banner in the tab).
            "newer_format": ({"versions": newer, "runs": [r for r in sorted(indexes) if indexes[r].newer_versions],
                              "message": "Some runs were " + metadata.newer_version_message(newer) + "."}
                             if newer else None),
        }, None

    @route(("run",))
    def _serve_overview(self, request: wrappers.Request, args: Args) -> Answer:
        indexes, ctx, eid = self._index(request)
        run = self._run_arg(args, indexes)
        return self.overview_impl(ctx, eid, run, indexes[run]), None

    def overview_impl(self, ctx: Any, eid: str, run: str, index: TagIndex) -> dict[str, Any]:
        """Each layer's latest values and badges."""
        tags: dict[str, tuple[str, str]] = {}  # tag -> (layer, quantity)
        layer_logs = self._logs(ctx, eid, index, index.layer_infos)
        newest: list[tuple[str, str, tuple[int, float] | None]] = []
        for layer in index.layer_infos:
            log, by_q = layer_logs.get(layer), index.layer_tags.get(layer, {})
            for q in OVERVIEW_QUANTITIES:
                if log is not None and log.holds(q):
                    newest.append((layer, q, records.latest(log.series.get(q), log.envelope, q)))
                elif q in by_q:
                    tags[by_q[q]] = (layer, q)
        # downsample=1 keeps each tag's latest point (the provider contract).
        for tag, (steps, values) in self._read(ctx, eid, run, index, list(tags), 1).items():
            if len(steps):
                i = int(np.argmax(steps))
                newest.append((*tags[tag], (int(steps[i]), float(values[i]))))
        latest: dict[str, dict[str, float | None]] = {layer: {} for layer in index.layer_infos}
        latest_step: dict[str, int | None] = {layer: None for layer in index.layer_infos}
        for layer, q, point in newest:
            if point is None:
                continue
            s, v = point
            latest[layer][q] = v if math.isfinite(v) else None
            before = latest_step[layer]
            latest_step[layer] = s if before is None else max(s, before)
        pretrained = diagnosis.rules.pretrained_starts(reader.read_train_begins(self._provider, ctx, index, eid))
        findings = [f for f, _ in self._diagnosis(ctx, eid, run, index)["pairs"]]
        layers = []
        for info in self._ordered_layers(index):
            d = self._layer_json(info, index)
            d["latest"] = latest[info.name]
            d["latest_step"] = latest_step[info.name]
            d["badges"] = data.finding_badges(findings, info.name) + data.badges(
                info, latest[info.name], pretrained.get(info.name))
            layers.append(d)
        return {"run": run, "layers": layers, "max_step": max(index.max_step.values(), default=None)}

    @route(("run", "measure", "bins"), csv_ok=True)
    def _serve_heatmap(self, request: wrappers.Request, args: Args) -> Answer:
        indexes, ctx, eid = self._index(request)
        run = self._run_arg(args, indexes)
        index = indexes[run]
        measure = one(args, "measure", "mean_gap/max")
        if measure not in HEATMAP_MEASURES:
            raise BadRequest(f"unknown measure {measure!r}; one of {list(HEATMAP_MEASURES)}")
        bins = int_arg(args, "bins", 200, 1, MAX_BINS)
        return self.heatmap_impl(ctx, eid, run, index, measure, bins)

    def heatmap_impl(self, ctx: Any, eid: str, run: str, index: TagIndex, measure: str, bins: int) -> Answer:
        """Layers x step bins of ``measure`` (the max in each bin)."""
        infos = self._ordered_layers(index)
        by_layer, samplings = self._layer_series(ctx, eid, run, index, {info.name: [measure] for info in infos})
        series = {name: got[measure] for name, got in by_layer.items() if measure in got}
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
        sampling = data.merge_sampling(samplings)
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
        return payload, lambda: (f"heatmap_{safe_name(run)}_{safe_name(measure)}.csv",
                                 ["layer", "step_from", "step_to", measure], rows())

    @route(("run", "layer", "quantities", "points"), csv_ok=True)
    def _serve_series(self, request: wrappers.Request, args: Args) -> Answer:
        indexes, ctx, eid = self._index(request)
        run = self._run_arg(args, indexes)
        index = indexes[run]
        layer = self._layer_arg(args, index, run)
        raw_q = one(args, "quantities")
        wanted = list(DEFAULT_SERIES) if raw_q is None else [q for q in raw_q.split(",") if q]
        if not wanted:
            raise BadRequest("quantities is empty")
        for q in wanted:
            if q not in SERVED_SERIES:
                raise BadRequest(f"unknown quantity {q!r}; one of {list(SERVED_SERIES)}")
        points = int_arg(args, "points", 1000, 2, MAX_POINTS)
        return self.series_impl(ctx, eid, run, index, layer, wanted, points)

    def series_impl(self, ctx: Any, eid: str, run: str, index: TagIndex, layer: str, wanted: Sequence[str],
                    points: int) -> Answer:
        """One layer's series ``wanted``, min/max downsampled to ``points``."""
        by_layer, samplings = self._layer_series(ctx, eid, run, index, {layer: list(dict.fromkeys(wanted))})
        got = by_layer[layer]
        out, full = {}, {}
        for q in dict.fromkeys(wanted):
            if q not in got:
                continue
            steps, values = got[q]
            s, v = data.minmax_downsample(steps, values, points)
            full[q] = (s, v)
            out[q] = {"steps": s.tolist(), "values": data.finite_list(v), "stored_points": int(len(steps))}
        info = index.layer_infos[layer]
        payload = {
            "run": run, "layer": layer, "info": self._layer_json(info, index), "points": points,
            "series": out, "missing": [q for q in wanted if q not in got],
            "sampling": data.merge_sampling(samplings),
        }
        # Named by its quantities too: each chart of a layer downloads under its own name.
        return payload, lambda: (f"{safe_name(run)}_{safe_name(layer)}_{'-'.join(map(safe_name, full))}.csv",
                                 *data.wide_rows(full))

    def _snapshots(self, request: wrappers.Request, args: Args, ctx: Any, eid: str,
                   indexes: Mapping[str, TagIndex]) -> tuple[str, str, TagIndex, np.ndarray, np.ndarray]:
        run = self._run_arg(args, indexes)
        index = indexes[run]
        layer = self._layer_arg(args, index, run)
        if layer not in index.channel_tags:
            raise BadRequest(f"layer {layer!r} of run {run!r} has no per-channel snapshots")
        steps, tensor = self._sorted_snapshots(ctx, eid, index.source, index.channel_tags[layer], 3,
                                               metadata.SNAPSHOT_ROWS,
                                               f"layer {layer!r} of run {run!r} has no readable per-channel snapshot")
        return run, layer, index, steps, tensor

    def _sorted_snapshots(self, ctx: Any, eid: str, source: str, tag: str, ndim: int, rows: Sequence[str],
                          unreadable: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, tensor)`` of a snapshot tag of the provider's run
        ``source`` in step order; a 400 saying ``unreadable`` when there is
        none of ``ndim`` dimensions with ``rows``."""
        steps, tensor = reader.read_snapshots(self._provider, ctx, source, tag, READ_ALL, eid)
        if not len(steps) or tensor.ndim != ndim or tensor.shape[1] != len(rows):
            raise BadRequest(unreadable)
        order = np.argsort(steps, kind="stable")
        return steps[order], tensor[order]

    @staticmethod
    def _nearest(steps: np.ndarray, requested: int | None) -> int:
        """The index of the step nearest ``requested`` (ties: the earlier), the last for None."""
        return len(steps) - 1 if requested is None else int(np.argmin(np.abs(steps - requested)))

    @route(("run", "layer", "step"), csv_ok=True)
    def _serve_snapshot(self, request: wrappers.Request, args: Args) -> Answer:
        indexes, ctx, eid = self._index(request)
        requested = int_arg(args, "step", None, 0, 2**62)
        run, layer, index, steps, tensor = self._snapshots(request, args, ctx, eid, indexes)
        i = self._nearest(steps, requested)
        snap = tensor[i]
        rows = {row: data.finite_list(snap[k]) for k, row in enumerate(metadata.SNAPSHOT_ROWS)}
        payload = {
            "run": run, "layer": layer, "requested_step": requested, "step": int(steps[i]),
            "steps": steps.tolist(), "channels": int(snap.shape[1]), "rows": rows,
            "info": self._layer_json(index.layer_infos[layer], index),
            "sampling": data.merge_sampling([self._snapshot_sampling(index, layer, steps)]),
        }
        csv_rows = lambda: [[c] + [float(snap[k, c]) for k in range(snap.shape[0])]  # noqa: E731
                            for c in range(snap.shape[1])]
        return payload, lambda: (f"{safe_name(run)}_{safe_name(layer)}_step{int(steps[i])}.csv",
                                 ["channel"] + list(metadata.SNAPSHOT_ROWS), csv_rows())

    @route(("run", "layer", "step"), csv_ok=True)
    def _serve_replicas(self, request: wrappers.Request, args: Args) -> Answer:
        indexes, ctx, eid = self._index(request)
        requested = int_arg(args, "step", None, 0, 2**62)
        run = self._run_arg(args, indexes)
        layer = self._layer_arg(args, indexes[run], run)
        return self.replicas_impl(ctx, eid, run, indexes[run], layer, requested)

    def replicas_impl(self, ctx: Any, eid: str, run: str, index: TagIndex, layer: str,
                      requested: int | None) -> Answer:
        """Each replica's batch (and own moving) moments per channel at the
        snapshot step nearest ``requested`` (the latest by default), with the
        global batch's moments of that step's per-channel snapshot."""
        if layer not in index.replica_tags:
            raise BadRequest(f"layer {layer!r} of run {run!r} has no per-replica moments (it ran on one replica)")
        steps, tensor = self._sorted_snapshots(ctx, eid, index.source, index.replica_tags[layer], 4,
                                               metadata.REPLICA_ROWS,
                                               f"layer {layer!r} of run {run!r} has no readable per-replica snapshot")
        i = self._nearest(steps, requested)
        snap, step = tensor[i], int(steps[i])
        glob: dict[str, list[float | None]] = {}
        if layer in index.channel_tags:
            c_steps, c_tensor = reader.read_snapshots(self._provider, ctx, index.source, index.channel_tags[layer],
                                                      READ_ALL, eid)
            at = np.flatnonzero(c_steps == step)
            if len(at) and c_tensor.ndim == 3:
                glob = {row: data.finite_list(c_tensor[at[-1], metadata.SNAPSHOT_ROWS.index(row)])
                        for row in ("batch_mean", "batch_var")}
        rows = {row: [data.finite_list(snap[k, r]) for r in range(snap.shape[1])]
                for k, row in enumerate(metadata.REPLICA_ROWS)}
        payload = {"run": run, "layer": layer, "requested_step": requested, "step": step, "steps": steps.tolist(),
                   "replicas": int(snap.shape[1]), "channels": int(snap.shape[2]), "rows": rows, "global": glob,
                   "info": self._layer_json(index.layer_infos[layer], index),
                   "sampling": data.merge_sampling([self._snapshot_sampling(index, layer, steps)])}
        csv_rows = lambda: [[r, c] + [float(snap[k, r, c]) for k in range(snap.shape[0])]  # noqa: E731
                            for r in range(snap.shape[1]) for c in range(snap.shape[2])]
        return payload, lambda: (f"{safe_name(run)}_{safe_name(layer)}_replicas_step{step}.csv",
                                 ["replica", "channel"] + list(metadata.REPLICA_ROWS), csv_rows())

    @route(("run", "layer"), csv_ok=True)
    def _serve_bands(self, request: wrappers.Request, args: Args) -> Answer:
        """Spread over channels (10th and 90th percentiles, min, max) of each
        snapshot row at every snapshot step: the band around the channel
        averages of the layer view."""
        indexes, ctx, eid = self._index(request)
        run, layer, index, steps, tensor = self._snapshots(request, args, ctx, eid, indexes)
        out: dict[str, dict[str, list[float | None]]] = {}
        rows: list[list[Any]] = []
        for k, row in enumerate(metadata.SNAPSHOT_ROWS):
            values = tensor[:, k, :]
            p10, p90, lo, hi = data.channel_spread(values)
            out[row] = {"p10": data.finite_list(p10), "p90": data.finite_list(p90),
                        "min": data.finite_list(lo), "max": data.finite_list(hi)}
            rows += [[row, int(s), float(lo[i]), float(p10[i]), float(p90[i]), float(hi[i])]
                     for i, s in enumerate(steps)]
        payload = {"run": run, "layer": layer, "steps": steps.tolist(), "rows": out,
                   "sampling": data.merge_sampling([self._snapshot_sampling(index, layer, steps)])}
        return payload, lambda: (f"{safe_name(run)}_{safe_name(layer)}_bands.csv",
                         ["row", "step", "min", "p10", "p90", "max"], rows)

    @route(("run", "points"), csv_ok=True)
    def _serve_loss(self, request: wrappers.Request, args: Args) -> Answer:
        """The run's own metrics (``metric/train/*`` per step, ``metric/val/*``
        per epoch); the scalars another writer put into the run's directory
        (``torch.utils.tensorboard.SummaryWriter(log_dir)`` beside
        ``BNStatsMonitor``: any tag, step = the writer's global step); and,
        when Keras' TensorBoard callback wrote next to it (``<run>/train``,
        ``<run>/validation`` or siblings of the run's parent), its
        ``batch_*`` (step = batch counter) and ``epoch_*`` (step = epoch,
        mapped to the step where that epoch ended) scalars
        (:mod:`tb_bnstats.plugin.scalars`)."""
        indexes, ctx, eid = self._index(request)
        run = self._run_arg(args, indexes)
        points = int_arg(args, "points", 1000, 2, MAX_POINTS)
        return self.loss_impl(ctx, eid, run, indexes[run], points)

    def loss_impl(self, ctx: Any, eid: str, run: str, index: TagIndex, points: int) -> Answer:
        """The run's metrics, the scalars in its directory and Keras' own
        scalars beside it, on one step axis."""
        raw = {key: self._read(ctx, eid, run, index, [tag], READ_ALL).get(tag, (np.zeros(0, np.int64), np.zeros(0)))
               for key, tag in index.metric_tags.items()}
        metric_logs = self._logs(ctx, eid, index, index.metric_logs, index.metric_logs)
        raw.update(reader.metric_points(metric_logs))
        series: list[dict[str, Any]] = []
        val_steps: np.ndarray | None = None
        for key in sorted(raw):
            steps, values = raw[key]
            if key.startswith("val/") and val_steps is None and len(steps):
                val_steps = np.sort(steps)
            series.append({"key": key, "source": "bn_stats", "split": key.split("/", 1)[0],
                           "name": key.split("/", 1)[1], "steps": steps, "values": values,
                           "aligned": "step"})
        listed = scalars.listing(self._provider, ctx, eid)  # once for both
        series += scalars.own_series(self._provider, ctx, eid, index.source, listed)
        series += scalars.keras_series(self._provider, ctx, eid, index.source, listed, val_steps,
                                       max(index.max_step.values(), default=0))
        out: list[dict[str, Any]] = []
        samplings: list[dict[str, Any] | None] = []
        full: dict[str, records.Series] = {}
        for s in series:
            log = metric_logs.get(s["key"]) if s["source"] == "bn_stats" else None
            samplings.append(data.log_sampling(log.records, log.expected_records) if log is not None
                             else self._sampling(s["steps"], sparse=s["split"].startswith("probe"))
                             if s["aligned"] == "step" else None)
            st, v = data.minmax_downsample(s["steps"], s["values"], points)
            full[s["key"]] = (st, v)
            out.append({**s, "steps": st.tolist(), "values": data.finite_list(v)})
        payload = {"run": run, "series": out, "sampling": data.merge_sampling(samplings)}
        return payload, lambda: (f"{safe_name(run)}_metrics.csv", *data.wide_rows(full))

    @route(("run", "layer", "quantity", "points"), csv_ok=True)
    def _serve_compare(self, request: wrappers.Request, args: Args) -> Answer:
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
        layer = one(args, "layer")
        if layer is None:
            raise BadRequest("missing parameter 'layer'")
        if not any(layer in indexes[r].layer_infos for r in runs):
            raise BadRequest(f"unknown layer {layer!r}: none of the runs has it")
        quantity = one(args, "quantity", "mean_gap/max")
        if quantity not in SERVED_SERIES:
            raise BadRequest(f"unknown quantity {quantity!r}; one of {list(SERVED_SERIES)}")
        points = int_arg(args, "points", 1000, 2, MAX_POINTS)
        return self.compare_impl(ctx, eid, indexes, runs, layer, quantity, points)

    def compare_impl(self, ctx: Any, eid: str, indexes: Mapping[str, TagIndex], runs: Sequence[str], layer: str,
                     quantity: str, points: int) -> Answer:
        """One quantity of one layer from several runs."""
        out: list[dict[str, Any]] = []
        missing: list[str] = []
        samplings: list[dict[str, Any] | None] = []
        full: dict[str, records.Series] = {}
        for r in runs:
            index = indexes[r]
            got, sampled = (self._layer_series(ctx, eid, r, index, {layer: [quantity]})
                            if layer in index.layer_infos else ({}, []))
            if quantity not in got.get(layer, {}):
                missing.append(r)
                continue
            steps, values = got[layer][quantity]
            samplings += sampled
            s, v = data.minmax_downsample(steps, values, points)
            full[r] = (s, v)
            out.append({"run": r, "info": self._layer_json(index.layer_infos[layer], index),
                        "steps": s.tolist(), "values": data.finite_list(v)})
        payload = {"layer": layer, "quantity": quantity, "runs": out, "missing": missing,
                   "sampling": data.merge_sampling(samplings)}
        return payload, lambda: (f"compare_{safe_name(layer)}_{safe_name(quantity)}.csv", *data.wide_rows(full))

    def _run_data(self, ctx: Any, eid: str, run: str,
                  index: TagIndex) -> tuple[records.RunData, dict[str, records.Series]]:
        """The run's layer series (every stored point, through the series
        cache) and stored records, for :mod:`tb_bnstats.diagnosis`."""
        # The metrics a rule reads (the frozen layers' recalibration, BN010), not every metric.
        metric_tags = {key: tag for key, tag in index.metric_tags.items() if key in diagnosis.rules.METRICS_READ}
        raw = self._read(ctx, eid, run, index, reader.layer_series_tags(index) + list(metric_tags.values()), READ_ALL)
        series = reader.series_by_layer(index, raw)
        envelopes = reader.with_logs(series, self._logs(ctx, eid, index, index.log_tags))
        run_data = records.run_data(
            index.layer_infos, series, envelopes=envelopes,
            metrics={key: raw[tag] for key, tag in metric_tags.items() if tag in raw},
            stored_findings=reader.read_stored_findings(self._provider, ctx, index, eid),
            train_begins=reader.read_train_begins(self._provider, ctx, index, eid),
            newer_format_versions=index.newer_versions)
        return run_data, raw

    @route(("run",))
    def _serve_findings(self, request: wrappers.Request, args: Args) -> Answer:
        indexes, ctx, eid = self._index(request)
        run = self._run_arg(args, indexes)
        return self.findings_impl(ctx, eid, run, indexes[run]), None

    def _diagnosis(self, ctx: Any, eid: str, run: str, index: TagIndex) -> dict[str, Any]:
        """The run's diagnosis, once per new data (:class:`cache.FindingsCache`):
        ``{"pairs": [(finding, source)], "stored": bool, "computed": n, "sampling": ...}``
        (:func:`tb_bnstats.diagnosis.findings_of`)."""
        # The scalar tags logged at every logged step (a log of version 1); the others are sparse.
        regular = {tag for by_q in index.layer_tags.values() for q, tag in by_q.items() if q not in SPARSE_SERIES}

        def diagnose() -> dict[str, Any]:
            run_data, raw = self._run_data(ctx, eid, run, index)
            computed = diagnosis.diagnose_run(run, run_data)
            return {"pairs": diagnosis.findings_of(run, run_data, computed),
                    "stored": run_data.stored_findings is not None, "computed": len(computed),
                    "sampling": data.merge_sampling([self._sampling(s, sparse=tag not in regular)
                                                     for tag, (s, _) in raw.items()])}

        return self._findings_cache.get((eid, index.source, run), self._signature(index), diagnose)

    @staticmethod
    def _signature(index: TagIndex) -> cache.Signature:
        """What a run's diagnosis depends on: every tag's last step."""
        return tuple(sorted(index.max_step.items()))

    def _severity(self, ctx: Any, eid: str, run: str, index: TagIndex) -> str | None:
        """A run's worst severity ("error", "warning", "info", "ok") for the
        run selector: from its cached diagnosis, else from the findings the
        callback stored (one small read); None when neither is at hand (the
        tab asks ``/findings``)."""
        cached = self._findings_cache.peek((eid, index.source, run), self._signature(index))
        if cached is not None:
            return worst_severity(f for f, _ in cached["pairs"])
        if index.diagnosis_tag is None:
            return None
        stored = diagnosis.merging.parse_stored(reader.read_stored_findings(self._provider, ctx, index, eid))
        return None if stored is None else worst_severity(stored)

    def findings_impl(self, ctx: Any, eid: str, run: str, index: TagIndex) -> dict[str, Any]:
        """The run's findings as :func:`tb_bnstats.diagnose` gives them
        (:func:`tb_bnstats.diagnosis.findings_of`: those the callback stored
        in the logs first, then those computed now over every stored point
        that they lack); each says where it came from (``source``: ``stored``
        or ``computed``)."""
        found = self._diagnosis(ctx, eid, run, index)
        pairs = found["pairs"]
        findings = [{**f.to_dict(), "source": source} for f, source in pairs]
        stored = found["stored"]
        sources = sorted({f["source"] for f in findings}, key=(diagnosis.merging.STORED,
                                                                 diagnosis.merging.COMPUTED).index)
        return {
            "run": run, "findings": findings,
            "counts": {sev: sum(f["severity"] == sev for f in findings) for sev in diagnosis.SEVERITIES},
            "source": "+".join(sources) or ("stored" if stored else "computed"),
            "stored": stored, "stored_step": (index.max_step.get(index.diagnosis_tag)
                                             if stored and index.diagnosis_tag is not None else None),
            "computed": found["computed"],
            "severity": worst_severity(f for f, _ in pairs),
            "titles": {code: c.title for code, c in diagnosis.CODES.items()},
            "sampling": found["sampling"],
        }
