import { test } from "node:test";
import assert from "node:assert/strict";
import { momentumFact, momentumLabel, momentumTitle, momentumPhrase, windowFormula, convergenceFormula, warmupEnd } from "../src/model/momentum.js";

// Layer objects as /runs, /overview and /series' info give them (tb_bnstats.plugin.data.derived).
const pytorch = { framework: "pytorch", momentum: 0.9, momentum_label: "momentum=0.1",
  momentum_convention: "PyTorch: the weight of the new batch" };
const keras = { framework: "keras", momentum: 0.99, momentum_label: "momentum=0.99",
  momentum_convention: "Keras: the weight kept on the old average" };
// A server without the fields: only the stored number (Keras' convention).
const old = { framework: "keras", momentum: 0.99 };

test("momentumLabel: the server's label in the layer's convention, the stored number without one", () => {
  assert.equal(momentumLabel(pytorch), "momentum=0.1");
  assert.equal(momentumLabel(keras), "momentum=0.99");
  assert.equal(momentumLabel(old), "0.99");
  assert.equal(momentumLabel({ momentum: null }), "null");
  assert.equal(momentumLabel({ momentum: null, momentum_label: "momentum=None" }), "momentum=None");
  assert.equal(momentumLabel({ ...old, momentum_label: "" }), "0.99");
  assert.equal(momentumLabel(null), "–");
});

test("momentumTitle: the convention; for PyTorch also the logged number", () => {
  assert.equal(momentumTitle(pytorch), "PyTorch: the weight of the new batch (logged as 0.9, Keras' convention)");
  assert.equal(momentumTitle({ ...pytorch, momentum: 0.8999999761581421 }),
    "PyTorch: the weight of the new batch (logged as 0.9, Keras' convention)");
  assert.equal(momentumTitle({ ...pytorch, momentum: null, momentum_label: "momentum=None" }), "PyTorch: the weight of the new batch");
  assert.equal(momentumTitle(keras), "Keras: the weight kept on the old average");
  assert.equal(momentumTitle(old), null);
  assert.equal(momentumTitle(undefined), null);
});

test("momentumPhrase: the label in a sentence, the old 'momentum 0.99' without one", () => {
  assert.equal(momentumPhrase(pytorch), "momentum=0.1");
  assert.equal(momentumPhrase(keras), "momentum=0.99");
  assert.equal(momentumPhrase(old), "momentum 0.99");
});

test("momentumFact: the label alone (it names itself), the old key and number without one", () => {
  assert.deepEqual(momentumFact(pytorch), [null, "momentum=0.1"]);
  assert.deepEqual(momentumFact(keras), [null, "momentum=0.99"]);
  assert.deepEqual(momentumFact(old), ["momentum", "0.99"]);
});

test("formulas in the layer's convention", () => {
  assert.equal(windowFormula(pytorch), "1/momentum");
  assert.equal(windowFormula(keras), "1/(1−m)");
  assert.equal(windowFormula(old), "1/(1−m)");
  assert.equal(convergenceFormula(pytorch), "1 − (1 − momentum)^updates");
  assert.equal(convergenceFormula(keras), "1 − momentum^updates");
});

test("warmupEnd: the step of 95% convergence, one update per step; frozen or unknown: null", () => {
  assert.equal(warmupEnd({ latest: { updates: 120 }, steps_to_95: 29, latest_step: 120 }), 29);
  assert.equal(warmupEnd({ latest: { updates: 100 }, steps_to_95: 29, latest_step: 150 }), 79); // resumed at 50
  assert.equal(warmupEnd({ latest: { updates: 84 }, steps_to_95: 299, latest_step: 84 }), 84); // not yet
  assert.equal(warmupEnd({ latest: { updates: 0 }, steps_to_95: 29, latest_step: 84, frozen: true }), null);
  assert.equal(warmupEnd({ latest: {}, steps_to_95: null, latest_step: 84 }), null);
});
