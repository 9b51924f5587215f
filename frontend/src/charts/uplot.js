// What the uPlot charts (line.js, heatmap.js) share: the group that syncs
// their cursor and zoomed step range (SyncGroup), the tooltip, following the
// container's width, double-click reset and the integer axis ticks.

let groupId = 0;

/**
 * Charts that share a cursor and a zoomed step range. ``memory`` ({range}),
 * kept by the app across redraws of the same view: a zoom the user dragged is
 * remembered there and comes back when the charts are drawn again (a new
 * smoothing, a reload), as TensorBoard's Scalars keep theirs.
 */
export class SyncGroup {
  constructor(memory = { range: null }) {
    this.key = `bn-sync-${++groupId}`;
    this.charts = new Set();
    this.full = null; // [min, max] of all data, the reset range
    this.syncing = false;
    this.memory = memory;
  }
  /** The user dragged a zoom on ``u`` (uPlot's setSelect): remember its step range. */
  remember(u) {
    const { left, width } = u.select;
    if (width > 0) this.memory.range = [u.posToVal(left, "x"), u.posToVal(left + width, "x")];
  }
  /** Double-click: back to the full range, the zoom forgotten. */
  unzoom() {
    this.memory.range = null;
    this.reset();
  }
  /** The range charts are put on: the remembered zoom while it overlaps the data, else the full range. */
  range() {
    const z = this.memory.range, f = this.full;
    return z && f && z[1] > f[0] && z[0] < f[1] ? z : f;
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
  /** Puts a chart on the group's range (at creation, when data arrive, on double-click). */
  fit(u) {
    const range = this.range();
    if (!range) return;
    const was = this.syncing;
    this.syncing = true;
    u.setScale("x", { min: range[0], max: range[1] });
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

export function tooltipPlugin(describe) {
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

export function autoWidth(el) {
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
export const INT_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2.5e3, 5e3, 1e4, 2e4, 2.5e4, 5e4,
  1e5, 2e5, 2.5e5, 5e5, 1e6, 2e6, 5e6, 1e7, 2e7, 5e7, 1e8, 1e9];

/** Resizes ``u`` with ``el``; its destroy() also stops that and leaves the zoom group. */
export function followWidthUntilDestroyed(el, u, group) {
  const stop = observeWidth(el, u);
  const destroy = u.destroy.bind(u);
  u.destroy = () => {
    stop();
    if (group) group.remove(u);
    destroy();
  };
  return u;
}

/** Double-click resets every chart of the group to its full step range (and forgets the zoom). */
export function resetBinding(group, xIsStep) {
  if (!group || !xIsStep) return undefined;
  return {
    dblclick: () => () => {
      group.unzoom();
      return null;
    },
  };
}
