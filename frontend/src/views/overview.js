// Overview, the symptom first: the run's verdict (findings), the train/inference
// gap on the probe batch, then the layers in depth order with their current gap,
// convergence, a sparkline and badges, then the layers x steps heat map of a gap
// measure with the loss on the same step axis under it.
import { h, card, downloads } from "../ui/dom.js";
import { SyncGroup, Y_AXIS_SIZE } from "../charts/uplot.js";
import { lineChart } from "../charts/line.js";
import { heatmapChart } from "../charts/heatmap.js";
import { sparkline } from "../charts/sparkline.js";
import { COLORS, heatScaleTop, lossColor } from "../charts/colors.js";
import { fmtNum, fmtPct, fmtStep } from "../model/format.js";
import { maxPool, alignSeries } from "../model/series.js";
import { smooth } from "../model/smoothing.js";
import { findingsCard } from "./findings.js";
import { probePairs, latestGap } from "../model/probe.js";
import { momentumLabel, momentumTitle, convergenceFormula, warmupEnd } from "../model/momentum.js";
import { LAYER_SORTS, sortLayers } from "../model/layersort.js";
import { lossSeries as lossSeriesOf, lossLabel } from "../model/loss.js";
import { replicaSummary } from "../model/replicas.js";

function matches(name, filter) {
  return !filter || name.toLowerCase().includes(filter.trim().toLowerCase());
}

export async function renderOverview(root, app, token) {
  const run = app.state.run;
  const bins = Math.max(60, Math.min(400, Math.floor((root.clientWidth || 900) / 3)));
  // All three requests start now; each part is drawn as soon as its data arrive.
  const pOv = app.api.overview(run);
  const pHm = app.api.heatmap(run, app.state.measure, bins);
  const pLoss = app.api.loss(run, 1500);
  const pFind = app.api.findings(run);
  pHm.catch(() => {});
  pLoss.catch(() => {});
  pFind.catch(() => {});
  const ov = await pOv;
  if (!app.alive(token)) return () => {};
  // -- findings (banner + list, above the layers table) ------------------------
  const findEl = h("div", { class: "bn-findings-wrap" }, h("div", { class: "bn-note" }, "diagnosing…"));
  // Several replicas: how many, and whether BN was synchronized across them.
  const replicas = replicaSummary(ov.layers);
  if (replicas) {
    root.append(h("div", { class: `bn-replicas ${replicas.synchronized ? "sev-ok" : "sev-warning"}`, title: replicas.title,
      dataset: { role: "replicas-summary", replicas: String(replicas.replicas) } }, replicas.text));
  }
  root.append(findEl);
  // The symptom next: the train/inference gap (filled in when the loss route answers), then the layers.
  const probeEl = h("div", { dataset: { role: "probe-gap" } });
  root.append(probeEl);
  const findDone = pFind.then((body) => {
    app.noteSeverity(run, body.severity);
    if (app.alive(token)) findEl.replaceChildren(findingsCard(body, app));
  }, (e) => {
    if (app.alive(token)) findEl.replaceChildren(h("div", { class: "bn-note" }, `Diagnosis unavailable: ${e.message || e}`));
  });
  const group = new SyncGroup(app.zoomMemory("overview", run));
  const charts = [];
  const color = app.color(run);

  // -- layers table ----------------------------------------------------------
  const body = h("tbody");
  const sparks = new Map();
  // The probe's output drift column, when the run has a probe (BNStatsCallback(probe_data=...)).
  const hasProbe = ov.layers.some((l) => l.latest && l.latest.probe_output_drift !== undefined);
  // The moving averages against measured population statistics (BNStatsCallback(population_data=...)).
  const hasPopulation = ov.layers.some((l) => l.latest && l.latest["population_mean_gap/max"] !== undefined);
  const { key: sortKey, reversed } = app.state.layerSort;
  for (const layer of sortLayers(ov.layers, sortKey, reversed)) {
    const latest = layer.latest || {};
    const conv = latest.convergence;
    const canvas = h("canvas", { dataset: { layer: layer.name, w: "140", h: "24" } });
    sparks.set(layer.name, canvas);
    const badges = layer.badges.length
      ? layer.badges.map((b) => h("span", { class: `bn-badge tone-${b.tone || "warn"}${b.hint ? " hint" : ""}`,
        title: b.hint ? `hint (a threshold, not the diagnosis): ${b.detail}` : b.detail, dataset: { badge: b.id } }, b.label))
      : [h("span", { class: "bn-badge ok" }, "ok")];
    body.append(h("tr", { dataset: { layer: layer.name }, title: `Open ${layer.name}`, onclick: () => app.go("layer", { layer: layer.name, channelStep: null }) },
      h("td", { class: "name" }, layer.name),
      h("td", { class: "num" }, String(layer.channels)),
      h("td", { class: "num", title: momentumTitle(layer), dataset: { role: "momentum" } }, momentumLabel(layer)),
      h("td", { class: "num", title: `max over channels of |mu_B - mu_R| / sqrt(var_B + eps) at step ${layer.latest_step}` }, fmtNum(latest["mean_gap/max"])),
      h("td", { class: "num", title: `|log var ratio| max over channels` }, fmtNum(latest["abs_log_var_ratio/max"])),
      layer.frozen
        ? h("td", { class: "num", dataset: { role: "convergence" }, title: "frozen on purpose: its statistics do not update, so there is nothing to converge" }, "–")
        : h("td", { class: "num", dataset: { role: "convergence" }, title: layer.badges.some((b) => b.id === "pretrained")
          ? `${convergenceFormula(layer)} after ${latest.updates} updates: the weight on the new batches since the pretrained start (not a warm-up: the pretrained statistics are an estimate too)`
          : `${convergenceFormula(layer)} after ${latest.updates} updates; 95% after ${layer.steps_to_95}` },
        fmtPct(conv), h("span", { class: "bn-bar-conv" }, h("span", { style: { width: `${Math.max(0, Math.min(1, conv || 0)) * 100}%` } }))),
      hasProbe ? h("td", { class: "num", dataset: { role: "probe-drift" }, title: `||y_train − y_inf|| / ||y_train|| of this layer's output on the probe batch, latest probe` }, fmtNum(latest.probe_output_drift)) : null,
      hasPopulation ? h("td", { class: "num", dataset: { role: "population-gap" }, title: "max over channels of |mu_R - mu_P| / sqrt(var_P + eps): the moving mean against the population mean (PreciseBN), latest measurement" }, fmtNum(latest["population_mean_gap/max"])) : null,
      h("td", null, canvas),
      h("td", null, badges)));
  }
  // A sortable header: a click sorts by it, worst first; a second click reverses; "layer" goes back to depth order.
  const sortable = (key, title, text) => {
    const on = sortKey === key;
    return h("th", { class: "sortable", title: `${title} (click: sort, worst first; again: reverse)`, dataset: { sort: key },
      "aria-sort": on ? (reversed === (LAYER_SORTS[key].worst === "high") ? "ascending" : "descending") : "none",
      onclick: () => app.go("overview", { layerSort: { key, reversed: on ? !reversed : false } }) },
    text, on && key !== "depth" ? (reversed ? " ▲" : " ▼") : "");
  };
  const table = h("table", { class: "bn-layers", dataset: { role: "layers" } },
    h("thead", null, h("tr", null,
      sortable("depth", "back to depth order", sortKey === "depth" ? "layer (depth order)" : `layer (by ${LAYER_SORTS[sortKey].label})`),
      h("th", null, "ch"), h("th", { title: "as the layer was built: PyTorch's momentum is the weight of the new batch (its 0.1 is Keras' 0.9), Keras' the weight kept on the old average" }, "momentum"),
      sortable("mean_gap", "normalized mean gap, max over channels, latest step", "mean gap"),
      sortable("var_gap", "|log((var_B+eps)/(var_R+eps))|, max over channels, latest step", "var gap"),
      sortable("convergence", "1 − m^t at the latest step", "convergence"),
      hasProbe ? sortable("probe_drift", "train/inference output drift on the probe batch (latest probe): where in depth the gap starts", "probe drift") : null,
      hasPopulation ? sortable("population_gap", "moving mean vs population mean, in population std, max over channels (latest measurement)", "vs population") : null,
      h("th", null, `${app.state.measure} over steps`), h("th", null, "warnings"))),
    body);
  root.append(card("Layers", `${ov.layers.length} BatchNormalization layers · run ${run} · last step ${fmtStep(ov.max_step)}`, null, table));

  // -- heat map + loss (filled in as their data arrive) ------------------------------
  const measureSel = h("select", { onchange: (e) => app.go("overview", { measure: e.target.value }) },
    ...(app.meta.gap_measures || []).map((m) => h("option", { value: m, selected: m === app.state.measure }, m)));
  const hmEl = h("div", { class: "bn-chart", dataset: { role: "heatmap" } }, h("div", { class: "bn-note" }, "loading…"));
  const lossEl = h("div", { class: "bn-chart", dataset: { role: "loss" } });
  const lossNote = h("div", { class: "bn-note" });
  const scaleNote = h("span", { class: "bn-note" });
  root.append(card("Gap heat map", "layers × steps, max per step bin; drag to zoom, double-click to reset, click a row to open the layer",
    downloads(app.routeUrl, "heatmap", { run, measure: app.state.measure, bins }, ["heatmap", run, app.state.measure]),
    h("div", { class: "bn-row" }, h("label", null, "measure ", measureSel), scaleNote),
    hmEl,
    h("h3", null, "Loss on the same step axis", downloads(app.routeUrl, "loss", { run, points: 1500 }, [run, "metrics"])),
    lossNote, lossEl));

  let hm = null;
  let hmChart = null;
  app.onCleanup(() => {
    for (const c of charts) c.destroy();
    charts.length = 0;
    if (hmChart) hmChart.destroy();
    hmChart = null;
  });
  const warmupOf = new Map(ov.layers.map((l) => [l.name, warmupEnd(l)]));
  const drawHeatmap = () => {
    if (!hm) return;
    const keep = hm.layers.map((n, i) => i).filter((i) => matches(hm.layers[i], app.state.filter));
    const sub = { ...hm, layers: keep.map((i) => hm.layers[i]), values: keep.map((i) => hm.values[i]) };
    if (hmChart) hmChart.destroy();
    hmEl.replaceChildren();
    hmChart = heatmapChart(hmEl, sub, { group, warmup: sub.layers.map((name) => warmupOf.get(name) ?? null), onClickRow: (layer) => app.go("layer", { layer, channelStep: null }) });
  };
  const heatDone = pHm.then((data) => {
    if (!app.alive(token)) return;
    hm = data;
    app.noteSampling("heatmap", hm.sampling);
    // Bins hold integer steps [e_j, e_j+1): cells are drawn centred on their steps.
    group.extend(hm.step_edges[0] - 0.5, hm.step_edges[hm.step_edges.length - 1] - 0.5);
    const top = heatScaleTop(hm.measure);
    scaleNote.replaceChildren("0", h("span", { class: "bn-legend-scale" }),
      top === null ? `${fmtNum(hm.max)} (this run's max, log-compressed)` : `${fmtNum(top, 3)} and above (a fixed scale: runs compare; this run's max ${fmtNum(hm.max, 3)})`,
      " · dimmed: warm-up, before the moving averages are 95% converged");
    drawHeatmap();
    group.reset();
    app.markFirstChart();
    const rowOf = new Map(hm.layers.map((n, i) => [n, hm.values[i]]));
    for (const [name, canvas] of sparks) sparkline(canvas, maxPool(rowOf.get(name) || [], 70), color, hm.max);
  });
  const lossDone = pLoss.then((loss) => {
    if (!app.alive(token)) return;
    app.noteSampling("loss", loss.sampling);
    const lossSeries = lossSeriesOf(loss.series);
    if (!lossSeries.length) {
      lossNote.textContent = "No loss logged for this run (BNStatsCallback(log_metrics=True), BNStatsMonitor.step(loss=...), " +
        "Keras' TensorBoard callback next to it, or a SummaryWriter scalar with \"loss\" in its tag written into the run's directory).";
      return;
    }
    const w = app.state.smoothing;
    const data = alignSeries(lossSeries.map((s) => ({ x: s.steps, y: s.values })));
    const raw = data.slice(1);
    const series = lossSeries.map((s, i) => ({
      label: lossLabel(s),
      color: lossColor(i),
      spanGaps: true,
      points: s.steps.length <= 60 || s.split !== "train",
      dash: s.source === "bn_stats" ? undefined : [5, 3],
      raw: raw[i],
      rawLine: w > 0 && s.split === "train",
    }));
    const smoothed = raw.map((ys, i) => (lossSeries[i].split !== "train" ? ys : smooth(ys, w)));
    group.extend(data[0][0] - 0.5, data[0][data[0].length - 1] + 0.5);
    charts.push(lineChart(lossEl, { name: "loss", series, data: [data[0], ...smoothed], group, height: 200, ySize: Y_AXIS_SIZE, yLabel: "loss" }));
    group.reset();
    app.markFirstChart();
    const notes = lossSeries.filter((s) => s.aligned === "estimated").map((s) => s.name);
    lossNote.textContent = notes.length ? `Epoch-level ${notes.join(", ")} placed at estimated epoch-end steps.` : "";
    drawProbe(probePairs(loss.series));
  });
  // -- train/inference gap on the probe batch: each metric in both modes -------------
  const drawProbe = (pairs) => {
    if (!pairs.length) return;
    const cards = pairs.map((pair) => {
      const data = alignSeries([pair.train, pair.inference, pair.recalibrated].filter(Boolean).map((s) => ({ x: s.steps, y: s.values })));
      const g = latestGap(pair);
      const el = h("div", { class: "bn-chart", dataset: { role: `probe-${pair.name}` } });
      const note = g === null ? "" : `step ${fmtStep(g.step)}: training mode ${fmtNum(g.train, 4)}, inference mode ${fmtNum(g.inference, 4)} (difference ${fmtNum(g.gap, 3)})`;
      const body = h("div", null, h("h3", null, pair.name), h("div", { class: "bn-note", dataset: { role: `probe-note-${pair.name}` } }, note), el);
      return { body, draw: () => charts.push(lineChart(el, {
        name: `probe-${pair.name}`, group, height: 130, yLabel: pair.name,
        series: [{ label: `${pair.name}, training mode`, color: COLORS.batch, spanGaps: true, points: true, raw: data[1] },
          { label: `${pair.name}, inference mode`, color: COLORS.moving, spanGaps: true, points: true, raw: data[2] },
          ...(pair.recalibrated ? [{ label: `${pair.name}, inference mode, frozen layers recalibrated`, color: COLORS.debiased, spanGaps: true, points: true, raw: data[3] }] : [])],
        data,
      })) };
    });
    probeEl.replaceChildren(card("Train/inference gap on the probe batch",
      ov.layers.some((l) => l.framework === "pytorch")
        ? "one fixed batch (probe_data) in train() (batch statistics) and eval() (running statistics); nothing is updated"
        : "one fixed batch (probe_data, by default the first 256 training samples) with training=True (batch statistics) and False (moving statistics)",
      null, h("div", { class: "bn-grid2" }, ...cards.map((c) => c.body)))); // side by side: the layers start on the first screen
    for (const c of cards) c.draw();
    group.reset();
  };

  app.onFilter = () => {
    for (const tr of body.children) tr.hidden = !matches(tr.dataset.layer, app.state.filter);
    drawHeatmap();
  };
  if (app.state.filter) app.onFilter();
  await Promise.all([heatDone, lossDone, findDone]);
  return null;
}
