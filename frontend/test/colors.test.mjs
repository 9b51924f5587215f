import { test } from "node:test";
import assert from "node:assert/strict";
import { heatColor, heatScale, runColor, RUN_COLORS } from "../src/charts/colors.js";

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
