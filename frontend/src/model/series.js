// Series shaping (pure): the server sends series already min/max-downsampled;
// these put several on one x axis (uPlot's data layout) and fit a heat-map
// row into a sparkline's width.

/** Max of consecutive groups so that `values` fits `width` cells (nulls ignored). */
export function maxPool(values, width) {
  const n = values.length;
  if (n <= width) return values.slice();
  const out = new Array(width);
  for (let j = 0; j < width; j++) {
    const a = Math.floor((j * n) / width), b = Math.floor(((j + 1) * n) / width);
    let m = null;
    for (let i = a; i < Math.max(b, a + 1); i++) {
      const v = values[i];
      if (v !== null && v !== undefined && Number.isFinite(v) && (m === null || v > m)) m = v;
    }
    out[j] = m;
  }
  return out;
}

/**
 * Aligns several series on the union of their x values (uPlot's data layout).
 * @param {Array<{x: number[], y: Array<number|null>}>} series
 * @returns {Array<Array<number|null>>} [xs, ys1, ys2, ...]
 */
export function alignSeries(series) {
  const all = new Set();
  for (const s of series) for (const x of s.x) all.add(x);
  const xs = [...all].sort((a, b) => a - b);
  const pos = new Map(xs.map((x, i) => [x, i]));
  const out = [xs];
  for (const s of series) {
    const ys = new Array(xs.length).fill(null);
    for (let i = 0; i < s.x.length; i++) ys[pos.get(s.x[i])] = s.y[i];
    out.push(ys);
  }
  return out;
}

/** How many decades the positive finite values of ``arrays`` span (0 for none): log10(max / min). */
export function decadesSpanned(arrays) {
  let lo = Infinity, hi = -Infinity;
  for (const ys of arrays) for (const v of ys) if (Number.isFinite(v) && v > 0) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  return hi > lo ? Math.log10(hi / lo) : 0;
}
