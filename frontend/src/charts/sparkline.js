// The overview table's sparklines: a plain canvas line per layer (no uPlot).

/** A small canvas sparkline of one row (no axes). */
export function sparkline(canvas, values, color, max) {
  const dpr = window.devicePixelRatio || 1;
  // Fixed CSS size (see style.css): reading clientWidth of 100 fresh canvases forces 100 layouts.
  const w = Number(canvas.dataset.w) || 140, h = Number(canvas.dataset.h) || 24;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);
  ctx.clearRect(0, 0, w, h);
  const finite = values.filter((v) => v !== null && Number.isFinite(v));
  canvas.dataset.points = String(finite.length);
  if (!finite.length) return;
  const top = max > 0 ? max : Math.max(...finite) || 1;
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.2;
  ctx.beginPath();
  let pen = false;
  values.forEach((v, i) => {
    if (v === null || !Number.isFinite(v)) {
      pen = false;
      return;
    }
    const x = values.length > 1 ? (i / (values.length - 1)) * (w - 2) + 1 : w / 2;
    const y = h - 2 - (Math.min(v, top) / top) * (h - 4);
    if (pen) ctx.lineTo(x, y);
    else ctx.moveTo(x, y);
    pen = true;
  });
  ctx.stroke();
}
