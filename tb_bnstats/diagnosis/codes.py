"""The diagnosis' vocabulary: failure scenarios, finding codes with their
fixes, severities and every threshold of the rules, with its reasoning.

Scenarios (what goes wrong; docs/diagnostics.md tells each story, and the
docs site's Diagnostics reference, docs/codes.md, is generated from this
module): see :data:`SCENARIOS`. Codes are stable: a code's meaning never
changes, new checks get new codes.
"""

import dataclasses

from tb_bnstats import quantities

SEVERITIES = ("error", "warning", "info")

# Every threshold of the rules, in one place, with its reasoning.
THRESHOLDS = {
    # 1 - m**t >= 0.95: less than 5% of the weight left on the initial (0, 1).
    "converged": quantities.CONVERGED,
    # Median over the last max(10, 10%) logged steps: one noisy step is not a finding.
    "tail_points": 10,
    "tail_fraction": 0.1,
    # "Far apart": the batch mean a quarter of a train-time std from the moving
    # mean on the median channel, or the variances 28% apart (|log| > 0.25).
    # Healthy runs (momentum 0.9, batch 32, converged) stay below 0.19 / 0.17
    # on the scenario suite; S1/S2 runs are at 0.19-0.58 / 0.32-0.36.
    "gap_mean": 0.25,
    "gap_log_var": 0.25,
    # S2: so many logged steps without one update is not a warm-up.
    "not_updated_min_points": 5,
    # S4: window 1/(1-m) < 2 batches: inference uses essentially the last batch.
    "low_momentum": 0.5,
    # Rules on the converged part need this many converged steps.
    "converged_min_points": 20,
    # S5: log((var_B+eps)/(var_R+eps)) > 0.3 is a ratio > 1.35; dropout 0.5
    # gives up to log 2 = 0.69. Persistent: at >= 80% of the converged steps
    # above half of it.
    "variance_shift": 0.3,
    "variance_shift_fraction": 0.8,
    # S6: per-channel sampling noise. With n values per channel the median
    # |mu_B - mu| / sigma_B is ~0.67/sqrt(n) and the median |log var_B/var|
    # ~0.67*sqrt(2/(n-1)): 0.25 / 0.35 are n below ~8. Measured: batch 32
    # dense <= 0.18 / 0.16, batch 4 dense 0.44 / 0.48-0.54. A systematic
    # shift (EMA lag of a variance that is still falling) is not noise: the
    # signed channel mean then carries most of it (|signed| >= 0.8 |abs|).
    "noise_mean": 0.25,
    "noise_log_var": 0.35,
    "systematic_fraction": 0.8,
    # S6, each layer's own noise (where the log says its batch size N,
    # LayerInfo.batch_samples): sampling alone puts the batch mean of a
    # channel N(0, sigma^2 / n_eff) from the true mean, and a converged
    # exponential average with weight p on the new batch is itself N(0,
    # p / (2 - p) sigma^2 / n_eff) from it, so the median over channels of
    # |mu_B - mu_R| / sqrt(var_B + eps) is 0.674 sqrt(2 / ((2 - p) n_eff))
    # sqrt(var / (var + eps)), and the median |log var_B / var_R| 0.674
    # sqrt(2 / (n_eff - 1)) sqrt(2 / (2 - p)) (chi-square). Neighbouring
    # values of a feature map are correlated, so n_eff lies between N (one
    # value per example) and n (values per channel): N gives the most noise
    # sampling can make. A gap above noise_explained x that is not sampling
    # noise (a median of >= 8 channels over >= 10 steps varies by less than
    # 25% around its expectation; 1.6 leaves room for heavier tails): it is
    # left to the other rules (lagging averages, drifting batches). Measured:
    # batch 4 dense 0.44 against a floor of 0.35 (BN005); batch 32, global
    # pooling then BatchNorm1d (PyTorch, eps 1e-5) 0.24-0.39 against 0.12
    # (the averages lag a variance that falls 2.7x: not noise). Such a gap
    # goes to BN006 when it is not one systematic shift of the variance
    # (systematic_fraction, beyond noise_explained x its floor): the batches
    # then differ from the average, and from each other, in changing
    # directions, which independent draws of the data cannot do at that
    # batch size. Sorted digits: 0.55-0.62 std against floors of 0.09-0.12
    # (4.5-7x, the variance gap not systematic), in both frameworks; the
    # pooled net above lags a variance in one direction (|signed| = 0.97-1.05
    # of |log var ratio| ~1.0): left alone.
    "noise_explained": 1.6,
    # S7 where the batch size is not logged (older logs, TF1 graphs, several
    # TensorFlow replicas), and as a second sign where it is: neighbouring
    # batches alike (sorted data: runs of one class) give a
    # lag-1 autocorrelation of batch_mean - moving_mean well above 0, also
    # once a slow trend is taken out (detrended over block_window steps:
    # learning moves the batch means too, smoothly); independent (shuffled)
    # batches give -0.14. Measured on layers with median mean_gap/p50 >
    # 0.15: sorted digits 0.50-0.53, healthy -0.33..0.11 (raw, not
    # detrended: up to 0.87 in early training), batch-4 noise -0.22. Known
    # limit: Adam at lr 1e-2 on the small conv net makes its dense BN's batch
    # means wander 0.3 std in short runs (0.60): flagged.
    "drift_autocorrelation": 0.4,
    # S7, the subtler form: with momentum 0.9 the average follows class-sorted
    # batches closely, so the gaps stay small (median mean_gap/p50 0.04-0.12
    # on the demo's unshuffled conv run) but come in runs: after each change
    # of class the mean and the variance gap both stay up for a few steps.
    # Detrended by a centered 9-step moving average (longer than the 4-6
    # batches of one class in sorted digits, shorter than learning trends),
    # the smaller of the two lag-1 autocorrelations is ~-0.14 for independent
    # batches. Measured, median over a run's layers: 27 healthy runs (dense
    # and conv, seeds 0-5, lr 3e-4..3e-2, batch 16-64, 1-4 epochs, early
    # training included) -0.37..-0.02, tiny batches -0.20/-0.13, the demo's
    # unshuffled run +0.33 (its layers 0.30-0.45). The signal is pooled over
    # layers (one layer alone reached 0.26 in a healthy run): sorted data
    # shift every layer's batches at once.
    "block_window": 9,
    "block_autocorrelation": 0.2,
    # S5 on a live model (population.diagnose_model): training-mode vs
    # inference-mode population variance, log ratio > 0.3 (1.35x).
    "population_variance_shift": 0.3,
    # S8 (BN009): the probe batch (held-out data, training-mode pass) against
    # the converged moving statistics, median over the converged probe points.
    # Same distribution: like a big training batch, at most 0.10 / 0.15
    # (healthy dense, probe of 256 held-out digits); eval data x*1.5+0.5:
    # 0.47-0.76 / 0.86-0.96 on the first layer (later layers in training mode
    # normalize the shift away: 0.02 / 0.07).
    "probe_shift_mean": 0.3,
    "probe_shift_log_var": 0.4,
    # S9 (BN010), a frozen layer: its statistics against the batches it sees,
    # with the "far" test of gap_mean / gap_log_var (the batches of a healthy
    # converged layer stay below it) for a finding at all. It "matters"
    # (warning) when recalibrating the frozen layers on the probe batch
    # raises inference-mode probe accuracy by 2 points or more (measured at
    # the end of fit, metric split probe_recalibrated), or when the shift is
    # large: 0.4 std on the median channel, or variances 3x apart (|log| >
    # 1.1). Measured on digits, a conv base pretrained on classes 0-4 with a
    # new head on 5-9: 0.17-0.22 std, 1.4-2.1x; the same new data as
    # x*1.5+0.5: 0.52-0.59 std, 1.5-1.8x (the variances do not tell them
    # apart, the means do). Recalibrating after the head has trained gained
    # nothing in either (98.0% -> 97.7% / 95.3%): the head adapts.
    "frozen_accuracy_cost": 0.02,
    "frozen_shift_mean": 0.4,
    "frozen_shift_log_var": 1.1,
    # BN012: the probe's training-mode accuracy this far (3 points: 8 of the
    # default probe's 256 samples) above its inference-mode accuracy on the
    # same batch, at the last probe, with no warning or error that explains
    # it. Where BN layers' outputs differ between the modes by 25% or more
    # (probe_output_drift), those layers make the gap: their moving averages
    # lag weights that still change, below the per-layer thresholds above.
    # (Converged healthy layers differ by 0.05-0.15 on a 256-sample probe.)
    # Measured on the small digits conv net at lr 3e-3 (momentum 0.9,
    # converged, gaps 0.01-0.19 std): 88.7% vs 72.7% on the first 256
    # training samples, the dense BN's output 65% off, and recalibrating
    # raised inference-mode accuracy on all digits from 74.8% to 88.6%.
    "unexplained_accuracy_gap": 0.03,
    # BN012, the probe's own noise: the two accuracies are each a share of n
    # probe samples (logged as probe_train/samples), binomial with standard
    # deviation sqrt(p (1 - p) / n) at accuracy p; their difference, taken
    # as two independent measurements (an upper bound: they are on the same
    # samples, which correlates them), has standard error sqrt(2 p (1 - p) /
    # n), p their mean. The gap must pass 3 of those (a one-sided chance of
    # 0.13% for a gap that is sampling alone, each run tested once, at its
    # last probe): at p = 0.95, n = 256 that is 5.8 points, at p = 0.8 10.6
    # points, and never less than unexplained_accuracy_gap. Measured, Keras
    # healthy conv net (Adam 1e-3, 12 epochs, momentum 0.99), seeds 0-4 at
    # the last probe: 0.4-6.2 points at p 0.92-0.96 (at most 2.6 standard
    # errors); the lagging averages of s11 (lr 3e-3): 16 points, 4.5.
    "accuracy_gap_noise": 3.0,
    # Logs without probe_train/samples (older logs): the most a probe uses.
    "probe_samples_unknown": 256,
    "mode_drift": 0.25,
    # Several replicas (S11-S13). Unsynchronized BN normalizes each replica's slice with its own moments:
    # BN013 is S6's test (noise_mean / noise_log_var) on each replica's moments against the global
    # batch's (replica_mean_gap/p50, replica_abs_log_var_ratio/p50), median over the last steps.
    # BN014: a moving variance that averages per-replica variances misses the spread between replicas:
    # the global batch's variance above the mean replica variance by more than 10% (log 0.1), and above
    # the converged moving variance as well (log_var_ratio/mean > 0.1). For independent slices of n
    # values each the deficit is ~1/n: 0.06 at n = 16, 0.25 at n = 4; sorted or grouped data make it
    # larger. BN015: replicas that keep their own moving statistics drifted apart: moving means 0.15
    # std apart on the median channel, or some channel's variances 1.5x apart (independent slices of
    # 16 at momentum 0.99 stay near 0.03 std).
    "replica_var_deficit": 0.1,
    "replica_moving_spread": 0.15,
    "replica_moving_var_ratio": 1.5,
}

# The failure scenarios the diagnosis tells apart (a healthy run raises nothing).
SCENARIOS = {
    "S1": "momentum too high for the number of steps: the moving averages have not converged",
    "S2": "moving statistics never updated (layer called with training=False, or frozen, while training)",
    "S3": "moving statistics lost on save/restore (non-trainable variables not checkpointed)",
    "S4": "decay near 0: the moving statistics are just the last batch",
    "S5": "dropout (or noise) before BN: training batches are wider than what inference sees (variance shift)",
    "S6": "tiny batches: batch moments too noisy",
    "S7": "unshuffled or sorted data: consecutive batches alike, the averages describe the last ones",
    "S8": "train and eval data from different distributions",
    "S9": "pretrained statistics on new data (transfer learning): a frozen or fine-tuned layer normalizes with "
          "another dataset's statistics",
    "S10": "training=False written in a Keras functional model, overridden by fit: a layer meant to stay in "
           "inference mode trains",
    "S11": "several replicas, unsynchronized BN: each replica normalizes with the moments of its own small "
           "slice of the batch",
    "S12": "several replicas, unsynchronized BN: the moving variance averages per-replica variances and misses "
           "the spread between replicas (biased low)",
    "S13": "several replicas keep their own moving statistics and they drift apart; the checkpoint holds "
           "replica 0's",
    "S14": "scale and offset frozen while the layer still trains: the moving statistics follow the new data "
           "(PyTorch's requires_grad=False on a BN module left in train())",
    "S15": "an averaged copy of the model (SWA, EMA) evaluated with statistics that do not belong to its weights",
}


@dataclasses.dataclass(frozen=True)
class Code:
    """One finding code: ``scenario`` (a key of :data:`SCENARIOS`, "-" for
    none), default ``severity``, a one-line ``title`` and the ``fix``."""

    code: str
    scenario: str
    severity: str
    title: str
    fix: str


CODES = {
    "BN001": Code("BN001", "S1", "error", "momentum too high for the number of steps",
                   "lower the momentum (0.9 for runs of a few hundred steps), train longer, or call "
                   "tb_bnstats.recalibrate(model, data) after training"),
    "BN002": Code("BN002", "S2", "error", "moving statistics never updated",
                   "call the layer with training=None (let Keras pass the phase); to freeze it on purpose, set "
                   "trainable=False on it instead"),
    "BN003": Code("BN003", "S4", "warning", "momentum near 0: the moving statistics are the last batch",
                   "use momentum 0.9-0.99 (Keras' momentum is 1 - PyTorch's: PyTorch's 0.1 is Keras' 0.9)"),
    "BN004": Code("BN004", "S5", "warning", "variance shift: batches wider than what inference normalizes with",
                   "move Dropout after the BN layers (or before the last layer only), or "
                   "tb_bnstats.recalibrate(model, data) (other layers in inference mode)"),
    "BN005": Code("BN005", "S6", "warning", "noisy batch moments (tiny batches)",
                   "use batches of 16+ samples per replica (or GroupNorm / BatchRenorm / synchronized BN), "
                   "then tb_bnstats.recalibrate(model, data)"),
    "BN006": Code("BN006", "S7", "warning", "batch moments drift within an epoch (unshuffled or sorted data)",
                   "shuffle the training data (fit(shuffle=True), Dataset.shuffle with a buffer larger than "
                   "a class), then tb_bnstats.recalibrate(model, data)"),
    "BN008": Code("BN008", "S3", "error", "moving statistics lost on save/restore",
                   "save and restore the non-trainable variables too: model.save / save_weights include them "
                   "(load_weights restores them), with tf.train.Checkpoint track the model, not "
                   "model.trainable_variables; or call tb_bnstats.recalibrate(model, data) after restoring"),
    "BN009": Code("BN009", "S8", "warning",
                  "eval data differ from the training data (probe batch far from the moving statistics)",
                   "check the eval pipeline's preprocessing and normalization against the training pipeline's "
                   "(same scaling, same mean/std, same resizing); if the shift is real, recalibrate on data like "
                   "the eval data: tb_bnstats.recalibrate(model, eval_like_data)"),
    "BN010": Code("BN010", "S9", "warning", "frozen or pretrained statistics differ from the new data (domain shift)",
                   "recalibrate the statistics on the new data -- tb_bnstats.recalibrate(model, data, "
                   "include_frozen=True) for frozen layers -- before training the new head or fine-tuning, then "
                   "train on; or unfreeze the BN layers so that they follow the new data"),
    "BN011": Code("BN011", "S10", "warning", "training=False overridden by fit: the layer trains",
                   "set trainable=False on the layer or on the base model (a BatchNormalization layer with "
                   "trainable=False always normalizes with its moving statistics), or call it from a custom "
                   "layer whose call passes training=False itself"),
    "BN012": Code("BN012", "-", "warning", "a train/inference accuracy gap the other findings do not explain",
                   "recalibrate after training: tb_bnstats.recalibrate(model, data) (the moving averages lag "
                   "weights that still change; a lower final learning rate helps too)"),
    "BN013": Code("BN013", "S11", "warning", "per-replica batches too small for unsynchronized BN",
                   "synchronize BN across replicas (BatchNormalization(synchronized=True) under a tf.distribute "
                   "strategy; keras.distribution.DataParallel on JAX normalizes with the global batch already), "
                   "or use 16+ samples per replica; then tb_bnstats.recalibrate(model, data)"),
    "BN014": Code("BN014", "S12", "warning", "moving variance biased low by unsynchronized replicas",
                   "BatchNormalization(synchronized=True), or recalibrate on the global batch after training: "
                   "tb_bnstats.recalibrate(model, data) (on one replica, with batches as large as the global "
                   "batch)"),
    "BN015": Code("BN015", "S13", "warning", "replicas' moving statistics differ",
                   "BatchNormalization(synchronized=True) keeps every replica's statistics equal; otherwise "
                   "average them across replicas before evaluating and saving, or tb_bnstats.recalibrate(model, "
                   "data) after training: the checkpoint holds replica 0's"),
    "BN016": Code("BN016", "S14", "warning", "frozen scale and offset, moving statistics still updated",
                   "put the layer in inference mode while training, or keep its statistics fixed by construction; "
                   "nothing to do if the statistics were meant to follow the new data"),
    "BN017": Code("BN017", "S15", "warning", "an averaged model's statistics do not belong to its weights",
                   "recompute the averaged model's statistics with its own weights (call "
                   "tb_bnstats.recalibrate(model, data) on the averaged model), or average the statistics along "
                   "with the weights"),
    "BN007": Code("BN007", "-", "error", "NaN or Inf in the batch or moving moments",
                   "find the first bad step (inputs, learning rate, float16 overflow); the moving statistics "
                   "are NaN from then on: recalibrate or restore a checkpoint"),
}
