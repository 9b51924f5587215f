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

/** Shortens a layer name for an axis: keeps the end, which names the layer. */
export function shortName(name, max = 22) {
  if (name.length <= max) return name;
  return "…" + name.slice(name.length - max + 1);
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
