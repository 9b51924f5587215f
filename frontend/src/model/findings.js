// Diagnosis findings (pure helpers; the DOM part is views/findings.js).

const SEVERITIES = ["error", "warning", "info"];

/** "2 errors, 1 warning" from {error: 2, warning: 1, info: 0}; "No findings" when all are 0. */
export function findingsSummary(counts) {
  const parts = [];
  for (const sev of SEVERITIES) {
    const n = (counts && counts[sev]) || 0;
    if (n) parts.push(`${n} ${sev}${n === 1 ? "" : sev === "info" ? "" : "s"}`);
  }
  return parts.length ? parts.join(", ") : "No findings";
}

/** The banner's level: the worst severity present, or "ok". */
export function worstSeverity(counts) {
  for (const sev of SEVERITIES) if (counts && counts[sev]) return sev;
  return "ok";
}

/** The findings that name `layer`. */
export function findingsOfLayer(findings, layer) {
  return (findings || []).filter((f) => Array.isArray(f.layers) && f.layers.includes(layer));
}

const RANK = { error: 0, warning: 1, info: 2, ok: 3 };

/** The run the tab opens on: the first (in list order) with the worst severity; runs whose severity is not known yet come after "ok". */
export function worstRun(runs) {
  let best = null;
  for (const r of runs || []) {
    const rank = r.severity in RANK ? RANK[r.severity] : 4;
    if (best === null || rank < best.rank) best = { run: r.run, rank };
  }
  return best ? best.run : null;
}

/** What finding `f` says about `layer`: its own message when the finding has one per layer. */
export function messageOf(f, layer) {
  return (layer && f.messages && typeof f.messages[layer] === "string") ? f.messages[layer] : f.message;
}
