// TensorBoard-style smoothing: an exponential moving average debiased for its
// zero start, so the first points are not pulled towards 0 (pure).

/**
 * @param {Array<number|null>} values
 * @param {number} weight in [0, 1): 0 returns a copy.
 * @returns {Array<number|null>} nulls and non-finite values stay null and do not
 *   enter the average.
 */
export function smooth(values, weight) {
  const w = Math.min(Math.max(Number(weight) || 0, 0), 0.999);
  const out = new Array(values.length);
  let last = 0;
  let n = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null || v === undefined || !Number.isFinite(v)) {
      out[i] = null;
      continue;
    }
    if (w === 0) {
      out[i] = v;
      continue;
    }
    last = last * w + (1 - w) * v;
    n++;
    out[i] = last / (1 - Math.pow(w, n));
  }
  return out;
}
