// Every colour the charts use: named colours for quantities (COLORS), the run
// and loss palettes, the heat map's scale and the theme's CSS colours.
// Pure except themeColors() (reads the page's CSS variables).

// Colour-blind-friendly hues (Okabe–Ito, then Tol's bright); each written once here.
const HUE = {
  blue: "#0072b2", orange: "#e69f00", green: "#009e73", pink: "#cc79a7", sky: "#56b4e9", vermillion: "#d55e00",
  yellow: "#f0e442", tolBlue: "#4477aa", tolRed: "#ee6677", tolGreen: "#228833", tolYellow: "#ccbb44", tolPurple: "#aa3377",
  purple: "#6a3d9a", grey: "#999999",
};

/** One colour per quantity, the same in every view. */
export const COLORS = {
  batch: HUE.blue, // batch moments; the mean over channels; training mode on the probe batch
  moving: HUE.vermillion, // moving averages (what inference uses); inference mode on the probe batch
  debiased: HUE.green, // debiased moving averages, convergence, probe output drift
  population: HUE.purple, // population moments (PreciseBN)
  p90: HUE.pink, // p90 over channels
  max: HUE.orange, // max over channels
  band: HUE.grey, // channels' p10 and p90 at the snapshots
  mean_gap: HUE.orange,
  log_var_ratio: HUE.sky,
};

/** One colour per run (chips, compare charts, sparklines), in run order. */
export const RUN_COLORS = [
  HUE.blue, HUE.orange, HUE.green, HUE.pink, HUE.sky, HUE.vermillion,
  HUE.yellow, HUE.tolBlue, HUE.tolRed, HUE.tolGreen, HUE.tolYellow, HUE.tolPurple,
];

export function runColor(i) {
  return cycle(RUN_COLORS, i);
}

/** The loss chart's series, in order. */
export const LOSS_COLORS = [HUE.vermillion, HUE.blue, HUE.green, HUE.pink, HUE.orange, HUE.sky];

export function lossColor(i) {
  return cycle(LOSS_COLORS, i);
}

function cycle(palette, i) {
  return palette[((i % palette.length) + palette.length) % palette.length];
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
 * The heat map's colour scale per gap measure: one fixed range for every run,
 * so runs compare and the warm-up's large gaps do not set it; values above
 * are clipped (drawn as the top colour). mean_gap: 0-1 train-time std (the
 * findings' "far" is 0.25); abs_log_var_ratio: 0-ln 4 (variances 4x apart;
 * "far" is 0.25, 1.28x); sym_kl: 0-1 nat (for equal variances, a mean gap
 * of d std is d^2).
 */
export const HEAT_SCALE_TOP = { mean_gap: 1, abs_log_var_ratio: Math.log(4), sym_kl: 1 };

/** The top of the heat map's scale for ``measure`` ("mean_gap/max"), or null for a measure without one. */
export function heatScaleTop(measure) {
  const top = HEAT_SCALE_TOP[String(measure).split("/")[0]];
  return top === undefined ? null : top;
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
