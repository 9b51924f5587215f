import { test } from "node:test";
import assert from "node:assert/strict";
import { findingsSummary, worstSeverity, findingsOfLayer, worstRun, messageOf } from "../src/model/findings.js";

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

test("worstRun: the first run of the worst severity, unknown after ok", () => {
  const runs = [{ run: "a", severity: "ok" }, { run: "b", severity: "warning" }, { run: "c", severity: "error" },
    { run: "d", severity: "error" }, { run: "e", severity: null }];
  assert.equal(worstRun(runs), "c");
  assert.equal(worstRun([{ run: "x", severity: null }, { run: "y", severity: "ok" }]), "y");
  assert.equal(worstRun([{ run: "x" }]), "x");
  assert.equal(worstRun([]), null);
});

test("messageOf: the layer's own message, else the finding's", () => {
  const f = { message: "a: 1. Also: b.", messages: { a: "a: 1.", b: "b: 2." } };
  assert.equal(messageOf(f, "b"), "b: 2.");
  assert.equal(messageOf(f, "c"), "a: 1. Also: b.");
  assert.equal(messageOf({ message: "old" }, "a"), "old");
  assert.equal(messageOf(f, undefined), "a: 1. Also: b.");
});
