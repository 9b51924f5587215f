// The loss chart's series (pure): which /loss series it draws and their legend labels.
// A series' `source` is "bn_stats" (the run's own metrics, metric/<split>/<name>),
// "keras run <run>" (Keras' TensorBoard callback beside the run) or
// "run's own scalars" (scalars another writer, e.g. torch.utils.tensorboard's
// SummaryWriter, wrote into the run's directory).

/** The series of /loss the loss chart draws: a name with "loss" in it, and points. */
export function lossSeries(series) {
  return (series || []).filter((s) => /loss/i.test(s.name) && s.steps.length);
}

/** Its legend label: "train/loss" (bn_stats), "batch_loss (Keras keras/train)", "loss/train (run's own scalars)". */
export function lossLabel(s) {
  if (s.source === "bn_stats") return String(s.key);
  return `${s.name} (${String(s.source).replace(/^keras run /, "Keras ")})`;
}
