import { test } from "node:test";
import assert from "node:assert/strict";
import { findingsSummary, worstSeverity, findingsOfLayer } from "../src/model/findings.js";

test("findingsSummary: counts per severity, plural, calm text when none", () => {
  assert.equal(findingsSummary({ error: 2, warning: 1, info: 0 }), "2 errors, 1 warning");
  assert.equal(findingsSummary({ error: 1, warning: 0, info: 3 }), "1 error, 3 info");
  assert.equal(findingsSummary({ error: 0, warning: 0, info: 0 }), "No findings");
  assert.equal(findingsSummary(null), "No findings");
});

test("worstSeverity: error before warning before info, else ok", () => {
  assert.equal(worstSeverity({ error: 1, warning: 2 }), "error");
  assert.equal(worstSeverity({ error: 0, warning: 2 }), "warning");
  assert.equal(worstSeverity({ info: 1 }), "info");
  assert.equal(worstSeverity({}), "ok");
});

test("findingsOfLayer: findings naming the layer", () => {
  const fs = [{ code: "BN001", layers: ["a", "b"] }, { code: "BN003", layers: ["c"] }, { code: "X" }];
  assert.deepEqual(findingsOfLayer(fs, "b").map((f) => f.code), ["BN001"]);
  assert.deepEqual(findingsOfLayer(fs, "z"), []);
});
