import { test } from "node:test";
import assert from "node:assert/strict";
import { sortLayers } from "../src/model/layersort.js";

const layers = [
  { name: "a", depth: 0, latest: { "mean_gap/max": 0.1, convergence: 0.99 } },
  { name: "b", depth: 1, latest: { "mean_gap/max": 2.5, convergence: 0.5 } },
  { name: "c", depth: 2, frozen: true, latest: { "mean_gap/max": 0.7, convergence: 0 } },
  { name: "d", depth: 3, latest: {} },
];
const names = (ls) => ls.map((l) => l.name);

test("worst first by a column; reversed on request; unknown values last; depth breaks ties", () => {
  assert.deepEqual(names(sortLayers(layers, "mean_gap")), ["b", "c", "a", "d"]);
  assert.deepEqual(names(sortLayers(layers, "mean_gap", true)), ["a", "c", "b", "d"]);
  assert.deepEqual(names(sortLayers(layers, "convergence")), ["b", "a", "c", "d"]); // frozen: nothing to converge
  assert.deepEqual(names(sortLayers(layers)), ["a", "b", "c", "d"]);
  assert.deepEqual(names(sortLayers(layers, "bogus")), ["a", "b", "c", "d"]);
  assert.deepEqual(names(layers), ["a", "b", "c", "d"]); // not in place
});
