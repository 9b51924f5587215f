// Layer detail: batch vs moving vs debiased moments, the gaps, the
// convergence curve with momentum, effective window and steps to 95%, and the
// per-channel view.
import { h, card, downloads } from "../ui/dom.js";
import { SyncGroup } from "../charts/uplot.js";
import { lineChart } from "../charts/line.js";
import { COLORS } from "../charts/colors.js";
import { fmtNum, fmtPct, fmtStep } from "../model/format.js";
import { alignSeries, decadesSpanned } from "../model/series.js";
import { smooth } from "../model/smoothing.js";
import { convergedThreshold, firstReached, pctLabel, thresholdLines } from "../model/thresholds.js";
import { renderChannels } from "./channels.js";
import { renderReplicas } from "./replicas.js";
import { replicaSummary } from "../model/replicas.js";
import { findingsList } from "./findings.js";
import { findingsOfLayer } from "../model/findings.js";
import { momentumFact, momentumPhrase, momentumTitle, windowFormula, convergenceFormula } from "../model/momentum.js";

const POINTS = 1200;
const AUTO_LOG_DECADES = 1.5;

/** CSV/JSON links of one chart's series, named by run, layer and the chart's quantities (as the server names them). */
function seriesDownloads(app, run, layer, quantities) {
  return downloads(app.routeUrl, "series", { run, layer, quantities: quantities.join(","), points: POINTS },
    [run, layer, quantities.join("-")]);
}
// A series drawn as points only: measured at some steps (probe, population statistics).
const AT_POINTS = { points: true };

// In order of importance: the gaps first (what the findings read), then the probe and population
// comparisons, then the moments themselves; the less used symmetric KL folded.
const CHARTS = [
  {
    id: "gap", yLabel: "gap (train-time std)", title: "Mean gap", sub: "|μB−μR| / √(σ²B+ε) per channel, in train-time standard deviations",
    series: [["mean_gap/mean", "mean over channels", COLORS.batch], ["mean_gap/p90", "p90", COLORS.p90], ["mean_gap/max", "max", COLORS.max]],
  },
  {
    id: "vgap", yLabel: "|log variance ratio|", title: "Variance gap", sub: "|log((σ²B+ε)/(σ²R+ε))| per channel; 0.69 = 2× (dropout 0.5 before BN)",
    series: [["abs_log_var_ratio/mean", "mean over channels", COLORS.batch], ["abs_log_var_ratio/p90", "p90", COLORS.p90],
      ["abs_log_var_ratio/max", "max", COLORS.max], ["log_var_ratio/mean", "signed mean (>0: batches wider)", COLORS.moving, [6, 3]]],
  },
  {
    // Only on several replicas (devices or processes): how the replicas' own batches differ.
    id: "replicas", yLabel: "gap (global std), log ratio", title: "Replicas: their own batches vs the global batch",
    sub: "per channel, median or max: the spread of the replicas' batch means (max−min) and each replica's mean and |log variance ratio| against the global batch's; the variance the replicas' own miss, log(σ²/mean σ²r)",
    series: [["replica_mean_spread/p50", "mean spread, median channel", COLORS.batch], ["replica_mean_spread/max", "mean spread, max", COLORS.max],
      ["replica_mean_gap/p50", "replica vs global mean, median channel", COLORS.p90, [6, 3]],
      ["replica_abs_log_var_ratio/p50", "replica vs global |log var ratio|, median", COLORS.debiased, [6, 3]],
      ["replica_var_deficit/mean", "variance missed (log, mean over channels)", COLORS.moving]],
  },
  {
    // Only where each replica keeps its own moving statistics (MirroredStrategy, DDP without buffer sync).
    id: "rank-moving", yLabel: "spread (std), ratio", title: "Replicas' own moving statistics",
    sub: "how far the replicas' moving means are apart (max−min, in moving std) and the ratio of their largest to smallest moving variance",
    series: [["rank_moving_spread/p50", "moving mean spread, median channel", COLORS.batch], ["rank_moving_spread/max", "moving mean spread, max", COLORS.max],
      ["rank_moving_var_ratio/max", "moving variance ratio, max", COLORS.moving, [6, 3]]],
  },
  {
    // Only when the run has a probe (BNStatsCallback(probe_data=...)); points at the probe steps.
    id: "probe", yLabel: "drift (ratio), gap (std)", title: "Train/inference gap on the probe batch", points: true,
    sub: "output drift ‖y_train − y_inf‖ / ‖y_train‖ of this layer; the probe batch's moments vs the moving ones (|μP−μR| / √(σ²P+ε), |log var ratio|)",
    series: [["probe_output_drift", "output drift", COLORS.debiased], ["probe_mean_gap/p50", "mean gap, median channel", COLORS.batch],
      ["probe_mean_gap/max", "mean gap, max", COLORS.max], ["probe_abs_log_var_ratio/p50", "|log var ratio|, median channel", COLORS.p90, [6, 3]]],
  },
  {
    // Only with BNStatsCallback(population_data=...); points at the steps measured.
    id: "population", yLabel: "gap (std), |log ratio|", title: "Moving averages vs population statistics", points: true,
    sub: "how far what inference uses is from the population moments (PreciseBN): |μR−μP| / √(σ²P+ε) and |log((σ²P+ε)/(σ²R+ε))|; recalibrate sets both to 0",
    series: [["population_mean_gap/p50", "mean gap, median channel", COLORS.batch], ["population_mean_gap/max", "mean gap, max", COLORS.max],
      ["population_abs_log_var_ratio/p50", "|log var ratio|, median channel", COLORS.p90, [6, 3]],
      ["population_abs_log_var_ratio/max", "|log var ratio|, max", COLORS.moving, [6, 3]]],
  },
  {
    id: "mean", yLabel: "mean (input units)", title: "Mean (channel average)", sub: "batch mean vs moving mean vs debiased moving mean (vs population mean, where measured)",
    series: [["batch_mean", "batch mean", COLORS.batch], ["moving_mean", "moving mean", COLORS.moving], ["debiased_mean", "debiased mean", COLORS.debiased, [6, 3]],
      ["population_mean", "population mean (PreciseBN)", COLORS.population, null, AT_POINTS]],
    band: "moving_mean",
  },
  {
    id: "var", yLabel: "variance (input units²)", title: "Variance (channel average)", sub: "batch variance vs moving variance vs debiased (vs population variance, where measured)", log: true,
    series: [["batch_var", "batch var", COLORS.batch], ["moving_var", "moving var", COLORS.moving], ["debiased_var", "debiased var", COLORS.debiased, [6, 3]],
      ["population_var", "population var (PreciseBN)", COLORS.population, null, AT_POINTS]],
    band: "moving_var",
  },
  {
    id: "kl", folded: true, yLabel: "KL (nats)", title: "Symmetric KL", sub: "of N(μB, σ²B+ε) and N(μR, σ²R+ε): both gaps in one number",
    series: [["sym_kl/mean", "mean over channels", COLORS.batch], ["sym_kl/p90", "p90", COLORS.p90], ["sym_kl/max", "max", COLORS.max]],
  },
];

export async function renderLayer(root, app, token) {
  const run = app.state.run;
  const info = app.runInfo(run);
  let layerName = app.state.layer;
  if (!info.layers.some((l) => l.name === layerName)) layerName = app.state.layer = info.layers[0]?.name;
  const layer = info.layers.find((l) => l.name === layerName);
  const quantities = [...new Set(CHARTS.flatMap((c) => c.series.map((s) => s[0])).concat(["convergence", "updates"]))];
  const [ser, bands, found] = await Promise.all([
    app.api.series(run, layerName, quantities, POINTS),
    layer.has_snapshots ? app.api.bands(run, layerName).catch(() => null) : Promise.resolve(null),
    app.api.findings(run).catch(() => null),
  ]);
  if (!app.alive(token)) return () => {};
  app.noteSampling("series", ser.sampling);
  const group = new SyncGroup(app.zoomMemory("layer", run, layerName));
  for (const q of Object.values(ser.series)) if (q.steps.length) group.extend(q.steps[0], q.steps[q.steps.length - 1]);
  const charts = [];
  let chCleanup = null;
  app.onCleanup(() => {
    for (const c of charts) c.destroy();
    charts.length = 0;
    if (chCleanup) chCleanup();
  });

  // -- header: layer picker and its numbers ---------------------------------------
  const pick = h("select", { dataset: { role: "layer-select" }, onchange: (e) => app.go("layer", { layer: e.target.value, channelStep: null }) });
  const fillPick = () => pick.replaceChildren(
    ...info.layers.filter((l) => l.name === layerName || !app.state.filter || l.name.toLowerCase().includes(app.state.filter.toLowerCase()))
      .map((l) => h("option", { value: l.name, selected: l.name === layerName }, `${l.depth}. ${l.name}`)));
  fillPick();
  app.onFilter = fillPick;
  const conv = ser.series.convergence;
  const convNow = conv && conv.values.length ? conv.values[conv.values.length - 1] : null;
  const upd = ser.series.updates;
  const updNow = upd && upd.values.length ? upd.values[upd.values.length - 1] : null;
  const i = ser.info;
  // [key, value, tooltip]; the momentum as the layer was built ("momentum=0.1" for PyTorch), its convention in the tooltip.
  const facts = [
    [...momentumFact(i), momentumTitle(i)], ["epsilon", String(i.epsilon)], ["channels", String(i.channels)],
    [`effective window ${windowFormula(i)}`, i.effective_window === null ? "∞" : `${fmtNum(i.effective_window, 4)} steps`],
    ["95% converged after", `${fmtStep(i.steps_to_95)} updates`], ["updates so far", updNow === null ? "–" : fmtStep(updNow)],
    ["convergence now", fmtPct(convNow)], ["init mean / var", `${fmtNum(i.init_mean)} / ${fmtNum(i.init_var)}`],
    ["EMA of", i.ema_of], ["moving var", i.moving_var_unbiased ? "unbiased (n/(n−1))" : "biased"],
    ["trainable", String(i.trainable)], ["class", `${i.layer_class} (${i.framework})`],
  ];
  const replicas = replicaSummary([i]);
  if (replicas) facts.push(["replicas", replicas.text.replace(/^\d+ replicas · /, `${replicas.replicas} · `), replicas.title]);
  // -- this layer's findings (first: what is wrong with it) ------------------------
  const mine = found ? findingsOfLayer(found.findings, layerName) : [];
  const findWrap = h("div", { dataset: { role: "layer-findings" } });
  if (mine.length) findWrap.append(findingsList(mine, app, found.titles, layerName));
  else if (found) findWrap.append(h("div", { class: "bn-findings-banner sev-ok", dataset: { level: "ok" } }, h("b", null, "No findings"), h("span", { class: "bn-note" }, ` for ${layerName} in run ${run}`)));
  root.append(h("div", { class: "bn-row" },
    h("button", { class: "bn-back", onclick: () => app.go("overview") }, "← overview"),
    h("label", null, "Layer ", pick)),
    h("div", { class: "bn-facts", dataset: { role: "facts" } }, ...facts.map(([k, v, title]) => h("div", { title }, k === null ? null : `${k}: `, h("b", null, v)))));
  root.append(findWrap);

  // -- moment and gap charts ------------------------------------------------------
  const w = app.state.smoothing;
  const grid = h("div", { class: "bn-grid2" });
  root.append(grid);
  // -- convergence (first: has the average converged?) ----------------------------------------------------------------------
  if (conv && conv.steps.length) {
    const el = h("div", { class: "bn-chart", dataset: { role: "chart-convergence" } });
    const t = convergedThreshold(app.meta); // the server's threshold (/runs), e.g. 0.95; null: no line
    const cross = firstReached(conv.steps, conv.values, t);
    const note = `${momentumPhrase(i)} · effective window ${i.effective_window === null ? "∞" : fmtNum(i.effective_window, 4)} steps · ` +
      `95% after ${fmtStep(i.steps_to_95)} updates (99% after ${fmtStep(i.steps_to_99)}) · now ${fmtPct(convNow)}` +
      (t === null ? "" : cross === null ? ` · not yet ${pctLabel(t)}` : ` · reached ${pctLabel(t)} at step ${cross}`);
    grid.append(card("Convergence of the moving averages", `${convergenceFormula(i)}: the weight no longer on the initial values`,
      seriesDownloads(app, run, layerName, ["convergence", "updates"]),
      h("div", { class: "bn-note", title: momentumTitle(i), dataset: { role: "convergence-note" } }, note), el));
    charts.push(lineChart(el, {
      name: "convergence", group, height: 230, yRange: [0, 1.05], yLabel: "1 − mᵗ",
      series: [{ label: "convergence", color: COLORS.debiased, width: 2 }],
      data: [conv.steps, conv.values],
      hlines: thresholdLines(t),
      vlines: cross === null ? [] : [{ x: cross, label: `${pctLabel(t)} at step ${cross}` }],
    }));
  }

  for (const spec of CHARTS) {
    const present = spec.series.filter(([q]) => ser.series[q] && ser.series[q].steps.length);
    if (!present.length) continue;
    const parts = present.map(([q]) => ({ x: ser.series[q].steps, y: ser.series[q].values }));
    const bandRows = spec.band && bands && bands.rows[spec.band] ? bands.rows[spec.band] : null;
    if (bandRows) {
      parts.push({ x: bands.steps, y: bandRows.p10 }, { x: bands.steps, y: bandRows.p90 });
    }
    const data = alignSeries(parts);
    const raw = data.slice(1);
    const atPoints = present.map(([, , , , opts]) => Boolean(spec.points || (opts && opts.points)));
    const series = present.map(([q, label, color, dash], k) => ({ label, color, dash: dash || undefined, raw: raw[k], spanGaps: true,
      points: atPoints[k], rawLine: w > 0 && !atPoints[k] }));
    if (bandRows) {
      series.push({ label: "channels p10 (snapshots)", color: COLORS.band, dash: [2, 2], width: 1, spanGaps: true, points: true, raw: raw[present.length] },
        { label: "channels p90 (snapshots)", color: COLORS.band, dash: [2, 2], width: 1, spanGaps: true, points: true, raw: raw[present.length + 1] });
    }
    const shown = raw.map((ys, k) => (k < present.length && !atPoints[k] ? smooth(ys, w) : ys));
    const el = h("div", { class: "bn-chart", dataset: { role: `chart-${spec.id}` } });
    // Log scale when asked, or on its own when the values span more than 1.5 decades (a small batch
    // variance under a moving one still at its initial 1 would lie flat on 0).
    const decades = spec.log ? decadesSpanned(raw.slice(0, present.length)) : 0;
    const logY = spec.log && (app.state.logScale || decades > AUTO_LOG_DECADES);
    const shownCard = card(spec.title, spec.sub + (logY ? ` · log scale${app.state.logScale ? "" : ` (the values span ${fmtNum(decades, 2)} decades)`}` : ""),
      seriesDownloads(app, run, layerName, present.map((p) => p[0])), el);
    grid.append(spec.folded
      ? h("details", { class: "bn-folded", dataset: { role: `folded-${spec.id}` } }, h("summary", null, `${spec.title} (${spec.sub})`), shownCard)
      : shownCard);
    charts.push(lineChart(el, { name: spec.id, series, data: [data[0], ...shown], group, logY, height: 230, yLabel: spec.yLabel }));
  }

  // -- per-channel view -----------------------------------------------------------------
  const chWrap = h("div", { dataset: { role: "channels" } });
  root.append(chWrap);
  if (layer.has_snapshots) {
    chCleanup = await renderChannels(chWrap, app, token, run, layerName);
  } else {
    chWrap.append(card("Per channel", "no per-channel snapshots logged for this layer (snapshot_every_n_steps)", null));
  }
  if (layer.has_replica_snapshots && app.alive(token)) {
    const repWrap = h("div", { dataset: { role: "replicas" } });
    root.append(repWrap);
    const chDone = chCleanup;
    const repDone = await renderReplicas(repWrap, app, token, run, layerName, i.epsilon);
    chCleanup = () => { if (chDone) chDone(); if (repDone) repDone(); };
  }
  return null;
}
