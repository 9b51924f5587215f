// Line charts (uPlot): series over steps or channels, log scale, tooltips
// with exact values, dashed threshold/marker lines (hlines, vlines).
import uPlot from "uplot";
import { fmtNum, fmtStep } from "../model/format.js";
import { themeColors } from "./colors.js";
import { INT_INCRS, autoWidth, followWidthUntilDestroyed, resetBinding, tooltipPlugin } from "./uplot.js";

/**
 * A line chart.
 * @param {HTMLElement} el container (gets data-chart, data-points and the axis names data-x-label, data-y-label:
 *   uPlot draws them on the canvas).
 * @param {object} o {name, series: [{label, color, dash, width, alpha, points, pointSize, raw, rawLine,
 *   tooltip}], data: [xs, ys...], logY, group (SyncGroup), height, hlines: [{y, label}], vlines: [{x, label}],
 *   xLabel, yLabel, ySize, yRange, xIsStep, xPad (room at both x ends, for bars)}
 */
const LABEL_SIZE = 18; // room for an axis name

export function lineChart(el, o) {
  const colors = themeColors();
  const data = o.logY ? [o.data[0], ...o.data.slice(1).map((ys) => ys.map((v) => (v > 0 ? v : null)))] : o.data;
  const xIsStep = o.xIsStep !== false;
  const xLabel = o.xLabel || (xIsStep ? "step" : undefined); // the x axis is named, as in TensorBoard's Scalars
  const group = o.group;
  const axis = (extra) => ({
    stroke: colors.muted,
    grid: { stroke: colors.grid, width: 1 },
    ticks: { stroke: colors.grid, width: 1 },
    ...extra,
  });
  const opts = {
    width: autoWidth(el),
    height: o.height || 220,
    legend: { show: true, live: false },
    cursor: {
      sync: group ? { key: group.key, setSeries: false } : undefined,
      drag: { x: true, y: false, setScale: true },
      points: { size: 6 },
      bind: resetBinding(group, xIsStep),
    },
    scales: {
      // Explicit ranges (zoom) come through here too: never override them.
      x: { time: false, range: (u, min, max) => (min === max ? [min - 1, max + 1] : [min, max]) },
      y: o.logY ? { distr: 3 } : { range: o.yRange || undefined },
    },
    axes: [
      axis({ incrs: INT_INCRS, values: (u, splits) => splits.map((v) => (xIsStep ? fmtStep(v) : String(v))), label: xLabel, labelSize: xLabel ? LABEL_SIZE : 0 }),
      // A fixed ySize (charts aligned with the heat map) includes the label's room.
      axis({ size: o.ySize ? o.ySize - (o.yLabel ? LABEL_SIZE : 0) : 64,
        values: (u, splits) => splits.map((v) => (v === null || v === undefined ? "" : fmtNum(v, 3))), label: o.yLabel, labelSize: o.yLabel ? LABEL_SIZE : 0 }),
    ],
    series: [
      { label: xIsStep ? "step" : o.xLabel || "x" },
      ...o.series.map((s) => ({
        label: s.label,
        stroke: s.color,
        width: s.width || 1.5,
        dash: s.dash,
        alpha: s.alpha,
        spanGaps: !!s.spanGaps,
        points: s.points ? { show: true, size: s.pointSize || 5, fill: s.color } : { show: false },
        paths: s.paths,
        fill: s.fill,
        show: s.show !== false,
      })),
    ],
    plugins: [
      tooltipPlugin((u, idx) => {
        if (idx === null || idx === undefined) return null;
        const lines = [{ label: `${xIsStep ? "step" : o.xLabel || "x"} ${u.data[0][idx]}` }];
        o.series.forEach((s, i) => {
          if (s.tooltip === false || !u.series[i + 1].show) return;
          const raw = (s.raw || o.data[i + 1])[idx];
          lines.push({ color: s.color, label: s.label, value: raw === null || raw === undefined ? "–" : fmtNum(raw, 4) });
        });
        return lines;
      }),
      annotationPlugin(o, colors),
    ],
    hooks: {
      setScale: [(u, key) => key === "x" && group && group.propagate(u)],
      setSelect: [(u) => group && xIsStep && group.remember(u)],
    },
  };
  // Smoothed series keep their raw values as a faded line (as TensorBoard's Scalars), out of legend and tooltip.
  const faded = o.series.filter((s) => s.rawLine && s.raw);
  for (const s of faded) {
    opts.series.push({ label: `${s.label} (raw)`, stroke: s.color, width: 1, alpha: 0.3, spanGaps: !!s.spanGaps, points: { show: false } });
  }
  const positive = (ys) => (o.logY ? ys.map((v) => (v > 0 ? v : null)) : ys);
  const plotted = faded.length ? [...data, ...faded.map((s) => positive(s.raw))] : data;
  el.dataset.chart = o.name || "";
  el.dataset.points = String(countPoints(o.data));
  el.dataset.xLabel = xLabel || "";
  el.dataset.yLabel = o.yLabel || "";
  const u = new uPlot(opts, plotted, el);
  el.__uplot = u; // for tests
  const legendRows = u.root.querySelectorAll(".u-legend .u-series");
  for (let k = 0; k < faded.length; k++) legendRows[legendRows.length - 1 - k].style.display = "none";
  if (group) {
    group.add(u);
    if (xIsStep) group.fit(u);
  }
  const xs = o.data[0];
  if (o.xPad && xs.length > 1) { // room at both ends: bars centred on the first and last x are not cut
    u.setScale("x", { min: xs[0] - o.xPad, max: xs[xs.length - 1] + o.xPad });
  }
  return followWidthUntilDestroyed(el, u, group);
}

function annotationPlugin(o, colors) {
  return {
    hooks: {
      draw: (u) => {
        const { ctx } = u;
        const { left, top, width, height } = u.bbox;
        ctx.save();
        ctx.font = `${Math.round(11 * devicePixelRatio)}px sans-serif`;
        ctx.textAlign = "left"; // uPlot leaves the axes' alignment on the context
        ctx.textBaseline = "alphabetic";
        ctx.fillStyle = colors.muted;
        ctx.strokeStyle = colors.muted;
        ctx.setLineDash([4 * devicePixelRatio, 4 * devicePixelRatio]);
        // A label on a box of the background colour: a series line passing there does not strike it through.
        const label = (text, x, y) => {
          const w = ctx.measureText(text).width, pad = 2 * devicePixelRatio, em = 11 * devicePixelRatio;
          ctx.fillStyle = colors.bg;
          ctx.fillRect(x - pad, y - em, w + 2 * pad, em + 2 * pad);
          ctx.fillStyle = colors.muted;
          ctx.fillText(text, x, y);
        };
        for (const h of o.hlines || []) {
          const y = u.valToPos(h.y, "y", true);
          if (!(y >= top && y <= top + height)) continue;
          ctx.beginPath();
          ctx.moveTo(left, y);
          ctx.lineTo(left + width, y);
          ctx.stroke();
          // At the left end, above the line: where a rising convergence curve is still far below it.
          if (h.label) label(h.label, left + 4 * devicePixelRatio, y - 4 * devicePixelRatio);
        }
        for (const v of o.vlines || []) {
          const x = u.valToPos(v.x, "x", true);
          if (!(x >= left && x <= left + width)) continue;
          ctx.beginPath();
          ctx.moveTo(x, top);
          ctx.lineTo(x, top + height);
          ctx.stroke();
          // At the bottom: right of a crossing the curve is high (convergence, after 95%).
          if (v.label) label(v.label, Math.min(x + 4, left + width - 120 * devicePixelRatio), top + height - 6 * devicePixelRatio);
        }
        ctx.restore();
      },
    },
  };
}

function countPoints(data) {
  let n = 0;
  for (let s = 1; s < data.length; s++) for (const v of data[s]) if (v !== null && v !== undefined) n++;
  return n;
}
