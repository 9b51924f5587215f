import { test } from "node:test";
import assert from "node:assert/strict";
import { smooth } from "../src/model/smoothing.js";

test("weight 0 is the identity", () => {
  assert.deepEqual(smooth([1, 2, 3], 0), [1, 2, 3]);
});

test("debiased EMA: a constant stays constant from the first point", () => {
  for (const v of smooth([5, 5, 5, 5], 0.9)) assert.ok(Math.abs(v - 5) < 1e-12);
});

test("matches the debiased EMA formula", () => {
  const xs = [1, 3, 2, 8];
  const w = 0.6;
  let last = 0;
  const expected = xs.map((x, i) => {
    last = last * w + (1 - w) * x;
    return last / (1 - w ** (i + 1));
  });
  smooth(xs, w).forEach((v, i) => assert.ok(Math.abs(v - expected[i]) < 1e-12));
});

test("nulls and non-finite values stay null and are skipped", () => {
  const out = smooth([1, null, NaN, 1, Infinity], 0.5);
  assert.equal(out[1], null);
  assert.equal(out[2], null);
  assert.equal(out[4], null);
  assert.ok(Math.abs(out[3] - 1) < 1e-12);
});

test("weight is clamped below 1", () => {
  const out = smooth([1, 2], 1.5);
  assert.ok(out.every(Number.isFinite));
});
