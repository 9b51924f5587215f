import { test } from "node:test";
import assert from "node:assert/strict";
import { convergedThreshold, firstReached, pctLabel, thresholdLines } from "../src/model/thresholds.js";

test("convergedThreshold: from /runs' thresholds, null when absent or not a number", () => {
  assert.equal(convergedThreshold({ thresholds: { converged: 0.95 } }), 0.95);
  assert.equal(convergedThreshold({ thresholds: { converged: 0.9 } }), 0.9);
  assert.equal(convergedThreshold({ runs: [] }), null);
  assert.equal(convergedThreshold({ thresholds: { converged: "0.95" } }), null);
  assert.equal(convergedThreshold(null), null);
});

test("pctLabel and thresholdLines", () => {
  assert.equal(pctLabel(0.95), "95%");
  assert.equal(pctLabel(0.999), "100%");
  assert.deepEqual(thresholdLines(0.95), [{ y: 0.95, label: "95%" }]);
  assert.deepEqual(thresholdLines(null), []);
});

test("firstReached: the first step at or above the threshold, nulls skipped", () => {
  assert.equal(firstReached([10, 20, 30, 40], [0.5, null, 0.95, 0.99], 0.95), 30);
  assert.equal(firstReached([10, 20], [0.5, 0.6], 0.95), null);
  assert.equal(firstReached([10], [1], null), null);
});
