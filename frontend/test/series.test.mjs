import { test } from "node:test";
import assert from "node:assert/strict";
import { maxPool, alignSeries } from "../src/model/series.js";

test("maxPool takes the max of each group and ignores nulls", () => {
  assert.deepEqual(maxPool([1, 5, 2, null, 3, 0], 3), [5, 2, 3]);
  assert.deepEqual(maxPool([null, null], 1), [null]);
  assert.deepEqual(maxPool([1, 2], 5), [1, 2]);
});

test("alignSeries joins on the union of x", () => {
  const out = alignSeries([{ x: [1, 3], y: [10, 30] }, { x: [2, 3], y: [20, 33] }]);
  assert.deepEqual(out, [[1, 2, 3], [10, null, 30], [null, 20, 33]]);
});

test("decadesSpanned: log10(max / min) of the positive finite values", async () => {
  const { decadesSpanned } = await import("../src/model/series.js");
  assert.equal(decadesSpanned([[0.01, null, 1], [NaN, 0, -3]]), 2);
  assert.equal(decadesSpanned([[1, 1]]), 0);
  assert.equal(decadesSpanned([]), 0);
});
