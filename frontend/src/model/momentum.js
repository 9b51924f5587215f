// A layer's momentum in its own framework's convention (pure). The log keeps
// momentum in Keras' convention (the weight kept on the old average:
// PyTorch's momentum=0.1 is stored as 0.9); the server says it the way the
// layer was built in `momentum_label` ("momentum=0.1" for PyTorch,
// "momentum=0.99" for Keras) and names the convention in
// `momentum_convention` (tb_bnstats.plugin.data.derived, in every layer
// object of /runs, /overview, and the `info` of /series, /snapshot and
// /compare). A server without these fields gets the old display: the stored
// number.

const PYTORCH = "pytorch";

function isPytorch(info) {
  return Boolean(info) && info.framework === PYTORCH;
}

function stored(info) {
  return info && info.momentum !== undefined ? String(info.momentum) : "–";
}

/** "momentum=0.1" (PyTorch), "momentum=0.99" (Keras); the stored number when the server sends no label. */
export function momentumLabel(info) {
  const label = info ? info.momentum_label : undefined;
  return typeof label === "string" && label ? label : stored(info);
}

/**
 * The tooltip of a momentum: the convention it is said in and, for a PyTorch
 * layer, the number the log keeps (Keras' convention). null without a convention.
 */
export function momentumTitle(info) {
  const conv = info ? info.momentum_convention : undefined;
  if (typeof conv !== "string" || !conv) return null;
  const m = info.momentum;
  return isPytorch(info) && typeof m === "number" ? `${conv} (logged as ${+m.toPrecision(6)}, Keras' convention)` : conv;
}

/**
 * The layer view's momentum fact, [key, value]: [null, "momentum=0.1"] when the
 * server labels it (the label names itself), ["momentum", "0.99"] otherwise.
 */
export function momentumFact(info) {
  const label = info ? info.momentum_label : undefined;
  return typeof label === "string" && label ? [null, label] : ["momentum", stored(info)];
}

/** The momentum in a sentence: "momentum=0.1" when labelled, the old "momentum 0.99" otherwise. */
export function momentumPhrase(info) {
  const label = info ? info.momentum_label : undefined;
  return typeof label === "string" && label ? label : `momentum ${stored(info)}`;
}

/** The effective window's formula in the layer's convention: 1/(1−m) in Keras', 1/momentum in PyTorch's. */
export function windowFormula(info) {
  return isPytorch(info) ? "1/momentum" : "1/(1−m)";
}

/** The convergence formula in the layer's convention. */
export function convergenceFormula(info) {
  return isPytorch(info) ? "1 − (1 − momentum)^updates" : "1 − momentum^updates";
}

/**
 * The last step of a layer's warm-up: the step at which its moving averages
 * reached 95% convergence (``steps_to_95`` updates), from its latest step and
 * update count, one update per step since (the overview's layer object);
 * its latest step while it has not yet; null for a frozen layer (it does not
 * converge) or one without the numbers.
 */
export function warmupEnd(layer) {
  const latest = layer.latest || {};
  const updates = latest.updates, need = layer.steps_to_95, last = layer.latest_step;
  if (layer.frozen || ![updates, need, last].every(Number.isFinite)) return null;
  return updates >= need ? last - (updates - need) : last;
}
