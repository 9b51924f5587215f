// Client-side reductions (pure): the backend already sends min/max-bucketed
// series; these fit a series or a heat-map row to a number of pixels.

/**
 * Min and max per bucket of equal x width, first and last kept: spikes survive.
 * @returns {{x: number[], y: Array<number|null>}} in x order.
 */
export function minMaxDownsample(xs, ys, points) {
  const n = xs.length;
  if (n <= Math.max(points, 2)) return { x: xs.slice(), y: ys.slice() };
  const buckets = Math.max(Math.floor(points / 2), 1);
  const lo = xs[0];
  const width = (xs[n - 1] - lo + 1) / buckets;
  const keep = new Set([0, n - 1]);
  let b = -1, iMin = -1, iMax = -1;
  const flush = () => {
    if (iMin >= 0) keep.add(iMin);
    if (iMax >= 0) keep.add(iMax);
  };
  let firstOfBucket = -1;
  for (let i = 0; i < n; i++) {
    const bi = Math.min(Math.floor((xs[i] - lo) / width), buckets - 1);
    if (bi !== b) {
      flush();
      if (iMin < 0 && firstOfBucket >= 0) keep.add(firstOfBucket);
      b = bi; iMin = -1; iMax = -1; firstOfBucket = i;
    }
    const v = ys[i];
    if (v === null || v === undefined || !Number.isFinite(v)) continue;
    if (iMin < 0 || v < ys[iMin]) iMin = i;
    if (iMax < 0 || v > ys[iMax]) iMax = i;
  }
  flush();
  if (iMin < 0 && firstOfBucket >= 0) keep.add(firstOfBucket);
  const idx = [...keep].sort((a, c) => a - c);
  return { x: idx.map((i) => xs[i]), y: idx.map((i) => ys[i]) };
}

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
