import { test } from "node:test";
import assert from "node:assert/strict";
import { lossSeries, lossLabel } from "../src/model/loss.js";

const s = (key, source, split, name, steps = [1, 2]) => ({ key, source, split, name, steps, values: steps.map(() => 1) });

test("lossSeries: series with 'loss' in the name (any case) and points", () => {
  const all = [
    s("train/loss", "bn_stats", "train", "loss"),
    s("train/accuracy", "bn_stats", "train", "accuracy"),
    s("keras:keras/train:batch_loss", "keras run keras/train", "train", "batch_loss"),
    s("scalars:Loss/train", "run's own scalars", "train", "Loss/train"),
    s("scalars:loss/val", "run's own scalars", "val", "loss/val", []),
  ];
  assert.deepEqual(lossSeries(all).map((x) => x.key), ["train/loss", "keras:keras/train:batch_loss", "scalars:Loss/train"]);
  assert.deepEqual(lossSeries(undefined), []);
});

test("lossLabel: the key for the run's metrics, the tag and its source otherwise", () => {
  assert.equal(lossLabel(s("train/loss", "bn_stats", "train", "loss")), "train/loss");
  assert.equal(lossLabel(s("keras:keras/validation:epoch_loss", "keras run keras/validation", "val", "epoch_loss")),
    "epoch_loss (Keras keras/validation)");
  assert.equal(lossLabel(s("scalars:loss/train", "run's own scalars", "train", "loss/train")), "loss/train (run's own scalars)");
});
