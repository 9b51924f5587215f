import { test } from "node:test";
import assert from "node:assert/strict";
import { minMaxDownsample, maxPool, alignSeries } from "../src/model/series.js";

function lcg(seed) {
  let s = seed >>> 0;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32);
}

test("short series are returned as they are", () => {
  assert.deepEqual(minMaxDownsample([1, 2, 3], [4, 5, 6], 10), { x: [1, 2, 3], y: [4, 5, 6] });
});

test("keeps a one-point spike, the extremes, the first and last points", () => {
  const n = 10000;
  const xs = Array.from({ length: n }, (_, i) => i + 1);
  const rnd = lcg(1);
  const ys = xs.map(() => rnd());
  ys[4321] = 50;
  ys[777] = -3;
  const { x, y } = minMaxDownsample(xs, ys, 100);
  assert.ok(x.length <= 102, `${x.length} points`);
  assert.ok(x.includes(4322) && y.includes(50));
  assert.ok(y.includes(-3));
  assert.equal(x[0], 1);
  assert.equal(x[x.length - 1], n);
  for (let i = 1; i < x.length; i++) assert.ok(x[i] > x[i - 1]);
});

test("random series: max and min always survive", () => {
  const rnd = lcg(7);
  for (let trial = 0; trial < 50; trial++) {
    const n = 3 + Math.floor(rnd() * 500);
    let step = 0;
    const xs = Array.from({ length: n }, () => (step += 1 + Math.floor(rnd() * 5)));
    const ys = xs.map(() => (rnd() < 0.05 ? null : rnd() * 100 - 50));
    const points = 2 + Math.floor(rnd() * 40);
    const { y } = minMaxDownsample(xs, ys, points);
    const finite = ys.filter((v) => v !== null);
    const kept = y.filter((v) => v !== null);
    if (finite.length) {
      assert.equal(Math.max(...kept), Math.max(...finite));
      assert.equal(Math.min(...kept), Math.min(...finite));
    }
  }
});

test("maxPool takes the max of each group and ignores nulls", () => {
  assert.deepEqual(maxPool([1, 5, 2, null, 3, 0], 3), [5, 2, 3]);
  assert.deepEqual(maxPool([null, null], 1), [null]);
  assert.deepEqual(maxPool([1, 2], 5), [1, 2]);
});

test("alignSeries joins on the union of x", () => {
  const out = alignSeries([{ x: [1, 3], y: [10, 30] }, { x: [2, 3], y: [20, 33] }]);
  assert.deepEqual(out, [[1, 2, 3], [10, null, 30], [null, 20, 33]]);
});
