// The train/inference gap probe (pure): pairs the probe_train/* and
// probe_inference/* metric series of the /loss route by metric name, with
// probe_recalibrated/* (inference mode, frozen BN layers recalibrated) when logged.

/**
 * [{name, train, inference, recalibrated}] for every metric logged in both probe splits,
 * accuracy first (the symptom), then loss, then by name. `train` / `inference` / `recalibrated` (or null) are the /loss series objects.
 */
export function probePairs(series) {
  const by = { probe_train: new Map(), probe_inference: new Map(), probe_recalibrated: new Map() };
  for (const s of series || []) if (s.source === "bn_stats" && by[s.split] && s.steps.length) by[s.split].set(s.name, s);
  const names = [...by.probe_train.keys()].filter((n) => by.probe_inference.has(n));
  const rank = (n) => (n === "accuracy" ? 0 : n === "loss" ? 1 : 2);
  names.sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
  return names.map((name) => ({ name, train: by.probe_train.get(name), inference: by.probe_inference.get(name),
    recalibrated: by.probe_recalibrated.get(name) || null }));
}

/**
 * The last step both modes have a value at: {step, train, inference, gap = train − inference},
 * or null when they share no step.
 */
export function latestGap(pair) {
  const inf = new Map();
  pair.inference.steps.forEach((s, i) => {
    if (pair.inference.values[i] !== null) inf.set(s, pair.inference.values[i]);
  });
  for (let i = pair.train.steps.length - 1; i >= 0; i--) {
    const s = pair.train.steps[i], t = pair.train.values[i];
    if (t !== null && inf.has(s)) return { step: s, train: t, inference: inf.get(s), gap: t - inf.get(s) };
  }
  return null;
}
