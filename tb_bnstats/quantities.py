"""The math of DESIGN.md §3, in one place, on numpy arrays (float64).

Notation, per channel c: ``mu_B``, ``var_B`` are the batch moments the layer
normalized with; ``mu_R``, ``var_R`` the moving averages after this step's
update; ``m`` the momentum; ``t`` the number of updates received; ``eps`` the
layer's epsilon.

* normalized mean gap  ``|mu_B - mu_R| / sqrt(var_B + eps)`` (Batch Renorm's d)
* log variance ratio   ``log((var_B + eps) / (var_R + eps))``; its absolute
  value is the log of Li et al.'s (CVPR 2019) variance-shift ratio
* symmetric KL         ``(KL(N_B||N_R) + KL(N_R||N_B)) / 2`` of the two Gaussians
* convergence          ``1 - m**t``: the weight no longer on the initial value
* debiased average     ``(ema_t - m**t * init) / (1 - m**t)`` (Adam's bias
  correction with a non-zero initial value, Kingma & Ba 2015, §3)

Nothing here reads the diagnosis or the log format: the summary writer and the
reader both call these functions, so a number is derived exactly once.
"""

import dataclasses

import numpy as np

from tb_bnstats import metadata


def comparable_batch_var(batch_var, samples_per_channel, moving_var_unbiased):
    """The batch variance in the convention of the moving variance.

    Keras 3 averages the biased batch variance; tf_keras' fused kernel and
    PyTorch average the Bessel-corrected one, ``var_B * n / (n - 1)``. Comparing
    unlike conventions shows a false gap of ``n / (n - 1)`` on a healthy run.
    """
    batch_var = np.asarray(batch_var, dtype=np.float64)
    if moving_var_unbiased and samples_per_channel and samples_per_channel > 1:
        n = float(samples_per_channel)
        return batch_var * n / (n - 1.0)
    return batch_var


def mean_gap(batch_mean, batch_var, moving_mean, epsilon):
    """``|mu_B - mu_R| / sqrt(var_B + eps)``, in units of the train-time std."""
    return np.abs(np.asarray(batch_mean, np.float64) - moving_mean) / np.sqrt(np.asarray(batch_var, np.float64) + epsilon)


def log_var_ratio(batch_var, moving_var, epsilon):
    """``log((var_B + eps) / (var_R + eps))``; dropout 0.5 before BN gives ~0.69."""
    return np.log((np.asarray(batch_var, np.float64) + epsilon) / (np.asarray(moving_var, np.float64) + epsilon))


def symmetric_kl(batch_mean, batch_var, moving_mean, moving_var, epsilon):
    """Symmetric KL of N(mu_B, var_B + eps) and N(mu_R, var_R + eps).

    With ``s1 = var_B + eps``, ``s2 = var_R + eps``, ``d = mu_B - mu_R``:
    ``(s1/s2 + s2/s1 - 2) / 4 + d**2 (1/s1 + 1/s2) / 4``.
    """
    s1 = np.asarray(batch_var, np.float64) + epsilon
    s2 = np.asarray(moving_var, np.float64) + epsilon
    d = np.asarray(batch_mean, np.float64) - moving_mean
    return 0.25 * (s1 / s2 + s2 / s1 - 2.0) + 0.25 * d * d * (1.0 / s1 + 1.0 / s2)


def initial_weight(momentum, updates):
    """``m**t``: the weight the moving average still puts on its initial value."""
    return float(np.power(np.float64(momentum), np.float64(updates)))


def convergence(momentum, updates):
    """``1 - m**t``; after 100 updates at m = 0.99 it is 0.634."""
    return 1.0 - initial_weight(momentum, updates)


def debias(ema, initial, momentum, updates):
    """``(ema_t - m**t * init) / (1 - m**t)``; returns ``ema`` unchanged at t = 0
    (nothing has been averaged yet, the ratio is 0/0)."""
    ema = np.asarray(ema, np.float64)
    if updates <= 0:
        return ema
    w = initial_weight(momentum, updates)
    return (ema - w * np.asarray(initial, np.float64)) / (1.0 - w)


def debiased_variance(moving_var, init_var, info: metadata.LayerInfo, updates):
    """Debiased moving variance. With ``ema_of == "stddev"`` (Keras renorm) the
    average runs over ``sqrt(var + eps)``, started at ``sqrt(init_var)``:
    debias that, then square back."""
    if info.ema_of == "stddev":
        std = np.sqrt(np.asarray(moving_var, np.float64) + info.epsilon)
        std_hat = debias(std, np.sqrt(init_var), info.momentum, updates)
        return np.maximum(std_hat * std_hat - info.epsilon, 0.0)
    return debias(moving_var, init_var, info.momentum, updates)


def effective_window(momentum):
    """``1 / (1 - m)`` steps: the EMA's memory."""
    return float("inf") if momentum >= 1.0 else 1.0 / (1.0 - momentum)


def steps_to_converge(momentum, fraction=0.95):
    """Updates needed for ``1 - m**t >= fraction``: ``ceil(log(1-fraction) / log(m))``
    (0.9: 29, 0.99: 299, 0.999: 2995; DESIGN.md rounds these down)."""
    if momentum <= 0.0:
        return 1
    return int(np.ceil(np.log1p(-fraction) / np.log(momentum)))


def _percentiles(rows, percents):
    """Percentiles along the last axis with linear interpolation (numpy's
    default method), from one sort: ``np.percentile`` is ~30x slower on the
    few-hundred-channel rows logged every step. NaN sorts last and propagates."""
    ordered = np.sort(rows, axis=-1)
    n = ordered.shape[-1]
    out = []
    for p in percents:
        pos = (n - 1) * p / 100.0
        lo = int(np.floor(pos))
        hi = min(lo + 1, n - 1)
        frac = pos - lo
        value = ordered[..., lo] * (1.0 - frac) + ordered[..., hi] * frac
        if np.isnan(ordered[..., -1]).any():
            value = np.where(np.isnan(ordered[..., -1]), np.nan, value)
        out.append(value)
    return out


@dataclasses.dataclass
class LayerQuantities:
    """Per-channel quantities of one layer at one step."""

    batch_mean: np.ndarray
    batch_var: np.ndarray  # in the moving variance's convention
    moving_mean: np.ndarray
    moving_var: np.ndarray
    debiased_mean: np.ndarray
    debiased_var: np.ndarray
    mean_gap: np.ndarray
    log_var_ratio: np.ndarray
    sym_kl: np.ndarray
    convergence: float
    updates: int

    def series(self):
        """Channel aggregates, keyed by :data:`metadata.LAYER_SERIES` names."""
        out = {name: float(np.mean(getattr(self, name))) for name in metadata.MOMENT_SERIES}
        gaps = np.stack([self.mean_gap, np.abs(self.log_var_ratio), self.sym_kl])  # GAP_MEASURES order
        means, p50, p90, maxes = gaps.mean(axis=1), *_percentiles(gaps, (50, 90)), gaps.max(axis=1)
        for i, measure in enumerate(metadata.GAP_MEASURES):
            out[f"{measure}/mean"] = float(means[i])
            out[f"{measure}/p50"] = float(p50[i])
            out[f"{measure}/p90"] = float(p90[i])
            out[f"{measure}/max"] = float(maxes[i])
        out["log_var_ratio/mean"] = float(np.mean(self.log_var_ratio))
        out["convergence"] = float(self.convergence)
        out["updates"] = float(self.updates)
        return out

    def snapshot(self):
        """The per-channel rows of :data:`metadata.SNAPSHOT_ROWS`, shape [rows, C]."""
        return np.stack([np.asarray(getattr(self, row), np.float64) for row in metadata.SNAPSHOT_ROWS])


def compute(info: metadata.LayerInfo, batch_mean, batch_var, moving_mean, moving_var, updates,
            samples_per_channel=None, init_mean=None, init_var=None):
    """All quantities of one layer at one step, from its raw moments.

    ``init_mean`` / ``init_var`` are the per-channel values the moving averages
    started from; by default ``info.init_mean`` / ``info.init_var``.
    """
    flat = lambda a: np.asarray(a, np.float64).reshape(-1)  # noqa: E731
    batch_mean, batch_var = flat(batch_mean), flat(batch_var)
    moving_mean, moving_var = flat(moving_mean), flat(moving_var)
    for label, arr in (("batch_mean", batch_mean), ("batch_var", batch_var), ("moving_mean", moving_mean), ("moving_var", moving_var)):
        if arr.shape != (info.channels,):
            raise ValueError(f"{info.name}: {label} has {arr.size} values, the layer has {info.channels} channels")
    updates = int(updates)
    batch_var = comparable_batch_var(batch_var, samples_per_channel, info.moving_var_unbiased)
    eps = float(info.epsilon)
    return LayerQuantities(
        batch_mean=batch_mean,
        batch_var=batch_var,
        moving_mean=moving_mean,
        moving_var=moving_var,
        debiased_mean=debias(moving_mean, info.init_mean if init_mean is None else init_mean, info.momentum, updates),
        debiased_var=debiased_variance(moving_var, info.init_var if init_var is None else init_var, info, updates),
        mean_gap=mean_gap(batch_mean, batch_var, moving_mean, eps),
        log_var_ratio=log_var_ratio(batch_var, moving_var, eps),
        sym_kl=symmetric_kl(batch_mean, batch_var, moving_mean, moving_var, eps),
        convergence=convergence(info.momentum, updates),
        updates=updates,
    )


def pool_moments(counts, means, variances):
    """Population moments from per-batch moments (PreciseBN, law of total
    variance): with ``N = sum(n_b)``, ``mean = sum(n_b mu_b) / N`` and
    ``var = sum(n_b (mu_b**2 + var_b)) / N - mean**2``, the biased variance of
    all the values pooled.

    ``counts`` [k], ``means`` / ``variances`` [k, C] (biased batch variances).
    Computed by Chan et al.'s pairwise update (mean and sum of squared
    deviations merged batch by batch), which is the same quantity without the
    cancellation of ``E[x**2] - E[x]**2`` for means large against the spread.
    Returns ``(mean [C], var [C], N)``.
    """
    counts = np.asarray(counts, np.float64).reshape(-1)
    means = np.asarray(means, np.float64)
    variances = np.asarray(variances, np.float64)
    if means.ndim == 1:
        means, variances = means[:, None], variances[:, None]
    if counts.size == 0 or means.shape[0] != counts.size or variances.shape != means.shape:
        raise ValueError(f"need k counts and [k, C] means and variances, got {counts.shape}, {means.shape}, "
                         f"{variances.shape}")
    total, mean, m2 = 0.0, np.zeros(means.shape[1]), np.zeros(means.shape[1])
    for n_b, mu_b, var_b in zip(counts, means, variances):
        if n_b <= 0:
            continue
        new_total = total + n_b
        delta = mu_b - mean
        mean = mean + delta * (n_b / new_total)
        m2 = m2 + var_b * n_b + delta * delta * (total * n_b / new_total)
        total = new_total
    if total <= 0:
        raise ValueError("no samples to pool")
    return mean, m2 / total, total


def lag1_autocorrelation(series):
    """Lag-1 autocorrelation ``sum(d_t d_{t+1}) / sum(d_t**2)`` of the
    deviations ``d`` from the series' mean (NaN dropped): ~0 for independent
    steps, near 1 for a slow drift or long runs of similar values. NaN when
    fewer than 4 values or no variation."""
    v = np.asarray(series, np.float64)
    v = v[np.isfinite(v)]
    if v.size < 4:
        return float("nan")
    d = v - v.mean()
    denom = float(np.dot(d, d))
    if denom <= 0.0:
        return float("nan")
    return float(np.dot(d[1:], d[:-1]) / denom)


def probe_series(epsilon, probe_mean, probe_var, moving_mean, moving_var, output_drift):
    """The per-layer series of the train/inference probe
    (:data:`metadata.PROBE_SERIES`): the probe batch's moments against the
    moving ones with :func:`mean_gap` and :func:`log_var_ratio` (median and
    max over channels), and ``output_drift`` as given
    (``||y_train - y_inf|| / ||y_train||`` of the layer's output)."""
    gap = mean_gap(probe_mean, probe_var, np.asarray(moving_mean, np.float64), epsilon)
    lvr = np.abs(log_var_ratio(probe_var, moving_var, epsilon))
    return {
        "probe_output_drift": float(output_drift),
        "probe_mean_gap/p50": float(np.median(gap)),
        "probe_mean_gap/max": float(np.max(gap)),
        "probe_abs_log_var_ratio/p50": float(np.median(lvr)),
    }


def population_series(epsilon, population_mean, population_var, moving_mean, moving_var):
    """The per-layer series of :data:`metadata.POPULATION_SERIES`: channel
    averages of the population moments, and the moving moments against them,
    ``|mu_R - mu_P| / sqrt(var_P + eps)`` (:func:`mean_gap`) and
    ``|log((var_P + eps) / (var_R + eps))|`` (:func:`log_var_ratio`), median
    and max over channels."""
    population_mean = np.asarray(population_mean, np.float64)
    population_var = np.asarray(population_var, np.float64)
    gap = mean_gap(population_mean, population_var, np.asarray(moving_mean, np.float64), epsilon)
    lvr = np.abs(log_var_ratio(population_var, np.asarray(moving_var, np.float64), epsilon))
    return {
        "population_mean": float(np.mean(population_mean)),
        "population_var": float(np.mean(population_var)),
        "population_mean_gap/p50": float(np.median(gap)),
        "population_mean_gap/max": float(np.max(gap)),
        "population_abs_log_var_ratio/p50": float(np.median(lvr)),
        "population_abs_log_var_ratio/max": float(np.max(lvr)),
    }


def detrended_autocorrelation(series, window=9):
    """:func:`lag1_autocorrelation` of ``series`` minus its centered moving
    average over ``window`` points (ends padded with the end values).

    The moving average takes out slow trends -- learning, the average
    converging -- and leaves runs of similar values shorter than the window.
    Independent values give ``-(w + 1) / (w (w - 1))`` (-0.14 for w = 9: the
    residual of a moving average is anticorrelated); runs of k > 1 alike
    values push it towards ``1 - 1/k``. NaN as :func:`lag1_autocorrelation`.
    """
    v = np.asarray(series, np.float64)
    v = v[np.isfinite(v)]
    if v.size < window:
        return float("nan")
    padded = np.pad(v, (window // 2, window - 1 - window // 2), mode="edge")
    return lag1_autocorrelation(v - np.convolve(padded, np.ones(window) / window, mode="valid"))


def suggested_momentum(updates, choices=(0.99, 0.98, 0.95, 0.9, 0.8, 0.5)):
    """The largest usual momentum whose average is 95% converged within half
    of ``updates`` (the other half averages with a converged window)."""
    for m in choices:
        if steps_to_converge(m) <= updates / 2.0:
            return m
    return choices[-1]
