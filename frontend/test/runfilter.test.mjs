import { test } from "node:test";
import assert from "node:assert/strict";
import { runMatcher } from "../src/model/runfilter.js";

test("a regular expression, anywhere in the name, case-insensitive", () => {
  const m = runMatcher("^momentum|BATCH_\\d");
  assert.deepEqual(["momentum_0.99", "tiny_batch_4", "healthy_m0.9", "x_momentum"].filter(m.matches),
    ["momentum_0.99", "tiny_batch_4"]);
  assert.equal(m.error, null);
});

test("empty matches all; an invalid expression matches all and says why", () => {
  assert.ok(runMatcher("  ").matches("anything"));
  const bad = runMatcher("(unclosed");
  assert.ok(bad.matches("anything"));
  assert.match(bad.error, /not a regular expression/);
});
