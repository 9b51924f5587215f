// Thresholds decided by the server (the `thresholds` object of /runs), read
// in one place (pure). Nothing is hard-coded: a threshold the server does not
// send draws no line.

/** The convergence threshold of /runs (e.g. 0.95), or null when the server sends none. */
export function convergedThreshold(meta) {
  const t = meta && meta.thresholds ? meta.thresholds.converged : undefined;
  return typeof t === "number" && Number.isFinite(t) ? t : null;
}

/** A fraction as a whole percentage: 0.95 -> "95%". */
export function pctLabel(t) {
  return `${Math.round(100 * t)}%`;
}

/** The dashed line at threshold t, as lineChart's hlines ([] when t is null). */
export function thresholdLines(t) {
  return t === null ? [] : [{ y: t, label: pctLabel(t) }];
}

/** The first step whose value reaches t, or null (also when t is null). */
export function firstReached(steps, values, t) {
  if (t === null) return null;
  for (let k = 0; k < values.length; k++) if (values[k] !== null && values[k] >= t) return steps[k];
  return null;
}
