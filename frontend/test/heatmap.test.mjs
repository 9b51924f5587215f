import { test } from "node:test";
import assert from "node:assert/strict";
import { stepRange } from "../src/charts/heatmap.js";

test("stepRange: one step is 'step N', a bin of several 'steps A–B'", () => {
  assert.equal(stepRange(40, 40), "step 40");
  assert.equal(stepRange(1, 8), "steps 1–8");
});
