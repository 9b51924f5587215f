"""The train/inference gap: batches through the model in training mode and in
inference mode, without changing anything. The one pass behind the
callback's probe (``BNStatsCallback(probe_data=...)``) and behind
:func:`gap_report` (what :func:`tb_bnstats.recalibrate` reports before and
after).

What it measures on the same batch (scenarios S1 and S8):

* the compiled loss and metrics in both modes -- the gap users see as "good
  training accuracy, bad validation accuracy" measured on one batch, so data
  differences are out of it;
* the drift of the model's output and of each BN layer's output between the
  modes, :func:`tb_bnstats.quantities.output_drift` (``||y_train - y_inf|| /
  ||y_train||``): it is ~0 above the first layer whose moving statistics do
  not fit, so the depth where the gap starts is visible;
* per BN layer, the batch's own moments (those the layer normalizes with in
  the training-mode pass, where upstream layers normalize with batch moments
  too) against the moving ones, with
  :func:`tb_bnstats.quantities.probe_series`. On a batch of the training
  distribution they are as close as the training batches' are; far apart
  with converged moving statistics means the probe data differ (S8).

How, without changing state: both passes run through Keras'
``model.stateless_call`` with the current variables, and the loss and metrics
through ``stateless_compute_loss`` and the compiled metrics' stateless API on
fresh (zero) metric state; every new value they return -- moving averages,
dropout's seed generator state, metric totals -- is thrown away. No
optimizer step, no moving-average update, the training run's RNG stream is
untouched. The BN layers are tapped with
:class:`tb_bnstats.frameworks.keras.passes.MomentTap` (which bypasses the
capture's ``_moments`` wrapper, so the logged update counts do not move) and
the two passes are one compiled graph, traced once per batch shape.
Works for functional and subclassed models alike (outputs are taken inside
the calls).
"""

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from tb_bnstats import quantities
from tb_bnstats.measure import data as batches
from tb_bnstats.measure import passes

# At most this many samples of the probe data are used (one batch).
MAX_PROBE_SAMPLES = 256


@dataclasses.dataclass
class ProbeLayer:
    """One BN layer on the probe batch (float64 per channel)."""

    probe_mean: np.ndarray
    probe_var: np.ndarray
    moving_mean: np.ndarray
    moving_var: np.ndarray
    output_drift: float


@dataclasses.dataclass
class ProbeResult:
    """One batch in both modes.

    ``metrics_train`` / ``metrics_inference``: ``{"loss": ..., "accuracy":
    ...}`` (empty without labels); ``layers``: per BN layer name;
    ``outputs_train`` / ``outputs_inference``: the model's (first) output in
    each mode; ``output_norms``: ``(||y_train - y_inf||^2, ||y_train||^2)`` of
    it, to pool over batches."""

    metrics_train: dict[str, float]
    metrics_inference: dict[str, float]
    layers: dict[str, ProbeLayer]
    outputs_train: np.ndarray
    outputs_inference: np.ndarray
    output_norms: tuple


def take_probe_batch(data, max_samples=MAX_PROBE_SAMPLES):
    """The probe batch of ``data``.

    Args:
        data: arrays or a dataset (:func:`tb_bnstats.measure.data.iter_batches`).
        max_samples: rows kept at most.

    Returns:
        ``(x, y_or_None)``: the first ``max_samples`` rows of arrays, or the
        first batch of a dataset cut to ``max_samples`` rows.

    Raises:
        ValueError: the first batch is empty.
    """
    x, y = next(iter(batches.iter_batches(data, batch_size=max_samples)))
    rows = batches.num_rows(x)
    if rows > max_samples:
        x = batches.slice_rows(x, slice(0, max_samples))
        y = None if y is None else np.asarray(y)[:max_samples]
    if rows == 0:
        raise ValueError("probe_data gave an empty batch")
    return x, y


# -- the gap over several batches ------------------------------------------------------


@dataclasses.dataclass
class GapReport:
    """Batches through the model with ``training=True`` and ``training=False``.

    ``loss_*`` / ``accuracy_*`` are None when unknown (no labels, no compiled
    loss, outputs that are not class scores): accuracy is the compiled
    ``accuracy`` metric when the model has one, else
    :func:`tb_bnstats.quantities.argmax_accuracy`. ``agreement`` is the
    fraction of argmax predictions the two modes share (class scores only),
    ``output_drift`` :func:`tb_bnstats.quantities.output_drift` of the model's
    output pooled over all batches."""

    samples: int
    loss_train_mode: float | None
    loss_inference_mode: float | None
    accuracy_train_mode: float | None
    accuracy_inference_mode: float | None
    agreement: float | None
    output_drift: float

    @property
    def accuracy_gap(self):
        """Training-mode minus inference-mode accuracy (None when unknown)."""
        if self.accuracy_train_mode is None or self.accuracy_inference_mode is None:
            return None
        return self.accuracy_train_mode - self.accuracy_inference_mode


def _accuracy(metrics, y, outputs):
    if "accuracy" in metrics:
        return metrics["accuracy"]
    return None if y is None else quantities.argmax_accuracy(y, outputs)


def gap_report(model: Any, batch_list: Iterable[tuple[Any, Any]], probe: Any = None,
               loss_fn: Callable[[Any, Any], Any] | None = None) -> GapReport:
    """The train/inference gap on ``batch_list``, without changing the model.

    Args:
        model: a built Keras model, or a ``torch.nn.Module``.
        batch_list: ``[(x, y_or_None)]`` batches.
        probe: a ``GapProbe`` of ``model`` to reuse (its traces;
            :func:`tb_bnstats.measure.passes.for_model`).
        loss_fn: PyTorch: ``loss_fn(output, y)`` for the loss of both modes
            (a Keras model uses its compiled loss).

    Returns:
        :class:`GapReport`, means weighted by rows.

    Raises:
        ValueError: no batch, or a framework / backend that is not supported.
    """
    probe = probe or passes.gap_probe(model, loss_fn=loss_fn)
    n, diff_sq, ref_sq, agree = 0, 0.0, 0.0, 0.0
    sums = {"loss_t": 0.0, "loss_i": 0.0, "acc_t": 0.0, "acc_i": 0.0}
    have = {"loss": True, "acc": True, "agree": True}
    for x, y in batch_list:
        result = probe.run(x, y)
        rows = batches.num_rows(x)
        n += rows
        diff_sq, ref_sq = diff_sq + result.output_norms[0], ref_sq + result.output_norms[1]
        pt, pi = result.outputs_train, result.outputs_inference
        if pt.ndim >= 2 and pt.shape[-1] > 1:
            agree += float(np.sum(np.argmax(pt, -1) == np.argmax(pi, -1)))
        else:
            have["agree"] = False
        if "loss" in result.metrics_train:
            sums["loss_t"] += result.metrics_train["loss"] * rows
            sums["loss_i"] += result.metrics_inference["loss"] * rows
        else:
            have["loss"] = False
        acc_t, acc_i = _accuracy(result.metrics_train, y, pt), _accuracy(result.metrics_inference, y, pi)
        if acc_t is None or acc_i is None:
            have["acc"] = False
        else:
            sums["acc_t"] += acc_t * rows
            sums["acc_i"] += acc_i * rows
    if n == 0:
        raise ValueError("no batch to measure the train/inference gap on")
    mean = lambda key, ok: sums[key] / n if ok else None  # noqa: E731
    return GapReport(
        samples=n,
        loss_train_mode=mean("loss_t", have["loss"]), loss_inference_mode=mean("loss_i", have["loss"]),
        accuracy_train_mode=mean("acc_t", have["acc"]), accuracy_inference_mode=mean("acc_i", have["acc"]),
        agreement=agree / n if have["agree"] else None,
        output_drift=quantities.output_drift(diff_sq, ref_sq),
    )
