// The layers table's order (pure): depth order by default, or by a column,
// worst first (largest gap, least converged), a second click reversing it.
// Layers without a value (a frozen layer's convergence, no probe yet) go last.

/** Sortable columns: the value each reads of an /overview layer, and which end is "worst". */
export const LAYER_SORTS = {
  depth: { value: (l) => l.depth, worst: "low", label: "depth order" },
  mean_gap: { value: (l) => (l.latest || {})["mean_gap/max"], worst: "high", label: "mean gap" },
  var_gap: { value: (l) => (l.latest || {})["abs_log_var_ratio/max"], worst: "high", label: "var gap" },
  convergence: { value: (l) => (l.frozen ? null : (l.latest || {}).convergence), worst: "low", label: "convergence" },
  probe_drift: { value: (l) => (l.latest || {}).probe_output_drift, worst: "high", label: "probe drift" },
  population_gap: { value: (l) => (l.latest || {})["population_mean_gap/max"], worst: "high", label: "vs population" },
};

/** ``layers`` sorted by column ``key`` (LAYER_SORTS), worst first unless ``reversed``; ties in depth order. */
export function sortLayers(layers, key = "depth", reversed = false) {
  const sort = LAYER_SORTS[key] || LAYER_SORTS.depth;
  const sign = (sort.worst === "high" ? -1 : 1) * (reversed ? -1 : 1);
  const known = (v) => v !== null && v !== undefined && Number.isFinite(v);
  return [...layers].sort((a, b) => {
    const va = sort.value(a), vb = sort.value(b);
    if (known(va) !== known(vb)) return known(va) ? -1 : 1;
    if (known(va) && va !== vb) return sign * (va - vb);
    return a.depth - b.depth;
  });
}
