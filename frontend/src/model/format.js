// Number and label formatting (pure).

/** A number for tooltips and tables: 4 significant digits, exponent when tiny or huge. */
export function fmtNum(v, digits = 4) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (!Number.isFinite(v)) return v > 0 ? "∞" : "-∞";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(digits - 1).replace(/\.?0+e/, "e");
  return String(Number(v.toPrecision(digits)));
}

/** A fraction in [0, 1] as a percentage: 0.634 -> "63.4%". */
export function fmtPct(v, digits = 1) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const p = v * 100;
  if (p > 99.9 && p < 100) return "99.9%";
  return `${p.toFixed(digits)}%`;
}

/** A step count: 20000 -> "20k", 1500 -> "1.5k", 12 -> "12". */
export function fmtStep(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e6) return `${trim(v / 1e6)}M`;
  if (a >= 1e4) return `${trim(v / 1e3)}k`;
  return String(Math.round(v));
}

function trim(x) {
  return String(Number(x.toFixed(1)));
}

/**
 * Row labels for a list of layer names in ``max`` characters each: the path
 * prefix every name shares ("sequential/") left out, and a name still too long
 * cut in the middle ("block12_…_conv_bn"), so that both its start and its end
 * (often the only difference: "_1", "_2") stay readable.
 */
export function layerLabels(names, max = 22) {
  let prefix = names.length > 1 ? names[0] : "";
  for (const n of names) while (prefix && !n.startsWith(prefix)) prefix = prefix.slice(0, -1);
  const cut = prefix.lastIndexOf("/") + 1; // whole path components only
  return names.map((n) => {
    const rest = n.slice(cut) || n;
    if (rest.length <= max) return rest;
    const head = Math.min(6, Math.floor(max / 3)), tail = max - 1 - head; // names differ more at their ends
    return `${rest.slice(0, head)}…${rest.slice(rest.length - tail)}`;
  });
}

/** Query string from an object; arrays repeat the key; null/undefined are skipped. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v === null || v === undefined) continue;
    if (Array.isArray(v)) v.forEach((x) => q.append(k, String(x)));
    else q.append(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}
