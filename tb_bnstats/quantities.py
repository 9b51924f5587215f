"""The math, in one place, on numpy arrays (float64). The README's "The math"
section states each formula with its source; this module is where each one is
computed, once.

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
  correction with a non-zero initial value, Kingma & Ba 2015, §3); from
  pretrained statistics (a fine-tuning start) ``init`` is them, and the
  debiased average is the average of the new batches alone
* moved from the start the mean gap and log variance ratio with the start
  values ``mu_0``, ``var_0`` in the batch's place: ``|mu_R - mu_0| /
  sqrt(var_0 + eps)``, ``log((var_R + eps) / (var_0 + eps))``
* population moments   law of total variance over batches (PreciseBN)
* output drift         ``||y_train - y_inf|| / ||y_train||`` of one output

``m`` is the weight the average keeps on its old value (Keras' convention;
PyTorch's ``momentum`` is ``1 - m``); ``m = None`` is a cumulative average
(PyTorch's ``momentum=None``): after one update nothing of the initial value
is left.

Nothing here imports another part of tb_bnstats: a layer description is any
object with the fields of :class:`tb_bnstats.format.metadata.LayerInfo`
(``name``, ``channels``, ``momentum``, ``epsilon``, ``init_mean``,
``init_var``, ``ema_of``, ``moving_var_unbiased``). The writer, the
diagnosis, the measurements and the plugin all call these functions, so a
number is derived exactly once.
"""

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


class LayerLike(Protocol):
    """The fields of a layer description read here (:class:`tb_bnstats.format.metadata.LayerInfo` has them)."""

    @property
    def name(self) -> str: ...
    @property
    def channels(self) -> int: ...
    @property
    def momentum(self) -> float | None: ...
    @property
    def epsilon(self) -> float: ...
    @property
    def init_mean(self) -> float: ...
    @property
    def init_var(self) -> float: ...
    @property
    def ema_of(self) -> str: ...
    @property
    def moving_var_unbiased(self) -> bool: ...


def comparable_batch_var(batch_var: npt.ArrayLike, samples_per_channel: npt.ArrayLike | None,
                         moving_var_unbiased: bool) -> FloatArray:
    """The batch variance in the convention of the moving variance.

    Keras 3 averages the biased batch variance; tf_keras' fused kernel and
    PyTorch average the Bessel-corrected one, ``var_B * n / (n - 1)``. Comparing
    unlike conventions shows a false gap of ``n / (n - 1)`` on a healthy run.
    ``samples_per_channel`` is ``n``: one number, or one per step ([S]) for a
    block of steps ([S, C]); ``n <= 1`` leaves the variance as it is.
    """
    batch_var = np.asarray(batch_var, dtype=np.float64)
    if not moving_var_unbiased or samples_per_channel is None:
        return batch_var
    n = np.asarray(samples_per_channel, np.float64)
    if n.ndim == 1 and batch_var.ndim == 2:  # one n per step of a block
        n = n[:, None]
    return batch_var * np.where(n > 1, n / np.maximum(n - 1.0, 1.0), 1.0)


def mean_gap(batch_mean: npt.ArrayLike, batch_var: npt.ArrayLike, moving_mean: npt.ArrayLike,
             epsilon: float) -> FloatArray:
    """``|mu_B - mu_R| / sqrt(var_B + eps)``, in units of the train-time std."""
    return (np.abs(np.asarray(batch_mean, np.float64) - np.asarray(moving_mean, np.float64))
            / np.sqrt(np.asarray(batch_var, np.float64) + epsilon))


def log_var_ratio(batch_var: npt.ArrayLike, moving_var: npt.ArrayLike, epsilon: float) -> FloatArray:
    """``log((var_B + eps) / (var_R + eps))``; dropout 0.5 before BN gives ~0.69."""
    return np.log((np.asarray(batch_var, np.float64) + epsilon) / (np.asarray(moving_var, np.float64) + epsilon))


def symmetric_kl(batch_mean: npt.ArrayLike, batch_var: npt.ArrayLike, moving_mean: npt.ArrayLike,
                 moving_var: npt.ArrayLike, epsilon: float) -> FloatArray:
    """Symmetric KL of N(mu_B, var_B + eps) and N(mu_R, var_R + eps).

    With ``s1 = var_B + eps``, ``s2 = var_R + eps``, ``d = mu_B - mu_R``:
    ``(s1/s2 + s2/s1 - 2) / 4 + d**2 (1/s1 + 1/s2) / 4``.
    """
    s1 = np.asarray(batch_var, np.float64) + epsilon
    s2 = np.asarray(moving_var, np.float64) + epsilon
    d = np.asarray(batch_mean, np.float64) - np.asarray(moving_mean, np.float64)
    return 0.25 * (s1 / s2 + s2 / s1 - 2.0) + 0.25 * d * d * (1.0 / s1 + 1.0 / s2)


def initial_weight(momentum: float | None, updates: npt.ArrayLike) -> float | FloatArray:
    """``m**t``: the weight the moving average still puts on its initial value
    (a cumulative average, ``momentum=None``: 1 before the first update, 0
    after). ``updates`` may be an array (one ``t`` per step): so is the
    result."""
    t = np.asarray(updates, np.float64)
    if momentum is None:
        w = np.where(t <= 0, 1.0, 0.0)
    else:
        w = np.power(np.float64(momentum), t)
    return float(w) if w.ndim == 0 else w


def convergence(momentum: float | None, updates: npt.ArrayLike) -> float | FloatArray:
    """``1 - m**t``; after 100 updates at m = 0.99 it is 0.634."""
    return 1.0 - initial_weight(momentum, updates)


def debias(ema: npt.ArrayLike, initial: npt.ArrayLike, momentum: float | None, updates: npt.ArrayLike) -> FloatArray:
    """``(ema_t - m**t * init) / (1 - m**t)``; returns ``ema`` unchanged at t = 0
    (nothing has been averaged yet, the ratio is 0/0). ``ema`` is [..., C]
    with ``updates`` of shape [...] (one ``t`` per row)."""
    ema = np.asarray(ema, np.float64)
    t = np.asarray(updates, np.float64)[..., None] if ema.ndim else np.asarray(updates, np.float64)
    w = np.asarray(initial_weight(momentum, t))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (ema - w * np.asarray(initial, np.float64)) / (1.0 - w)
    return np.where(t <= 0, ema, out)


def debiased_variance(moving_var: npt.ArrayLike, init_var: npt.ArrayLike, info: LayerLike,
                      updates: npt.ArrayLike) -> FloatArray:
    """Debiased moving variance. With ``ema_of == "stddev"`` (Keras renorm) the
    average runs over ``sqrt(var + eps)``, started at ``sqrt(init_var)``:
    debias that, then square back."""
    if info.ema_of == "stddev":
        std = np.sqrt(np.asarray(moving_var, np.float64) + info.epsilon)
        std_hat = debias(std, np.sqrt(init_var), info.momentum, updates)
        return np.maximum(std_hat * std_hat - info.epsilon, 0.0)
    return debias(moving_var, init_var, info.momentum, updates)


def effective_window(momentum: float | None) -> float:
    """``1 / (1 - m)`` steps: the EMA's memory (a cumulative average,
    ``momentum=None``, remembers everything: inf)."""
    return float("inf") if momentum is None or momentum >= 1.0 else 1.0 / (1.0 - momentum)


# Convergence 1 - m**t from which the moving averages count as converged: less than 5% of their weight
# left on the initial values. The diagnosis' threshold (diagnosis.codes THRESHOLDS["converged"]) and the
# end of the log's full-resolution warm-up (write.resolution).
CONVERGED = 0.95


def steps_to_converge(momentum: float | None, fraction: float) -> int:
    """Updates needed for ``1 - m**t >= fraction``: ``ceil(log(1-fraction) / log(m))``
    (at 0.95: 0.9 needs 29, 0.99 299, 0.999 2995; the effective window
    ``1/(1-m)`` rounds these down). 1 for ``m = 0`` and for a cumulative
    average (``momentum=None``)."""
    if momentum is None or momentum <= 0.0:
        return 1
    return int(np.ceil(np.log1p(-fraction) / np.log(momentum)))


def percentiles(rows: npt.ArrayLike, percents: Iterable[float]) -> list[FloatArray]:
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


def channel_aggregates(rows: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """``(mean, p50, p90, max)`` over the last axis (channels) of ``rows``:
    how the per-channel gaps are summarized per layer and step."""
    rows = np.asarray(rows, np.float64)
    p50, p90 = percentiles(rows, (50, 90))
    return rows.mean(axis=-1), p50, p90, rows.max(axis=-1)


@dataclasses.dataclass
class LayerQuantities:
    """Per-channel quantities of one layer at one step ([C] arrays, a float
    ``convergence`` and an int ``updates``) or at S steps ([S, C] and [S])."""

    batch_mean: np.ndarray
    batch_var: np.ndarray  # in the moving variance's convention
    moving_mean: np.ndarray
    moving_var: np.ndarray
    debiased_mean: np.ndarray
    debiased_var: np.ndarray
    mean_gap: np.ndarray
    log_var_ratio: np.ndarray
    sym_kl: np.ndarray
    convergence: "float | np.ndarray"
    updates: "int | np.ndarray"
    start_mean_gap: np.ndarray  # |mu_R - mu_0| / sqrt(var_0 + eps)
    start_log_var_ratio: np.ndarray  # log((var_R + eps) / (var_0 + eps))


def compute(info: LayerLike, batch_mean: npt.ArrayLike, batch_var: npt.ArrayLike, moving_mean: npt.ArrayLike,
            moving_var: npt.ArrayLike, updates: npt.ArrayLike, samples_per_channel: npt.ArrayLike | None = None,
            init_mean: npt.ArrayLike | None = None, init_var: npt.ArrayLike | None = None) -> "LayerQuantities":
    """All quantities of one layer at one step, or at many steps at once,
    from its raw moments.

    Args:
        info: the layer (a :class:`tb_bnstats.format.metadata.LayerInfo`).
        batch_mean, batch_var: the moments the layer normalized with
            (biased variance), per channel: shape [C], or [S, C] for S steps.
        moving_mean, moving_var: the moving averages after the step(s).
        updates: ``t``, updates the averages received, this one included
            (an int, or [S]).
        samples_per_channel: values per channel in the batch, ``n``; needed
            when ``info.moving_var_unbiased`` (:func:`comparable_batch_var`).
        init_mean, init_var: per-channel values the averages started from;
            by default ``info.init_mean`` / ``info.init_var``.

    Returns:
        :class:`LayerQuantities` (per-step fields of shape [S] for a block).

    Raises:
        ValueError: an array without one value per channel, or arrays of
            different numbers of steps.
    """
    batch_mean, batch_var, moving_mean, moving_var = (
        np.asarray(a, np.float64) for a in (batch_mean, batch_var, moving_mean, moving_var))
    for label, arr in (("batch_mean", batch_mean), ("batch_var", batch_var), ("moving_mean", moving_mean),
                       ("moving_var", moving_var)):
        if arr.ndim == 0 or arr.shape[-1] != info.channels or arr.shape != batch_mean.shape:
            raise ValueError(f"{info.name}: {label} has shape {arr.shape}, the layer has {info.channels} channels"
                             + (f" (and batch_mean {batch_mean.shape})" if arr.shape != batch_mean.shape else ""))
    updates = np.asarray(updates, np.int64)
    if updates.shape != batch_mean.shape[:-1]:
        raise ValueError(f"{info.name}: updates has shape {updates.shape}, expected {batch_mean.shape[:-1]}")
    if updates.ndim == 0:
        updates = int(updates)
    batch_var = comparable_batch_var(batch_var, samples_per_channel, info.moving_var_unbiased)
    eps = float(info.epsilon)
    start_mean = np.asarray(info.init_mean if init_mean is None else init_mean, np.float64)
    start_var = np.asarray(info.init_var if init_var is None else init_var, np.float64)
    return LayerQuantities(
        batch_mean=batch_mean,
        batch_var=batch_var,
        moving_mean=moving_mean,
        moving_var=moving_var,
        debiased_mean=debias(moving_mean, start_mean, info.momentum, updates),
        debiased_var=debiased_variance(moving_var, start_var, info, updates),
        mean_gap=mean_gap(batch_mean, batch_var, moving_mean, eps),
        log_var_ratio=log_var_ratio(batch_var, moving_var, eps),
        sym_kl=symmetric_kl(batch_mean, batch_var, moving_mean, moving_var, eps),
        convergence=convergence(info.momentum, updates),
        updates=updates,
        start_mean_gap=mean_gap(moving_mean, np.broadcast_to(start_var, moving_var.shape), start_mean, eps),
        start_log_var_ratio=log_var_ratio(moving_var, start_var, eps),
    )


def pool_moments(counts: npt.ArrayLike, means: npt.ArrayLike,
                 variances: npt.ArrayLike) -> tuple[FloatArray, FloatArray, float | FloatArray]:
    """Population moments from per-batch moments (PreciseBN, law of total
    variance): with ``N = sum(n_b)``, ``mean = sum(n_b mu_b) / N`` and
    ``var = sum(n_b (mu_b**2 + var_b)) / N - mean**2``, the biased variance of
    all the values pooled. The same formula pools several replicas' slices
    of one global batch into the global batch's moments.

    ``counts`` [..., k], ``means`` / ``variances`` [..., k, C] (biased batch
    variances; any leading axes, e.g. steps, are kept). Computed by Chan et
    al.'s pairwise update (mean and sum of squared deviations merged batch by
    batch), which is the same quantity without the cancellation of
    ``E[x**2] - E[x]**2`` for means large against the spread.
    Returns ``(mean [..., C], var [..., C], N [...])``.

    Raises:
        ValueError: shapes that do not match, or no samples to pool.
    """
    counts = np.asarray(counts, np.float64)
    means = np.asarray(means, np.float64)
    variances = np.asarray(variances, np.float64)
    if counts.ndim == 0:
        counts = counts.reshape(1)
    if means.ndim == counts.ndim:
        means, variances = means[..., None], variances[..., None]
    if (counts.size == 0 or means.shape[:-1] != counts.shape or variances.shape != means.shape):
        raise ValueError(f"need [..., k] counts and [..., k, C] means and variances, got {counts.shape}, "
                         f"{means.shape}, {variances.shape}")
    lead = counts.shape[:-1]
    total, mean = np.zeros(lead), np.zeros(means.shape[:-2] + means.shape[-1:])
    m2 = np.zeros_like(mean)
    for b in range(counts.shape[-1]):
        n_b = np.maximum(counts[..., b], 0.0)
        empty = (n_b <= 0)[..., None]  # a replica's empty slice: its moments are NaN, and weigh nothing
        mu_b = np.where(empty, 0.0, means[..., b, :])
        var_b = np.where(empty, 0.0, variances[..., b, :])
        new_total = total + n_b
        safe = np.where(new_total > 0, new_total, 1.0)
        delta = mu_b - mean
        mean = mean + delta * (n_b / safe)[..., None]
        m2 = m2 + var_b * n_b[..., None] + delta * delta * (total * n_b / safe)[..., None]
        total = new_total
    if np.any(total <= 0):
        raise ValueError("no samples to pool")
    var = m2 / total[..., None]
    return mean, var, (total if lead else float(total))


def replica_spread(epsilon: float, global_mean: npt.ArrayLike, global_var: npt.ArrayLike, replica_mean: npt.ArrayLike,
                   replica_var: npt.ArrayLike, replica_moving_mean: npt.ArrayLike | None = None,
                   replica_moving_var: npt.ArrayLike | None = None) -> dict[str, FloatArray]:
    """How several replicas' slices of one global batch differ, per channel
    (:data:`tb_bnstats.format.metadata.REPLICA_SERIES` gives the formulas).

    Args:
        epsilon: the layer's epsilon.
        global_mean, global_var: [..., C] the global batch's moments (biased
            variance; :func:`pool_moments` of the replicas').
        replica_mean, replica_var: [..., R, C] each replica's batch moments
            (biased variance).
        replica_moving_mean, replica_moving_var: [..., R, C] each replica's
            own moving statistics, when each keeps its own (else None).

    Returns:
        ``{name: [..., C]}`` of ``replica_mean_spread``, ``replica_var_ratio``,
        ``replica_mean_gap``, ``replica_abs_log_var_ratio``,
        ``replica_var_deficit`` and, with moving statistics,
        ``rank_moving_spread`` and ``rank_moving_var_ratio``.
    """
    mu = np.asarray(replica_mean, np.float64)
    var = np.asarray(replica_var, np.float64)
    global_mean = np.asarray(global_mean, np.float64)[..., None, :]
    global_var = np.asarray(global_var, np.float64)[..., None, :]
    out = {
        "replica_mean_spread": (mu.max(axis=-2) - mu.min(axis=-2)) / np.sqrt(global_var[..., 0, :] + epsilon),
        "replica_var_ratio": (var.max(axis=-2) + epsilon) / (var.min(axis=-2) + epsilon),
        "replica_mean_gap": np.mean(mean_gap(mu, np.broadcast_to(global_var, mu.shape), global_mean, epsilon),
                                    axis=-2),
        "replica_abs_log_var_ratio": np.mean(np.abs(log_var_ratio(var, global_var, epsilon)), axis=-2),
        "replica_var_deficit": log_var_ratio(global_var[..., 0, :], var.mean(axis=-2), epsilon),
    }
    if replica_moving_mean is not None:
        mm = np.asarray(replica_moving_mean, np.float64)
        mv = np.asarray(replica_moving_var, np.float64)
        out["rank_moving_spread"] = (mm.max(axis=-2) - mm.min(axis=-2)) / np.sqrt(mv.mean(axis=-2) + epsilon)
        out["rank_moving_var_ratio"] = (mv.max(axis=-2) + epsilon) / (mv.min(axis=-2) + epsilon)
    return out


def lag1_autocorrelation(series: npt.ArrayLike) -> float:
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


def squared_norms(train: npt.ArrayLike, inference: npt.ArrayLike) -> tuple[float, float]:
    """``(||train - inference||^2, ||train||^2)`` in float64: the sums
    :func:`output_drift` takes (they pool over batches by adding).

    Args:
        train: an output (or a layer's output) in training mode.
        inference: the same output in inference mode, of the same shape.

    Returns:
        ``(sum((train - inference)**2), sum(train**2))``.
    """
    a, b = np.asarray(train, np.float64), np.asarray(inference, np.float64)
    return float(np.sum((a - b) ** 2)), float(np.sum(a ** 2))


def output_drift(diff_squared: float, train_squared: float) -> float:
    """``||y_train - y_inf|| / ||y_train||`` (Frobenius norms over the whole
    batch, or over several batches pooled): how much an output changes
    between training and inference mode; 0 when the moving statistics equal
    the batch moments everywhere upstream.

    Args:
        diff_squared: ``sum((y_train - y_inf)**2)``.
        train_squared: ``sum(y_train**2)`` (sums, so batches pool by adding).
    """
    return float(np.sqrt(diff_squared) / max(float(np.sqrt(train_squared)), 1e-12))


def argmax_accuracy(labels: npt.ArrayLike, predictions: npt.ArrayLike) -> float | None:
    """Fraction of rows whose argmax prediction is the label (integer labels,
    or one-hot labels of the predictions' shape); None when the predictions
    are not class scores (one column)."""
    y = np.asarray(labels)
    pred = np.asarray(predictions)
    if pred.ndim < 2 or pred.shape[-1] < 2:
        return None
    target = np.argmax(y, -1) if y.shape == pred.shape else y.reshape(pred.shape[:-1])
    return float(np.mean(np.argmax(pred, -1) == target))


def probe_series(epsilon: float, probe_mean: npt.ArrayLike, probe_var: npt.ArrayLike, moving_mean: npt.ArrayLike,
                 moving_var: npt.ArrayLike, output_drift: float) -> dict[str, float]:
    """The per-layer series of the train/inference probe
    (``PROBE_SERIES`` of the log format): the probe batch's moments against the
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


def population_series(epsilon: float, population_mean: npt.ArrayLike, population_var: npt.ArrayLike,
                      moving_mean: npt.ArrayLike, moving_var: npt.ArrayLike) -> dict[str, float]:
    """The per-layer series of ``POPULATION_SERIES`` (log format): channel
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


def detrended_autocorrelation(series: npt.ArrayLike, window: int = 9) -> float:
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


def suggested_momentum(updates: float, fraction: float,
                       choices: Sequence[float] = (0.99, 0.98, 0.95, 0.9, 0.8, 0.5)) -> float:
    """The largest usual momentum whose average is ``fraction`` converged
    within half of ``updates`` (the other half averages with a converged
    window)."""
    for m in choices:
        if steps_to_converge(m, fraction) <= updates / 2.0:
            return m
    return choices[-1]
