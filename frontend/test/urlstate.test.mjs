import { test } from "node:test";
import assert from "node:assert/strict";
import { parseHash, formatHash, withState, stateOf } from "../src/ui/urlstate.js";

test("the tab's keys go after TensorBoard's own entries and come back", () => {
  const hash = withState("#bn_stats&darkMode=true", { run: "run/1 & ü", view: "layer", layer: "a/b", step: 40 });
  assert.equal(hash, "#bn_stats&darkMode=true&p.bn_stats.run=run%2F1%20%26%20%C3%BC&p.bn_stats.view=layer&p.bn_stats.layer=a%2Fb&p.bn_stats.step=40");
  assert.deepEqual(stateOf(hash), { run: "run/1 & ü", view: "layer", layer: "a/b", step: "40" });
  assert.deepEqual(parseHash(hash).slice(0, 2), [["", "bn_stats"], ["darkMode", "true"]]);
});

test("cleared keys are removed, others untouched; formatHash inverts parseHash", () => {
  const hash = withState("#bn_stats&p.bn_stats.run=a&p.bn_stats.layer=x&p.bn_stats.step=3", { run: "a", view: "overview", layer: null, step: undefined });
  assert.equal(hash, "#bn_stats&p.bn_stats.run=a&p.bn_stats.view=overview");
  assert.equal(formatHash(parseHash(hash)), hash);
  assert.deepEqual(stateOf("#bn_stats&p.other.run=z&p.bn_stats.bogus=1"), {});
});
