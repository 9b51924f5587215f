// Overview: layers in depth order with their current gap, convergence,
// a sparkline and warning badges; the layers x steps heat map of a gap measure
// with the loss on the same step axis under it.
import { h, card, downloads } from "../dom.js";
import { SyncGroup, Y_AXIS_SIZE, heatmapChart, lineChart, sparkline } from "../charts.js";
import { fmtNum, fmtPct, fmtStep } from "../format.js";
import { maxPool, alignSeries } from "../downsample.js";
import { smooth } from "../smoothing.js";

const LOSS_COLORS = ["#d55e00", "#0072b2", "#009e73", "#cc79a7", "#e69f00", "#56b4e9"];

function matches(name, filter) {
  return !filter || name.toLowerCase().includes(filter.trim().toLowerCase());
}

export async function renderOverview(root, app, token) {
  const run = app.state.run;
  const bins = Math.max(60, Math.min(400, Math.floor((root.clientWidth || 900) / 3)));
  const [ov, hm, loss] = await Promise.all([
    app.api.overview(run),
    app.api.heatmap(run, app.state.measure, bins),
    app.api.loss(run, 1500),
  ]);
  if (!app.alive(token)) return () => {};
  app.noteSampling("heatmap", hm.sampling);
  app.noteSampling("loss", loss.sampling);
  const group = new SyncGroup();
  // Bins hold integer steps [e_j, e_j+1): cells are drawn centred on their steps.
  group.extend(hm.step_edges[0] - 0.5, hm.step_edges[hm.step_edges.length - 1] - 0.5);

  // -- layers table ----------------------------------------------------------
  const rowOf = new Map(hm.layers.map((n, i) => [n, hm.values[i]]));
  const color = app.color(run);
  const body = h("tbody");
  const sparks = [];
  for (const layer of ov.layers) {
    const latest = layer.latest || {};
    const conv = latest.convergence;
    const canvas = h("canvas", { dataset: { layer: layer.name } });
    sparks.push([canvas, maxPool(rowOf.get(layer.name) || [], 70)]);
    const badges = layer.badges.length
      ? layer.badges.map((b) => h("span", { class: `bn-badge ${b.id === "frozen" ? "frozen" : ""}`, title: b.detail, dataset: { badge: b.id } }, b.label))
      : [h("span", { class: "bn-badge ok" }, "ok")];
    body.append(h("tr", { dataset: { layer: layer.name }, title: `Open ${layer.name}`, onclick: () => app.go("layer", { layer: layer.name, channelStep: null }) },
      h("td", { class: "name" }, layer.name),
      h("td", { class: "num" }, String(layer.channels)),
      h("td", { class: "num" }, String(layer.momentum)),
      h("td", { class: "num", title: `max over channels of |mu_B - mu_R| / sqrt(var_B + eps) at step ${layer.latest_step}` }, fmtNum(latest["mean_gap/max"])),
      h("td", { class: "num", title: `|log var ratio| max over channels` }, fmtNum(latest["abs_log_var_ratio/max"])),
      h("td", { class: "num", title: `1 - momentum^updates after ${latest.updates} updates; 95% after ${layer.steps_to_95}` },
        fmtPct(conv), h("span", { class: "bn-bar-conv" }, h("span", { style: { width: `${Math.max(0, Math.min(1, conv || 0)) * 100}%` } }))),
      h("td", null, canvas),
      h("td", null, badges)));
  }
  const table = h("table", { class: "bn-layers", dataset: { role: "layers" } },
    h("thead", null, h("tr", null,
      h("th", null, "layer (depth order)"), h("th", null, "ch"), h("th", null, "momentum"),
      h("th", { title: "normalized mean gap, max over channels, latest step" }, "mean gap"),
      h("th", { title: "|log((var_B+eps)/(var_R+eps))|, max over channels, latest step" }, "var gap"),
      h("th", null, "convergence"), h("th", null, `${hm.measure} over steps`), h("th", null, "warnings"))),
    body);

  root.append(card("Layers", `${ov.layers.length} BatchNormalization layers · run ${run} · last step ${fmtStep(ov.max_step)}`,
    null, table));
  for (const [c, values] of sparks) sparkline(c, values, color, hm.max);

  // -- heat map + loss ---------------------------------------------------------
  const measureSel = h("select", { onchange: (e) => app.go("overview", { measure: e.target.value }) },
    ...(app.meta.gap_measures || []).map((m) => h("option", { value: m, selected: m === app.state.measure }, m)));
  const hmEl = h("div", { class: "bn-chart", dataset: { role: "heatmap" } });
  const lossEl = h("div", { class: "bn-chart", dataset: { role: "loss" } });
  const lossNote = h("div", { class: "bn-note" });
  root.append(card("Gap heat map", "layers × steps, max per step bin; drag to zoom, double-click to reset, click a row to open the layer",
    downloads(app.routeUrl, "heatmap", { run, measure: app.state.measure, bins }),
    h("div", { class: "bn-row" }, h("label", null, "measure ", measureSel),
      h("span", { class: "bn-note" }, "0", h("span", { class: "bn-legend-scale" }), fmtNum(hm.max), " (log-compressed colour)")),
    hmEl,
    h("h3", null, "Loss on the same step axis", downloads(app.routeUrl, "loss", { run, points: 1500 })),
    lossNote, lossEl));

  const charts = [];
  const drawHeatmap = () => {
    const keep = hm.layers.map((n, i) => i).filter((i) => matches(hm.layers[i], app.state.filter));
    const sub = { ...hm, layers: keep.map((i) => hm.layers[i]), values: keep.map((i) => hm.values[i]) };
    if (charts[0]) charts[0].destroy();
    hmEl.replaceChildren();
    charts[0] = heatmapChart(hmEl, sub, { group, onClickRow: (layer) => app.go("layer", { layer, channelStep: null }) });
  };
  drawHeatmap();

  const lossSeries = loss.series.filter((s) => /loss/.test(s.name) && s.steps.length);
  if (lossSeries.length) {
    const w = app.state.smoothing;
    const data = alignSeries(lossSeries.map((s) => ({ x: s.steps, y: s.values })));
    const raw = data.slice(1);
    const series = lossSeries.map((s, i) => ({
      label: s.source === "bn_stats" ? `${s.key}` : `${s.name} (${s.source.replace("keras run ", "Keras ")})`,
      color: LOSS_COLORS[i % LOSS_COLORS.length],
      spanGaps: true,
      points: s.steps.length <= 60 || s.split === "val",
      dash: s.source === "bn_stats" ? undefined : [5, 3],
      raw: raw[i],
    }));
    const smoothed = raw.map((ys, i) => (lossSeries[i].split === "val" ? ys : smooth(ys, w)));
    charts.push(lineChart(lossEl, { name: "loss", series, data: [data[0], ...smoothed], group, height: 200, ySize: Y_AXIS_SIZE }));
    const notes = lossSeries.filter((s) => s.aligned === "estimated").map((s) => s.name);
    lossNote.textContent = notes.length ? `Epoch-level ${notes.join(", ")} placed at estimated epoch-end steps.` : "";
  } else {
    lossNote.textContent = "No loss logged for this run (BNStatsCallback(log_metrics=True) or Keras' TensorBoard callback next to it).";
  }

  app.onFilter = () => {
    for (const tr of body.children) tr.hidden = !matches(tr.dataset.layer, app.state.filter);
    drawHeatmap();
  };
  app.onFilter();
  return () => {
    for (const c of charts) c && c.destroy();
  };
}
