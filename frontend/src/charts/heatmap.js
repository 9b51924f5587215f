// The layers x steps heat map (uPlot canvas): one row per layer, viridis
// cells, on the same step axis, zoom and cursor as the charts of its group.
import uPlot from "uplot";
import { fmtNum, fmtStep, layerLabels } from "../model/format.js";
import { heatColor, heatScale, heatScaleTop, themeColors } from "./colors.js";
import { INT_INCRS, Y_AXIS_SIZE, autoWidth, followWidthUntilDestroyed, resetBinding, tooltipPlugin } from "./uplot.js";

/**
 * The layers x steps heat map of a gap measure (one row per layer, depth
 * order top to bottom), drawn in a uPlot chart so that its step axis lines up
 * with, zooms with and shares the cursor of the charts of its group. Colours
 * on the measure's fixed scale (colors.js HEAT_SCALE_TOP, clipped; the run's
 * max for a measure without one); ``o.warmup[row]``: the last step of that
 * layer's warm-up (model/momentum.js warmupEnd), its cells before it dimmed.
 * The same map of other rows and bins (replicas x channels): ``o.binLabel(j)``
 * names bin j in the tooltip (default: its steps), ``o.valueLabel`` the value,
 * ``o.xLabel`` the x axis,
 * ``o.rowLabelWidth`` the characters of a row label.
 */
export function heatmapChart(el, hm, o = {}) {
  const colors = themeColors();
  const n = hm.layers.length;
  const edges = hm.step_edges;
  const top = heatScaleTop(hm.measure);
  const max = top === null ? hm.max || 0 : top;
  // The last step of row r's warm-up when it falls in the map, else null.
  const warmupEnd = (r) => {
    const end = (o.warmup || [])[r];
    return end !== null && end !== undefined && end >= edges[0] ? end : null;
  };
  const labels = layerLabels(hm.layers, o.rowLabelWidth || 22); // the tooltip names the layer in full
  const rowOf = (y) => n - 1 - Math.round(y);
  const group = o.group;
  const binOf = (x) => {
    let lo = 0, hi = edges.length - 2;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (edges[mid] <= x) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  };
  // Rows of 22 px for a few layers, down to 7 px for 120 and more (at most 900 px): a real model's rows stay
  // visible, and a label is written every few rows so that the labels do not overlap (12 px each).
  const height = o.height || Math.max(120, Math.min(40 + n * Math.max(7, Math.min(22, 440 / n)), 900));
  const labelEvery = Math.max(1, Math.ceil((n * 12) / (height - 40)));
  const opts = {
    width: autoWidth(el),
    height,
    legend: { show: false },
    cursor: { sync: group ? { key: group.key } : undefined, drag: { x: true, y: false, setScale: true }, points: { show: false },
      bind: resetBinding(group, true) },
    scales: {
      x: { time: false, range: (u, a, b) => (a === b ? [a - 1, b + 1] : [a, b]) },
      y: { range: [-0.5, n - 0.5] },
    },
    axes: [
      { stroke: colors.muted, grid: { show: false }, ticks: { stroke: colors.grid }, incrs: INT_INCRS, values: (u, s) => s.map(fmtStep),
        ...(o.xLabel ? { label: o.xLabel, labelSize: 20 } : {}) },
      {
        stroke: colors.muted,
        size: Y_AXIS_SIZE,
        grid: { show: false },
        ticks: { show: false },
        splits: () => [...Array(n).keys()].filter((i) => i % labelEvery === 0),
        values: (u, splits) => splits.map((y) => labels[rowOf(y)] || ""),
      },
    ],
    series: [{}, { show: false }],
    plugins: [
      tooltipPlugin((u, idx, left, top) => {
        const x = u.posToVal(left, "x") + 0.5;
        const y = u.posToVal(top, "y");
        const row = rowOf(y);
        if (row < 0 || row >= n || x < edges[0] || x > edges[edges.length - 1]) return null;
        const j = binOf(x);
        const v = hm.values[row][j];
        return [
          { label: hm.layers[row] },
          { label: o.binLabel ? o.binLabel(j) : stepRange(Math.ceil(edges[j]), Math.ceil(edges[j + 1]) - 1) },
          { label: o.valueLabel || `${hm.measure} (max)`, value: v === null ? "no data" : fmtNum(v, 4) },
          ...(warmupEnd(row) !== null && edges[j] <= warmupEnd(row)
            ? [{ label: "warm-up: the moving averages are not 95% converged yet" }] : []),
        ];
      }),
    ],
    hooks: {
      draw: [
        (u) => {
          const { ctx } = u;
          const { left, top, width, height } = u.bbox;
          ctx.save();
          ctx.beginPath();
          ctx.rect(left, top, width, height);
          ctx.clip();
          for (let r = 0; r < n; r++) {
            const yc = n - 1 - r;
            const y0 = u.valToPos(yc + 0.5, "y", true);
            const y1 = u.valToPos(yc - 0.5, "y", true);
            const row = hm.values[r];
            for (let j = 0; j < row.length; j++) {
              const c = heatColor(heatScale(row[j], max, top === null));
              if (!c) continue;
              const x0 = u.valToPos(edges[j] - 0.5, "x", true);
              const x1 = u.valToPos(edges[j + 1] - 0.5, "x", true);
              if (x1 < left || x0 > left + width) continue;
              ctx.fillStyle = c;
              ctx.fillRect(x0, Math.min(y0, y1), Math.max(x1 - x0, 1) + 0.5, Math.abs(y1 - y0) - 1);
            }
            const end = warmupEnd(r);
            if (end !== null) { // dim the warm-up, tick its end
              const x0 = u.valToPos(edges[0] - 0.5, "x", true);
              const x1 = u.valToPos(Math.min(end, edges[edges.length - 1] - 1) + 0.5, "x", true);
              ctx.globalAlpha = 0.55;
              ctx.fillStyle = colors.bg;
              ctx.fillRect(x0, Math.min(y0, y1), x1 - x0, Math.abs(y1 - y0) - 1);
              ctx.globalAlpha = 1;
              ctx.fillStyle = colors.fg;
              ctx.fillRect(x1 - 1, Math.min(y0, y1), 2, Math.abs(y1 - y0) - 1);
            }
          }
          ctx.restore();
        },
      ],
      setScale: [(u, key) => key === "x" && group && group.propagate(u)],
      setSelect: [(u) => group && group.remember(u)],
      setCursor: [(u) => o.onHover && o.onHover(u)],
    },
  };
  el.dataset.chart = o.name || "heatmap";
  el.dataset.points = String(hm.values.reduce((a, row) => a + row.filter((v) => v !== null).length, 0));
  el.dataset.scaleTop = String(max); // for tests: the colour scale's top and the rows with a warm-up drawn
  el.dataset.warmupRows = String([...Array(n).keys()].filter((r) => warmupEnd(r) !== null).length);
  const u = new uPlot(opts, [[edges[0], edges[edges.length - 1]], [null, null]], el);
  el.__uplot = u; // for tests
  if (group) group.fit(u);
  else u.setScale("x", { min: edges[0] - 0.5, max: edges[edges.length - 1] - 0.5 });
  if (o.onClickRow) {
    let downX = null;
    u.over.addEventListener("mousedown", (e) => (downX = e.clientX));
    u.over.addEventListener("click", (e) => {
      if (downX !== null && Math.abs(e.clientX - downX) > 3) return; // a zoom drag, not a click
      const row = rowOf(u.posToVal(u.cursor.top, "y"));
      if (row >= 0 && row < n) o.onClickRow(hm.layers[row]);
    });
  }
  if (group) group.add(u);
  return followWidthUntilDestroyed(el, u, group);
}

/** "step 40" for a bin of one step, "steps 40–47" for more. */
export function stepRange(first, last) {
  return last > first ? `steps ${first}–${last}` : `step ${first}`;
}
