"""The math of DESIGN.md §3 against closed forms and independent numpy."""

import numpy as np
import pytest

from tb_bnstats import quantities
from tb_bnstats.format import metadata
from tb_bnstats.write import summary


def test_debias_recovers_true_variance_design_example():
    # DESIGN.md: true var 4, init 1, m 0.99, t 100 -> raw 2.90, debiased 4.00.
    m, t, init, true = 0.99, 100, 1.0, 4.0
    ema = init
    for _ in range(t):
        ema = m * ema + (1 - m) * true
    assert ema == pytest.approx(2.90, abs=0.005)
    assert quantities.debias(ema, init, m, t) == pytest.approx(4.0, rel=1e-9)


def test_convergence_and_windows():
    assert quantities.convergence(0.99, 100) == pytest.approx(1 - 0.366, abs=5e-4)
    assert quantities.convergence(0.99, 0) == 0.0
    assert quantities.effective_window(0.99) == pytest.approx(100.0)
    for m in (0.9, 0.99, 0.999):
        n = quantities.steps_to_converge(m, 0.95)
        assert 1 - m**n >= 0.95 > 1 - m ** (n - 1)
    assert [quantities.steps_to_converge(m, 0.95) for m in (0.9, 0.99, 0.999)] == [29, 299, 2995]


def _kl(m1, v1, m2, v2):
    # KL(N(m1, v1) || N(m2, v2)), written independently of the module.
    return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0)


def test_gap_measures_match_independent_formulas():
    rng = np.random.default_rng(0)
    bm, mm = rng.normal(size=16), rng.normal(size=16)
    bv, mv = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    eps = 1e-3
    np.testing.assert_allclose(quantities.mean_gap(bm, bv, mm, eps), np.abs(bm - mm) / np.sqrt(bv + eps))
    np.testing.assert_allclose(quantities.log_var_ratio(bv, mv, eps), np.log(bv + eps) - np.log(mv + eps))
    expected = 0.5 * (_kl(bm, bv + eps, mm, mv + eps) + _kl(mm, mv + eps, bm, bv + eps))
    np.testing.assert_allclose(quantities.symmetric_kl(bm, bv, mm, mv, eps), expected, rtol=1e-12)


def test_identical_moments_have_zero_gap():
    info = metadata.LayerInfo(name="bn", channels=3, momentum=0.9, epsilon=1e-3)
    x = np.array([0.5, -1.0, 2.0])
    v = np.array([1.0, 2.0, 0.5])
    q = quantities.compute(info, x, v, x, v, updates=10)
    s = summary.layer_series(q)
    assert s["mean_gap/max"] == 0 and s["sym_kl/max"] == 0 and s["abs_log_var_ratio/max"] == 0


def test_bessel_convention_removes_false_gap():
    # A moving variance of Bessel-corrected batch variances (PyTorch, tf_keras fused)
    # shows a false log ratio of log(n/(n-1)) unless compared like with like.
    n = 8
    info = metadata.LayerInfo(name="bn", channels=2, momentum=0.9, epsilon=0.0, moving_var_unbiased=True)
    biased = np.array([1.0, 2.0])
    q = quantities.compute(info, [0, 0], biased, [0, 0], biased * n / (n - 1), 50, samples_per_channel=n)
    assert np.allclose(q.log_var_ratio, 0.0)
    naive = quantities.log_var_ratio(biased, biased * n / (n - 1), 0.0)
    assert np.allclose(naive, -np.log(n / (n - 1)))


def test_renorm_debiases_the_stddev_average():
    m, t, eps, true_std, init_var = 0.9, 7, 1e-3, 3.0, 1.0
    ema_std = np.sqrt(init_var)
    for _ in range(t):
        ema_std = m * ema_std + (1 - m) * true_std
    moving_var = ema_std**2 - eps  # how Keras renorm derives moving_variance
    info = metadata.LayerInfo(name="bn", channels=1, momentum=m, epsilon=eps, ema_of="stddev", init_var=init_var)
    assert (quantities.debiased_variance(np.array([moving_var]), init_var, info, t)[0]
            == pytest.approx(true_std**2 - eps))


def test_compute_rejects_wrong_channel_count():
    info = metadata.LayerInfo(name="bn", channels=3, momentum=0.9, epsilon=1e-3)
    with pytest.raises(ValueError, match="3 channels"):
        quantities.compute(info, [0, 0], [1, 1], [0, 0], [1, 1], 1)


@pytest.mark.parametrize("bad", [dict(momentum=1.0), dict(momentum=-0.1), dict(channels=0), dict(name=""),
                                 dict(epsilon=-1.0), dict(ema_of="std")])
def test_layer_info_validates(bad):
    args = dict(name="bn", channels=2, momentum=0.9, epsilon=1e-3)
    args.update(bad)
    with pytest.raises(ValueError):
        metadata.LayerInfo(**args)


@pytest.mark.parametrize("n", [1, 2, 5, 64, 333])
def test_percentiles_match_numpy(n):
    rows = np.random.default_rng(n).normal(size=(3, n))
    p50, p90 = quantities.percentiles(rows, (50, 90))
    np.testing.assert_allclose(p50, np.percentile(rows, 50, axis=1), rtol=1e-12)
    np.testing.assert_allclose(p90, np.percentile(rows, 90, axis=1), rtol=1e-12)


def test_nan_moments_propagate_into_aggregates():
    info = metadata.LayerInfo(name="bn", channels=3, momentum=0.9, epsilon=1e-3)
    s = summary.layer_series(quantities.compute(info, [0.0, np.nan, 1.0], [1, 1, 1], [0, 0, 0], [1, 1, 1], 5))
    assert np.isnan(s["mean_gap/max"]) and np.isnan(s["mean_gap/p90"]) and np.isnan(s["batch_mean"])


def test_a_cumulative_average_momentum_none_is_described_and_logged(tmp_path):
    """PyTorch's ``momentum=None`` (a cumulative average): nothing of the
    initial value is left after one update, and such a layer is written,
    read back and diagnosed like any other."""
    import tb_bnstats

    assert quantities.convergence(None, 0) == 0.0 and quantities.convergence(None, 3) == 1.0
    assert quantities.steps_to_converge(None, 0.95) == 1
    assert quantities.debias(np.array([2.0]), np.array([1.0]), None, 5).tolist() == [2.0]
    info = metadata.LayerInfo(name="bn", channels=2, momentum=None, epsilon=1e-5)
    with pytest.raises(ValueError, match="momentum"):
        metadata.LayerInfo(name="bn", channels=2, momentum=1.0, epsilon=1e-5)
    rng = np.random.default_rng(0)
    with summary.Writer(str(tmp_path / "run")) as w:
        total = np.zeros(2)
        for step in range(1, 31):
            bm = rng.normal(0.5, 0.1, 2)
            total += bm
            w.layer(info, step, bm, np.ones(2), total / step, np.ones(2), step)
    layer = tb_bnstats.load(str(tmp_path))["run"].layers["bn"]
    assert layer.info.momentum is None
    assert layer.series["convergence"].tolist() == [1.0] * 30
    assert tb_bnstats.diagnose(str(tmp_path)) == []
