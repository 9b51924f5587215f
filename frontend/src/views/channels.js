// Per-channel view at one snapshot step: batch vs moving moments per channel,
// with a slider over the steps that have a snapshot.
import uPlot from "uplot";
import { h, card, downloads } from "../ui/dom.js";
import { SyncGroup } from "../charts/uplot.js";
import { lineChart } from "../charts/line.js";
import { COLORS } from "../charts/colors.js";
import { snapshotStepper } from "../ui/stepper.js";

const noLine = () => null;

export async function renderChannels(root, app, token, run, layer) {
  let snap = await app.api.snapshot(run, layer, app.state.channelStep === null ? undefined : app.state.channelStep);
  if (!app.alive(token)) return () => {};
  app.noteSampling("snapshot", snap.sampling);
  let charts = [];
  const { row, out: stepOut } = snapshotStepper(snap, { slider: "step-slider", step: "channel-step" }, "snapshot step",
    (step) => app.api.snapshot(run, layer, step), (next) => {
      snap = next;
      app.state.channelStep = snap.step;
      app.saveUrl();
      draw();
    }, () => app.alive(token));
  const dl = h("span");
  const body = h("div", { class: "bn-grid2" });
  root.append(card("Per channel", `batch vs moving moments of every channel at one step (${snap.steps.length} snapshots)`, dl,
    row, body));

  const draw = () => {
    for (const c of charts) c.destroy();
    charts = [];
    body.replaceChildren();
    dl.replaceChildren(downloads(app.routeUrl, "snapshot", { run, layer, step: snap.step }, [run, layer, `step${snap.step}`]));
    stepOut.textContent = `step ${snap.step}`;
    const xs = [...Array(snap.channels).keys()];
    const r = snap.rows;
    const group = new SyncGroup();
    const pts = snap.channels > 64 ? undefined : true;
    const specs = [
      ["ch-mean", "Mean per channel", [["batch_mean", "batch mean", COLORS.batch], ["moving_mean", "moving mean", COLORS.moving], ["debiased_mean", "debiased mean", COLORS.debiased]], false, "mean (input units)"],
      ["ch-var", "Variance per channel", [["batch_var", "batch var", COLORS.batch], ["moving_var", "moving var", COLORS.moving], ["debiased_var", "debiased var", COLORS.debiased]], app.state.logScale, "variance (input units²)"],
      ["ch-gap", "Gap per channel", [["mean_gap", "mean gap |μB−μR|/√(σ²B+ε)", COLORS.mean_gap], ["log_var_ratio", "log var ratio", COLORS.log_var_ratio]], false, "gap (std), log ratio"],
    ];
    for (const [id, title, rows, logY, yLabel] of specs) {
      const el = h("div", { class: "bn-chart", dataset: { role: `chart-${id}` } });
      body.append(card(title, `step ${snap.step}${logY ? " · log scale" : ""}`, null, el));
      const bars = id === "ch-gap";
      charts.push(lineChart(el, {
        name: id, group, xIsStep: false, xLabel: "channel", height: 220, logY, yLabel, xPad: 0.5,
        data: [xs, ...rows.map(([q]) => r[q])],
        // Dots drawn large to small (batch, moving, debiased): where they coincide each one still shows.
        series: rows.map(([q, label, color], k) => ({
          label, color, points: bars ? false : pts || true, pointSize: 9 - 2 * k,
          paths: bars ? uPlot.paths.bars({ size: [0.8 / rows.length, 40], align: k === 0 ? -1 : 1 }) : (pts ? noLine : undefined),
          fill: bars ? color + "99" : undefined,
        })),
      }));
    }
  };
  draw();
  return () => {
    for (const c of charts) c.destroy();
  };
}
