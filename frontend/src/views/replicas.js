// Per-replica view of a layer trained on several replicas: replicas x channels heat maps at one
// snapshot step (each replica's batch against the global batch's; each replica's own moving mean
// against replica 0's where they keep their own), with a slider over the snapshot steps.
import { h, card, downloads } from "../ui/dom.js";
import { heatmapChart } from "../charts/heatmap.js";
import { snapshotStepper } from "../ui/stepper.js";
import { replicaGaps } from "../model/replicas.js";

export async function renderReplicas(root, app, token, run, layer, epsilon) {
  let snap = await app.api.replicas(run, layer, app.state.channelStep === null ? undefined : app.state.channelStep);
  if (!app.alive(token)) return () => {};
  let charts = [];
  const { row, out: stepOut } = snapshotStepper(snap, { slider: "replica-step-slider", step: "replica-step" },
    "replica snapshot step", (step) => app.api.replicas(run, layer, step), (next) => {
      snap = next;
      draw();
    }, () => app.alive(token));
  const dl = h("span");
  const body = h("div", { class: "bn-grid2" });
  root.append(card(`Per replica (${snap.replicas} replicas)`,
    "each replica's own batch moments against the global batch's, per channel, at one step: what an unsynchronized layer normalized each slice with",
    dl, row, body));

  const draw = () => {
    for (const c of charts) c.destroy();
    charts = [];
    body.replaceChildren();
    dl.replaceChildren(downloads(app.routeUrl, "replicas", { run, layer, step: snap.step }, [run, layer, "replicas", `step${snap.step}`]));
    stepOut.textContent = `step ${snap.step}`;
    const gaps = replicaGaps(snap, epsilon);
    const rows = [...Array(snap.replicas).keys()].map((r) => `replica ${r}`);
    const edges = [...Array(snap.channels + 1).keys()];
    // [id, title, formula, what it means, the heat scale (colors.js HEAT_SCALE_TOP), its top in words, values]
    const maps = [
      ["replica-mean", "Batch mean vs the global batch", "|μr − μ| / √(σ² + ε)", "in the global batch's std", "mean_gap", "1 std", gaps.mean],
      ["replica-var", "Batch variance vs the global batch", "|log((σ²r + ε) / (σ² + ε))|", "", "abs_log_var_ratio", "4× (log 4)", gaps.logVar],
    ];
    if (gaps.moving) {
      maps.push(["replica-moving", "Own moving mean vs replica 0's", "|μR,r − μR,0| / √(σ²R,0 + ε)",
        "each replica evaluates with its own; replica 0's are saved", "mean_gap", "1 std", gaps.moving]);
    }
    for (const [id, title, formula, meaning, measure, top, values] of maps) {
      const el = h("div", { class: "bn-chart", dataset: { role: `chart-${id}` } });
      body.append(card(title, `${formula}${meaning ? `, ${meaning}` : ""} · step ${snap.step} · colour from 0 (dark) to ${top} and more (yellow)`, null, el));
      charts.push(heatmapChart(el, { layers: rows, step_edges: edges, values, measure, max: null }, {
        name: id, rowLabelWidth: 12, height: Math.max(140, 60 + 26 * snap.replicas), xLabel: "channel",
        binLabel: (j) => `channel ${j}`, valueLabel: formula,
      }));
    }
  };
  draw();
  return () => {
    for (const c of charts) c.destroy();
  };
}
