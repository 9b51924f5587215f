// Compare runs: the same layer's quantity from several runs overlaid.
import { h, card, downloads } from "../ui/dom.js";
import { SyncGroup } from "../charts/uplot.js";
import { lineChart } from "../charts/line.js";
import { alignSeries } from "../model/series.js";
import { smooth } from "../model/smoothing.js";
import { convergedThreshold, thresholdLines } from "../model/thresholds.js";
import { fmtNum, fmtStep } from "../model/format.js";
import { momentumLabel, momentumTitle } from "../model/momentum.js";

const POINTS = 1200;
const DEFAULT_QUANTITIES = ["mean_gap/max", "moving_mean", "moving_var", "convergence"];

export async function renderCompare(root, app, token) {
  const runs = app.state.compareRuns;
  if (!runs.length) {
    root.append(h("div", { class: "bn-empty" }, "Pick runs to compare above."));
    return () => {};
  }
  // Layers present in any chosen run, in depth order of the first run having them.
  const layers = [];
  for (const r of runs) for (const l of app.runInfo(r).layers) if (!layers.includes(l.name)) layers.push(l.name);
  let layer = app.state.layer;
  if (!layers.includes(layer)) layer = app.state.layer = layers[0];
  const pick = h("select", { dataset: { role: "compare-layer" }, onchange: (e) => app.go("compare", { layer: e.target.value }) });
  const fillPick = () => pick.replaceChildren(
    ...layers.filter((n) => n === layer || !app.state.filter || n.toLowerCase().includes(app.state.filter.toLowerCase()))
      .map((n) => h("option", { value: n, selected: n === layer }, n)));
  fillPick();
  app.onFilter = fillPick;
  const qs = app.meta.layer_quantities || DEFAULT_QUANTITIES;
  const extra = app.state.compareQuantity;
  const shownQs = [...new Set([extra, ...DEFAULT_QUANTITIES])];
  root.append(h("div", { class: "bn-row" },
    h("label", null, "Layer ", pick),
    h("label", null, "First chart ", h("select", { onchange: (e) => app.go("compare", { compareQuantity: e.target.value }) },
      ...qs.map((q) => h("option", { value: q, selected: q === extra }, q))))));
  const results = await Promise.all(shownQs.map((q) => app.api.compare(runs, layer, q, POINTS)));
  if (!app.alive(token)) return () => {};
  const group = new SyncGroup(app.zoomMemory("compare", layer));
  for (const res of results) for (const r of res.runs) if (r.steps.length) group.extend(r.steps[0], r.steps[r.steps.length - 1]);
  const grid = h("div", { class: "bn-grid2" });
  root.append(grid);
  // Each run's momentum as its layer was built ("momentum=0.1" for PyTorch), the convention in the tooltip:
  // once, above the charts (the same for every quantity).
  const facts = (results.find((res) => res.runs.length) || { runs: [] }).runs.flatMap((r, k) => [k ? " · " : null,
    h("span", { title: momentumTitle(r.info), dataset: { run: r.run } }, `${r.run}: ${momentumLabel(r.info)}, 95% after ${fmtStep(r.info.steps_to_95)}`)]);
  grid.before(h("div", { class: "bn-note", dataset: { role: "compare-facts" } }, `${layer} · `, ...facts));
  const charts = [];
  results.forEach((res, qi) => {
    app.noteSampling(`compare-${qi}`, res.sampling);
    const q = shownQs[qi];
    const el = h("div", { class: "bn-chart", dataset: { role: `compare-${q}` } });
    const missing = res.missing.length ? ` · not in ${res.missing.join(", ")}` : "";
    grid.append(card(q, `${layer}${missing}`, downloads(app.routeUrl, "compare", { run: runs, layer, quantity: q, points: POINTS }, ["compare", layer, q]), el));
    if (!res.runs.length) return;
    const data = alignSeries(res.runs.map((r) => ({ x: r.steps, y: r.values })));
    const raw = data.slice(1);
    const logY = app.state.logScale && /var/.test(q) && !/ratio/.test(q);
    const smoothQ = q !== "convergence" && q !== "updates";
    charts.push(lineChart(el, {
      name: `compare-${q}`, group, logY, height: 230, yLabel: q,
      series: res.runs.map((r, k) => ({ label: r.run, color: app.color(r.run), spanGaps: true, raw: raw[k],
        rawLine: smoothQ && app.state.smoothing > 0 })),
      data: [data[0], ...raw.map((ys) => (smoothQ ? smooth(ys, app.state.smoothing) : ys))],
      hlines: q === "convergence" ? thresholdLines(convergedThreshold(app.meta)) : [],
    }));
  });
  return () => {
    for (const c of charts) c.destroy();
  };
}
