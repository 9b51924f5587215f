// A slider over the steps that have a snapshot (the per-channel and per-replica views): the row of
// controls, and the fetch of the step picked; the latest answer wins when the slider moves faster
// than the server answers.
import { h } from "./dom.js";
import { fmtStep } from "../model/format.js";

/**
 * ``snap``: the route's answer (``steps``, ``step``); ``roles``: the ``data-role`` of the slider and of
 * the step shown; ``fetchStep(step)`` a promise of the answer at a step, handed to ``onData`` while
 * ``alive()``. Returns ``{row, out}``: the controls, and the element that says the step.
 */
export function snapshotStepper(snap, roles, label, fetchStep, onData, alive) {
  const slider = h("input", { type: "range", min: "0", max: String(snap.steps.length - 1), step: "1",
    value: String(snap.steps.indexOf(snap.step)), dataset: { role: roles.slider }, "aria-label": label });
  const out = h("output", { dataset: { role: roles.step } }, `step ${snap.step}`);
  const row = h("div", { class: "bn-row" }, h("span", { class: "bn-note" }, `step ${fmtStep(snap.steps[0])}`), slider,
    h("span", { class: "bn-note" }, `step ${fmtStep(snap.steps[snap.steps.length - 1])}`), out);
  let pending = 0;
  slider.addEventListener("input", async () => {
    const step = snap.steps[Number(slider.value)];
    out.textContent = `step ${step}`;
    const mine = ++pending;
    const next = await fetchStep(step);
    if (mine === pending && alive()) onData(next);
  });
  return { row, out };
}
