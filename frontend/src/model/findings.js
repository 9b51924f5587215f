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
