import { test } from "node:test";
import assert from "node:assert/strict";
import { COLORS, LOSS_COLORS, RUN_COLORS, heatColor, heatScale, lossColor, runColor } from "../src/charts/colors.js";

test("heat colours span viridis and clamp", () => {
  assert.equal(heatColor(0), "rgb(68,1,84)");
  assert.equal(heatColor(1), "rgb(253,231,37)");
  assert.equal(heatColor(2), heatColor(1));
  assert.equal(heatColor(null), null);
  assert.equal(heatColor(NaN), null);
});

test("heat scale: log-compressed, 0 at 0 and 1 at max", () => {
  assert.equal(heatScale(0, 10), 0);
  assert.equal(heatScale(10, 10), 1);
  assert.ok(heatScale(1, 10) > 0.1); // a spike does not flatten the rest
  assert.equal(heatScale(5, 10, false), 0.5);
  assert.equal(heatScale(null, 10), null);
  assert.equal(heatScale(1, 0), null);
});

test("run colours cycle", () => {
  assert.equal(runColor(0), RUN_COLORS[0]);
  assert.equal(runColor(RUN_COLORS.length), RUN_COLORS[0]);
  assert.equal(runColor(-1), RUN_COLORS[RUN_COLORS.length - 1]);
});

test("loss colours cycle", () => {
  assert.equal(lossColor(0), LOSS_COLORS[0]);
  assert.equal(lossColor(LOSS_COLORS.length + 1), LOSS_COLORS[1]);
});

test("the palette keeps its colours (the screenshots and the docs show them)", () => {
  assert.deepEqual(COLORS, {
    batch: "#0072b2", moving: "#d55e00", debiased: "#009e73", population: "#6a3d9a", p90: "#cc79a7",
    max: "#e69f00", band: "#999999", mean_gap: "#e69f00", log_var_ratio: "#56b4e9",
  });
  assert.deepEqual(RUN_COLORS, ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00",
    "#f0e442", "#4477aa", "#ee6677", "#228833", "#ccbb44", "#aa3377"]);
  assert.deepEqual(LOSS_COLORS, ["#d55e00", "#0072b2", "#009e73", "#cc79a7", "#e69f00", "#56b4e9"]);
});
