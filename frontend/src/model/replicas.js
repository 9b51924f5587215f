// Several replicas (devices or processes): what the /replicas route's per-replica moments say per
// replica and channel, and the run's one-line summary ("4 replicas, BN not synchronized").

/**
 * Per replica and channel, each replica's batch against the global batch's: ``mean`` |μr − μ| / √(σ² + ε)
 * and ``logVar`` |log((σ²r + ε) / (σ² + ε))| ([R][C]); with moving statistics of each replica's own,
 * ``moving`` |μRr − μR0| / √(σ²R0 + ε), each replica's moving mean against replica 0's (the saved one),
 * else null. ``payload``: the /replicas answer; the global moments are its ``global`` (the per-channel
 * snapshot's), or the replicas' plain average when it has none (equal slices).
 */
export function replicaGaps(payload, epsilon) {
  const { rows, replicas, channels } = payload;
  const avg = (m) => [...Array(channels).keys()].map((c) => m.reduce((a, r) => a + r[c], 0) / replicas);
  const mu = payload.global && payload.global.batch_mean ? payload.global.batch_mean : avg(rows.batch_mean);
  const v = payload.global && payload.global.batch_var ? payload.global.batch_var : avg(rows.batch_var);
  const cell = (f) => rows.batch_mean.map((_, r) => [...Array(channels).keys()].map((c) => {
    const x = f(r, c);
    return Number.isFinite(x) ? x : null;
  }));
  const own = rows.moving_mean.some((r) => r.some((x) => x !== null));
  return {
    mean: cell((r, c) => Math.abs(rows.batch_mean[r][c] - mu[c]) / Math.sqrt(v[c] + epsilon)),
    logVar: cell((r, c) => Math.abs(Math.log((rows.batch_var[r][c] + epsilon) / (v[c] + epsilon)))),
    moving: own ? cell((r, c) => Math.abs(rows.moving_mean[r][c] - rows.moving_mean[0][c]) / Math.sqrt(rows.moving_var[0][c] + epsilon)) : null,
  };
}

/**
 * The run's replicas in words, from its layers' descriptions (/runs): null on one replica, else
 * ``{replicas, text, title}``, e.g. "4 replicas · BN not synchronized · moving statistics per replica".
 */
export function replicaSummary(layers) {
  const many = (layers || []).filter((l) => (l.replicas || 1) > 1);
  if (!many.length) return null;
  const replicas = Math.max(...many.map((l) => l.replicas));
  const synced = many.filter((l) => l.synchronized).length;
  const sync = synced === many.length ? "BN synchronized" : synced === 0 ? "BN not synchronized" : `BN synchronized in ${synced} of ${many.length} layers`;
  const own = many.some((l) => l.moving_per_replica);
  return {
    replicas, synchronized: synced === many.length,
    text: `${replicas} replicas · ${sync} · moving statistics ${own ? "per replica (replica 0's saved)" : "shared"}`,
    title: synced === many.length
      ? "every replica normalizes with the global batch's moments"
      : "each replica normalizes with the moments of its own slice of the batch; the logged batch moments are the global batch's, pooled from the replicas'",
  };
}
