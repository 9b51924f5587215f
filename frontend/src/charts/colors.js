// Colours (pure): run palette and the heat map's colour scale.

// Colour-blind-friendly palette (Okabe–Ito, then Tol's bright).
export const RUN_COLORS = [
  "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00",
  "#f0e442", "#4477aa", "#ee6677", "#228833", "#ccbb44", "#aa3377",
];

export function runColor(i) {
  return RUN_COLORS[((i % RUN_COLORS.length) + RUN_COLORS.length) % RUN_COLORS.length];
}

// Viridis, 9 stops.
const VIRIDIS = [
  [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
];

/** Colour of t in [0, 1] on the viridis scale, as "rgb(r,g,b)"; null -> null. */
export function heatColor(t) {
  if (t === null || t === undefined || !Number.isFinite(t)) return null;
  const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2);
  const f = x - i;
  const c = VIRIDIS[i].map((a, k) => Math.round(a + (VIRIDIS[i + 1][k] - a) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

/**
 * Maps a value to [0, 1] for the heat map: linear, or log1p-compressed so a
 * single spike does not flatten everything else.
 */
export function heatScale(v, max, log = true) {
  if (v === null || v === undefined || !Number.isFinite(v) || !(max > 0)) return null;
  const x = Math.max(v, 0);
  return log ? Math.log1p(x) / Math.log1p(max) : x / max;
}

/** The theme's colours: the CSS variables of style.css (light or dark), with fallbacks. */
export function themeColors() {
  const cs = getComputedStyle(document.documentElement);
  const v = (name, fallback) => (cs.getPropertyValue(name) || "").trim() || fallback;
  return { fg: v("--fg", "#222"), muted: v("--muted", "#777"), grid: v("--grid", "#ddd"), bg: v("--bg", "#fff") };
}
