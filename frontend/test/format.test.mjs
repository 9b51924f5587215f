import { test } from "node:test";
import assert from "node:assert/strict";
import { fmtNum, fmtPct, fmtStep, layerLabels, query } from "../src/model/format.js";

test("layerLabels: the shared path prefix left out, long names cut in the middle", () => {
  assert.deepEqual(layerLabels(["sequential/batch_normalization", "sequential/batch_normalization_1"]),
    ["batch_normalization", "batch_normalization_1"]);
  const [a, b] = layerLabels(["densenet/conv5_block16_1_bn_long", "densenet/conv5_block16_2_bn_long"], 16);
  assert.equal(a, "conv5…_1_bn_long");
  assert.equal(b, "conv5…_2_bn_long");
  assert.deepEqual(layerLabels(["bn_a/x", "bn_b/x"]), ["bn_a/x", "bn_b/x"]); // prefix "bn_" is not a path component
  assert.deepEqual(layerLabels(["only/one"]), ["only/one"]);
});

test("fmtNum: significant digits, exponent for tiny and huge, dashes for missing", () => {
  assert.equal(fmtNum(0.634012), "0.634");
  assert.equal(fmtNum(1.2345678, 7), "1.234568");
  assert.equal(fmtNum(0), "0");
  assert.equal(fmtNum(-2.5), "-2.5");
  assert.equal(fmtNum(1e-5), "1e-5");
  assert.equal(fmtNum(2.5e-4), "2.5e-4");
  assert.equal(fmtNum(123456), "1.235e+5");
  assert.equal(fmtNum(null), "–");
  assert.equal(fmtNum(NaN), "–");
  assert.equal(fmtNum(Infinity), "∞");
  assert.equal(fmtNum(-Infinity), "-∞");
});

test("fmtPct", () => {
  assert.equal(fmtPct(0.634), "63.4%");
  assert.equal(fmtPct(1), "100.0%");
  assert.equal(fmtPct(0.99999), "99.9%"); // never rounds up to a false 100%
  assert.equal(fmtPct(null), "–");
});

test("fmtStep", () => {
  assert.equal(fmtStep(12), "12");
  assert.equal(fmtStep(9999), "9999");
  assert.equal(fmtStep(20000), "20k");
  assert.equal(fmtStep(15500), "15.5k");
  assert.equal(fmtStep(2500000), "2.5M");
  assert.equal(fmtStep(undefined), "–");
});

test("query encodes, repeats arrays and skips null", () => {
  assert.equal(query({ run: "a b&c", layer: "x/y", step: undefined, n: null }), "?run=a+b%26c&layer=x%2Fy");
  assert.equal(query({ run: ["r1", "r2"], layer: "l" }), "?run=r1&run=r2&layer=l");
  assert.equal(query({}), "");
});
