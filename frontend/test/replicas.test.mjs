import { test } from "node:test";
import assert from "node:assert/strict";
import { replicaGaps, replicaSummary } from "../src/model/replicas.js";

const payload = {
  replicas: 2, channels: 2,
  rows: { batch_mean: [[0, 1], [2, 1]], batch_var: [[1, 4], [1, 1]], moving_mean: [[null, null], [null, null]], moving_var: [[null, null], [null, null]] },
  global: { batch_mean: [1, 1], batch_var: [2, 2.5] },
};

test("replica gaps against the global batch, per replica and channel", () => {
  const g = replicaGaps(payload, 0);
  assert.deepEqual(g.mean.map((r) => r.map((x) => +x.toFixed(4))), [[0.7071, 0], [0.7071, 0]]);
  assert.equal(+g.logVar[0][1].toFixed(4), +Math.log(4 / 2.5).toFixed(4));
  assert.equal(g.moving, null); // shared moving statistics: nothing per replica
});

test("own moving statistics against replica 0's; the replicas' average without a global snapshot", () => {
  const own = { ...payload, global: {}, rows: { ...payload.rows, moving_mean: [[0, 0], [3, 0]], moving_var: [[9, 1], [9, 1]] } };
  const g = replicaGaps(own, 0);
  assert.deepEqual(g.moving, [[0, 0], [1, 0]]);
  assert.deepEqual(g.mean[0], [1, 0]); // against the average of the replicas' means, (0+2)/2 = 1
});

test("the run's replicas in words", () => {
  assert.equal(replicaSummary([{ replicas: 1 }]), null);
  const s = replicaSummary([{ replicas: 4, synchronized: false, moving_per_replica: true }, { replicas: 4, synchronized: false }]);
  assert.equal(s.text, "4 replicas · BN not synchronized · moving statistics per replica (replica 0's saved)");
  assert.equal(replicaSummary([{ replicas: 2, synchronized: true }]).text, "2 replicas · BN synchronized · moving statistics shared");
});
