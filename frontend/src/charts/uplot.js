// uPlot wrappers: line charts and the layers x steps heat map, with a shared
// cursor and zoom per group, tooltips with exact values, log scale.
import uPlot from "uplot";
import { fmtNum, fmtStep, shortName } from "../model/format.js";
import { heatColor, heatScale } from "./colors.js";

export function themeColors() {
  const cs = getComputedStyle(document.documentElement);
  const v = (name, fallback) => (cs.getPropertyValue(name) || "").trim() || fallback;
  return { fg: v("--fg", "#222"), muted: v("--muted", "#777"), grid: v("--grid", "#ddd"), bg: v("--bg", "#fff") };
}

let groupId = 0;

/** Charts that share a cursor and a zoomed step range. */
export class SyncGroup {
  constructor() {
    this.key = `bn-sync-${++groupId}`;
    this.charts = new Set();
    this.full = null; // [min, max] of all data, the reset range
    this.syncing = false;
  }
  extend(min, max) {
    if (!Number.isFinite(min) || !Number.isFinite(max)) return;
    this.full = this.full ? [Math.min(this.full[0], min), Math.max(this.full[1], max)] : [min, max];
  }
  add(u) {
    this.charts.add(u);
  }
  remove(u) {
    this.charts.delete(u);
  }
  /** Puts a chart on the group's full step range (at creation and on double-click). */
  fit(u) {
    if (!this.full) return;
    const was = this.syncing;
    this.syncing = true;
    u.setScale("x", { min: this.full[0], max: this.full[1] });
    this.syncing = was;
  }
  reset() {
    for (const u of this.charts) this.fit(u);
  }
  propagate(src) {
    if (this.syncing) return;
    this.syncing = true;
    const { min, max } = src.scales.x;
    for (const u of this.charts) if (u !== src) u.setScale("x", { min, max });
    this.syncing = false;
  }
  destroy() {
    for (const u of [...this.charts]) u.destroy();
    this.charts.clear();
  }
}

function tooltipPlugin(describe) {
  let tip;
  return {
    hooks: {
      init: (u) => {
        tip = document.createElement("div");
        tip.className = "bn-tip";
        tip.style.display = "none";
        u.over.appendChild(tip);
        u.over.addEventListener("mouseleave", () => (tip.style.display = "none"));
      },
      setCursor: (u) => {
        const { left, top, idx } = u.cursor;
        if (left === undefined || left < 0 || top < 0) {
          tip.style.display = "none";
          return;
        }
        const lines = describe(u, idx, left, top);
        if (!lines || !lines.length) {
          tip.style.display = "none";
          return;
        }
        tip.replaceChildren();
        for (const line of lines) {
          const row = document.createElement("div");
          if (line.color) {
            const sw = document.createElement("span");
            sw.className = "bn-swatch";
            sw.style.background = line.color;
            row.appendChild(sw);
          }
          const label = document.createElement("span");
          label.textContent = line.label;
          row.appendChild(label);
          if (line.value !== undefined) {
            const val = document.createElement("b");
            val.textContent = " " + line.value;
            row.appendChild(val);
          }
          tip.appendChild(row);
        }
        tip.style.display = "block";
        const w = u.over.clientWidth;
        const x = left + 12 + tip.offsetWidth > w ? left - tip.offsetWidth - 12 : left + 12;
        tip.style.left = `${Math.max(0, x)}px`;
        tip.style.top = `${Math.max(0, top - 10)}px`;
      },
    },
  };
}

function countPoints(data) {
  let n = 0;
  for (let s = 1; s < data.length; s++) for (const v of data[s]) if (v !== null && v !== undefined) n++;
  return n;
}

function autoWidth(el) {
  return Math.max(240, Math.floor(el.clientWidth || el.parentElement?.clientWidth || 600));
}

function observeWidth(el, u) {
  if (typeof ResizeObserver === "undefined") return () => {};
  let last = 0;
  const ro = new ResizeObserver(() => {
    const w = autoWidth(el);
    if (Math.abs(w - last) > 2) {
      last = w;
      u.setSize({ width: w, height: u.height });
    }
  });
  ro.observe(el);
  return () => ro.disconnect();
}

export const Y_AXIS_SIZE = 150;

// Integer tick increments for step and channel axes.
const INT_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2.5e3, 5e3, 1e4, 2e4, 2.5e4, 5e4,
  1e5, 2e5, 2.5e5, 5e5, 1e6, 2e6, 5e6, 1e7, 2e7, 5e7, 1e8, 1e9];

/**
 * A line chart.
 * @param {HTMLElement} el container (gets data-chart and data-points).
 * @param {object} o {name, series: [{label, color, dash, width, alpha, points}], data: [xs, ys...],
 *   logY, group (SyncGroup), height, hlines: [{y, label}], vlines: [{x, label}], yLabel, xIsStep}
 */
export function lineChart(el, o) {
  const colors = themeColors();
  const data = o.logY ? [o.data[0], ...o.data.slice(1).map((ys) => ys.map((v) => (v > 0 ? v : null)))] : o.data;
  const xIsStep = o.xIsStep !== false;
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
      axis({ incrs: INT_INCRS, values: (u, splits) => splits.map((v) => (xIsStep ? fmtStep(v) : String(v))), label: o.xLabel, labelSize: o.xLabel ? 18 : 0 }),
      axis({ size: o.ySize || 64, values: (u, splits) => splits.map((v) => fmtNum(v, 3)), label: o.yLabel, labelSize: o.yLabel ? 18 : 0 }),
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
        points: s.points ? { show: true, size: 5, fill: s.color } : { show: false },
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
          lines.push({ color: s.color, label: s.label, value: raw === null || raw === undefined ? "–" : fmtNum(raw, 7) });
        });
        return lines;
      }),
      annotationPlugin(o, colors),
    ],
    hooks: {
      setScale: [(u, key) => key === "x" && group && group.propagate(u)],
    },
  };
  el.dataset.chart = o.name || "";
  el.dataset.points = String(countPoints(o.data));
  const u = new uPlot(opts, data, el);
  el.__uplot = u; // for tests
  if (group) {
    group.add(u);
    if (xIsStep) group.fit(u);
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
        ctx.fillStyle = colors.muted;
        ctx.strokeStyle = colors.muted;
        ctx.setLineDash([4 * devicePixelRatio, 4 * devicePixelRatio]);
        for (const h of o.hlines || []) {
          const y = u.valToPos(h.y, "y", true);
          if (!(y >= top && y <= top + height)) continue;
          ctx.beginPath();
          ctx.moveTo(left, y);
          ctx.lineTo(left + width, y);
          ctx.stroke();
          if (h.label) ctx.fillText(h.label, left + width - ctx.measureText(h.label).width - 4, y - 4);
        }
        for (const v of o.vlines || []) {
          const x = u.valToPos(v.x, "x", true);
          if (!(x >= left && x <= left + width)) continue;
          ctx.beginPath();
          ctx.moveTo(x, top);
          ctx.lineTo(x, top + height);
          ctx.stroke();
          if (v.label) ctx.fillText(v.label, Math.min(x + 4, left + width - 120 * devicePixelRatio), top + 14 * devicePixelRatio);
        }
        ctx.restore();
      },
    },
  };
}

/**
 * The layers x steps heat map of a gap measure (one row per layer, depth
 * order top to bottom), drawn in a uPlot chart so that its step axis lines up
 * with, zooms with and shares the cursor of the charts of its group.
 */
export function heatmapChart(el, hm, o = {}) {
  const colors = themeColors();
  const n = hm.layers.length;
  const edges = hm.step_edges;
  const max = hm.max || 0;
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
  const opts = {
    width: autoWidth(el),
    height: o.height || Math.min(Math.max(22 * n + 40, 120), 520),
    legend: { show: false },
    cursor: { sync: group ? { key: group.key } : undefined, drag: { x: true, y: false, setScale: true }, points: { show: false },
      bind: resetBinding(group, true) },
    scales: {
      x: { time: false, range: (u, a, b) => (a === b ? [a - 1, b + 1] : [a, b]) },
      y: { range: [-0.5, n - 0.5] },
    },
    axes: [
      { stroke: colors.muted, grid: { show: false }, ticks: { stroke: colors.grid }, incrs: INT_INCRS, values: (u, s) => s.map(fmtStep) },
      {
        stroke: colors.muted,
        size: Y_AXIS_SIZE,
        grid: { show: false },
        ticks: { show: false },
        splits: () => (n <= 24 ? [...Array(n).keys()] : [...Array(n).keys()].filter((i) => i % Math.ceil(n / 24) === 0)),
        values: (u, splits) => splits.map((y) => shortName(hm.layers[rowOf(y)] || "", 22)),
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
          { label: `steps ${Math.ceil(edges[j])}–${Math.ceil(edges[j + 1]) - 1}` },
          { label: `${hm.measure} (max)`, value: v === null ? "no data" : fmtNum(v, 7) },
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
              const c = heatColor(heatScale(row[j], max, true));
              if (!c) continue;
              const x0 = u.valToPos(edges[j] - 0.5, "x", true);
              const x1 = u.valToPos(edges[j + 1] - 0.5, "x", true);
              if (x1 < left || x0 > left + width) continue;
              ctx.fillStyle = c;
              ctx.fillRect(x0, Math.min(y0, y1), Math.max(x1 - x0, 1) + 0.5, Math.abs(y1 - y0) - 1);
            }
          }
          ctx.restore();
        },
      ],
      setScale: [(u, key) => key === "x" && group && group.propagate(u)],
      setCursor: [(u) => o.onHover && o.onHover(u)],
    },
  };
  el.dataset.chart = o.name || "heatmap";
  el.dataset.points = String(hm.values.reduce((a, row) => a + row.filter((v) => v !== null).length, 0));
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

/** Resizes ``u`` with ``el``; its destroy() also stops that and leaves the zoom group. */
function followWidthUntilDestroyed(el, u, group) {
  const stop = observeWidth(el, u);
  const destroy = u.destroy.bind(u);
  u.destroy = () => {
    stop();
    if (group) group.remove(u);
    destroy();
  };
  return u;
}

/** Double-click resets every chart of the group to its full step range. */
function resetBinding(group, xIsStep) {
  if (!group || !xIsStep) return undefined;
  return {
    dblclick: () => () => {
      group.reset();
      return null;
    },
  };
}

/** A small canvas sparkline of one row (no axes). */
export function sparkline(canvas, values, color, max) {
  const dpr = window.devicePixelRatio || 1;
  // Fixed CSS size (see style.css): reading clientWidth of 100 fresh canvases forces 100 layouts.
  const w = Number(canvas.dataset.w) || 140, h = Number(canvas.dataset.h) || 24;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);
  ctx.clearRect(0, 0, w, h);
  const finite = values.filter((v) => v !== null && Number.isFinite(v));
  canvas.dataset.points = String(finite.length);
  if (!finite.length) return;
  const top = max > 0 ? max : Math.max(...finite) || 1;
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.2;
  ctx.beginPath();
  let pen = false;
  values.forEach((v, i) => {
    if (v === null || !Number.isFinite(v)) {
      pen = false;
      return;
    }
    const x = values.length > 1 ? (i / (values.length - 1)) * (w - 2) + 1 : w / 2;
    const y = h - 2 - (Math.min(v, top) / top) * (h - 4);
    if (pen) ctx.lineTo(x, y);
    else ctx.moveTo(x, y);
    pen = true;
  });
  ctx.stroke();
}
