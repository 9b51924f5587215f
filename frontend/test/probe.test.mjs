import { test } from "node:test";
import assert from "node:assert/strict";
import { probePairs, latestGap } from "../src/model/probe.js";

const s = (split, name, steps, values, source = "bn_stats") => ({ split, name, steps, values, source, key: `${split}/${name}` });

test("probePairs: metrics logged in both probe splits, accuracy first, then loss", () => {
  const pairs = probePairs([
    s("train", "loss", [1], [1]),
    s("probe_inference", "accuracy", [28, 56], [0.5, 0.7]),
    s("probe_train", "accuracy", [28, 56], [0.8, 0.9]),
    s("probe_train", "loss", [28], [0.4]),
    s("probe_inference", "loss", [28], [0.9]),
    s("probe_train", "auc", [28], [0.9]), // no inference counterpart
    s("probe_inference", "x", [], []),
    s("probe_train", "x", [], []),
  ]);
  assert.deepEqual(pairs.map((p) => p.name), ["accuracy", "loss"]);
  assert.equal(pairs[0].train.key, "probe_train/accuracy");
  assert.equal(pairs[0].inference.key, "probe_inference/accuracy");
  assert.equal(pairs[0].recalibrated, null);
  const withRecalibrated = probePairs([s("probe_train", "accuracy", [28], [0.9]), s("probe_inference", "accuracy", [28], [0.7]),
    s("probe_recalibrated", "accuracy", [28], [0.8])]);
  assert.equal(withRecalibrated[0].recalibrated.key, "probe_recalibrated/accuracy");
  assert.deepEqual(probePairs([]), []);
  assert.deepEqual(probePairs(null), []);
});

test("latestGap: the last shared step, train minus inference", () => {
  const pair = { train: s("probe_train", "accuracy", [28, 56, 84], [0.8, 0.9, null]),
    inference: s("probe_inference", "accuracy", [28, 56], [0.5, 0.75]) };
  const g = latestGap(pair);
  assert.equal(g.step, 56);
  assert.equal(g.train, 0.9);
  assert.equal(g.inference, 0.75);
  assert.ok(Math.abs(g.gap - 0.15) < 1e-12);
  assert.equal(latestGap({ train: s("a", "b", [1], [1]), inference: s("c", "d", [2], [1]) }), null);
});
