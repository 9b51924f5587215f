"""S7 (BN006), the form with small gaps: batches in runs of alike ones, seen
as a detrended autocorrelation of the gap series pooled over the run's
layers. The real runs (scenario suite, demo) are in test_diagnosis.py and
test_demo.py; here the quantity against numpy and the rule on written logs."""

import numpy as np

import tb_bnstats
from tb_bnstats import diagnosis, quantities
from tb_bnstats.write import summary


def _by_hand(v, w):
    """Centered moving average by explicit loops, ends padded with end values."""
    n, half = len(v), w // 2
    padded = [v[0]] * half + list(v) + [v[-1]] * (w - 1 - half)
    r = np.array([v[i] - sum(padded[i:i + w]) / w for i in range(n)])
    d = r - r.mean()
    return float(sum(d[i] * d[i + 1] for i in range(n - 1)) / sum(d * d))


def test_detrended_autocorrelation_against_loops_and_its_white_noise_value():
    rng = np.random.default_rng(0)
    v = rng.normal(size=300)
    assert abs(quantities.detrended_autocorrelation(v, 9) - _by_hand(v, 9)) < 1e-12
    noise = rng.normal(size=20000)
    expected = -(9 + 1) / (9 * 8)  # -0.139
    assert abs(quantities.detrended_autocorrelation(noise, 9) - expected) < 0.03
    # A trend (learning) does not change it; runs of 5 alike values do.
    trend = np.linspace(0, 50, noise.size) + noise
    assert abs(quantities.detrended_autocorrelation(trend, 9) - expected) < 0.03
    blocks = np.repeat(rng.normal(size=noise.size // 5), 5) + 0.2 * noise
    assert quantities.detrended_autocorrelation(blocks, 9) > 0.4
    assert np.isnan(quantities.detrended_autocorrelation(noise[:8], 9))


def _write_run(path, sorted_classes, seed=0):
    """Two conv-like BN layers of 16 channels (512 values per channel per
    batch), momentum 0.9, 150 steps of batches drawn from 10 classes (class
    means ~0.3 std apart, variances up to 1.2x apart): in runs of 5 batches
    per class (sorted) or mixed classes (shuffled), plus a slow drift of all
    means (learning)."""
    rng = np.random.default_rng(seed)
    n, c = 512, 16
    class_means = rng.normal(0, 0.3, (10, 1)) + rng.normal(0, 0.03, (10, c))  # classes shift all channels
    with summary.Writer(path) as w:
        for depth, name in enumerate(("bn_a", "bn_b")):
            mm, mv = np.zeros(c), np.ones(c)
            for step in range(1, 151):
                if sorted_classes:
                    labels = np.full(n, ((step - 1) // 5) % 10)
                else:
                    labels = rng.integers(0, 10, n)
                x = class_means[labels] + rng.normal(0, 1.0, (n, c)) * (1 + 0.1 * (labels[:, None] % 3))
                x = x + 0.01 * step
                bm, bv = x.mean(0), x.var(0)
                mm, mv = 0.9 * mm + 0.1 * bm, 0.9 * mv + 0.1 * bv
                w.layer_moments(name, step, batch_mean=bm, batch_var=bv, moving_mean=mm, moving_var=mv,
                                updates=step, momentum=0.9, epsilon=1e-3, depth=depth)


def test_block_rule_fires_on_sorted_batches_with_small_gaps_only(tmp_path):
    _write_run(tmp_path / "sorted", sorted_classes=True)
    _write_run(tmp_path / "shuffled", sorted_classes=False)
    runs = tb_bnstats.load(tmp_path)
    found = {run: [(f.code, f.layers) for f in tb_bnstats.diagnose(runs, run=run)] for run in runs}
    assert found == {"sorted": [("BN006", ["bn_a", "bn_b"])], "shuffled": []}
    f = tb_bnstats.diagnose(runs, run="sorted")[0]
    for layer in ("bn_a", "bn_b"):
        ev = f.evidence[layer]
        # The small-gap form: the gap alone would not say so.
        assert ev["mean_gap_p50"] < diagnosis.THRESHOLDS["noise_mean"]
        assert ev["block_autocorrelation"] >= diagnosis.THRESHOLDS["block_autocorrelation"]
    assert "several steps in a row" in f.message and "shuffle the training data" in f.message
