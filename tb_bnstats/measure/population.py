"""Population statistics of BatchNormalization layers ("PreciseBN") and
recalibration of the moving averages from them.

The moving averages a BN layer uses at inference are exponential averages of
batch moments taken while the weights were changing, and they start from
(0, 1). PreciseBN (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021; the
idea of fvcore's ``precise_bn``) replaces them, after training, with plain
averages over many batches taken with the final, fixed weights.

Per channel, each batch ``b`` gives ``n_b`` samples with mean ``mu_b`` and
(biased) variance ``var_b``. The population moments over all the samples seen
are, by the law of total variance, weighting each batch by its sample count::

    mean = sum(n_b mu_b) / N
    var  = sum(n_b (mu_b**2 + var_b)) / N - mean**2    (N = sum n_b)

:func:`tb_bnstats.quantities.pool_moments` computes exactly this, in the
numerically stable pairwise form (Chan et al. 1979): the same number without
the cancellation of ``E[x**2] - E[x]**2`` when the mean is large against the
spread. ``n_b`` is the number of values per channel in the batch (batch size
times spatial positions; the unmasked count with a mask).

How the moments are taken, without changing the model (the framework's
passes, :mod:`tb_bnstats.measure.passes`):

* Keras: the model runs through ``stateless_call`` (every variable
  assignment -- moving averages, RNG seed state -- goes into a scope that is
  thrown away), each BN layer temporarily wrapped to run in training mode
  and to hand out the exact ``(mean, variance)`` Keras' own ``_moments``
  computes from its input (:mod:`tb_bnstats.frameworks.keras.passes`);
* PyTorch: BN modules in ``train()`` with ``track_running_stats`` off for
  the pass (batch moments, no buffer written), a forward hook taking the
  moments of their input, under ``torch.no_grad()`` with the random
  generators forked; every mode flag is restored
  (:mod:`tb_bnstats.frameworks.torch.passes`).

Upstream BN layers normalize with batch moments, as in training and in
PreciseBN. Other layers (Dropout, GaussianNoise...) run in inference mode by
default (``training=False``), so the statistics are those inference will see
-- which also removes dropout's "variance shift" (Li et al., CVPR 2019); pass
``training=True`` for fvcore's behaviour (everything in training mode).
Frozen layers (Keras ``trainable=False``; PyTorch modules whose affine
parameters have ``requires_grad=False``) keep normalizing with their moving
averages; their input moments are still measured. When they are to be
recalibrated too (``recalibrate(include_frozen=True)``,
:func:`frozen_recalibration`) they normalize with batch moments in the
passes, as they will afterwards: a frozen layer after another then sees what
it will see once both are recalibrated (with the old statistics upstream, a
chain of frozen layers on shifted data would be recalibrated to the shift the
first one removes).

``recalibrate`` writes the result into the moving averages -- Keras'
``moving_mean`` / ``moving_variance`` (and ``moving_stddev = sqrt(var +
eps)`` for ``renorm=True`` layers, whose moving variance Keras derives from
it), PyTorch's ``running_mean`` / ``running_var`` (as ``var * N / (N - 1)``,
its Bessel-corrected convention; ``num_batches_tracked`` is left as it is)
-- as one transaction: if anything raises before it returns -- a data
generator, a ``KeyboardInterrupt`` -- every value it touched is restored
bit for bit.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from tb_bnstats import quantities
from tb_bnstats.measure import data as batches
from tb_bnstats.measure import gap, passes

# PreciseBN (Wu & Johnson 2021) finds 10^3-10^4 samples near-optimal.
DEFAULT_NUM_SAMPLES = 4096


@dataclasses.dataclass
class LayerPopulation:
    """Population moments of one BN layer's input (float64 per channel)."""

    name: str
    mean: np.ndarray
    var: np.ndarray
    count: float  # values per channel pooled (samples x positions)
    batches: int
    samples: int  # examples (batch rows) seen
    trainable: bool


def _population_and_kept_batches(model, data, num_samples, batch_size, training, shuffle, seed, keep_samples,
                                 include_frozen=True, frozen_batch_mode=False):
    framework = passes.for_model(model)
    named = framework.bn_layers(model)
    if not include_frozen:
        named = [(n, l) for n, l in named if not framework.is_frozen(l)]
    acc = {}
    kept = []  # the first keep_samples examples' batches, for the gap report
    seen_rows = 0
    with framework.moment_passes(model, named, training, frozen_batch_mode) as run:
        for x, y in batches.iter_batches(data, batch_size=batch_size, shuffle=shuffle, seed=seed):
            if seen_rows >= num_samples:
                break
            rows = batches.num_rows(x)
            for name, moments in run(x).items():
                acc.setdefault(name, []).append(moments)
            if sum(batches.num_rows(kx) for kx, _ in kept) < keep_samples:
                kept.append((x, y))
            seen_rows += rows
    if seen_rows == 0:
        raise ValueError("no data: the data gave no batch")
    out = {}
    for name, layer in named:
        if name not in acc:
            continue  # the forward pass never ran this layer
        mean, var, count = quantities.pool_moments(np.array([n for _, _, n in acc[name]]),
                                                   np.stack([m for m, _, _ in acc[name]]),
                                                   np.stack([v for _, v, _ in acc[name]]))
        out[name] = LayerPopulation(name, mean, var, count, len(acc[name]), seen_rows,
                                    not framework.is_frozen(layer))
    return out, kept


def population_stats(model: Any, data: Any, num_samples: int = DEFAULT_NUM_SAMPLES, batch_size: int = 32,
                     training: bool = False, shuffle: bool = False, seed: int = 0) -> dict[str, LayerPopulation]:
    """Population mean and variance of every BN layer's input ("PreciseBN").

    The model is not changed: no variable or buffer is written (module
    docstring).

    Args:
        model: a built Keras 3 model (any supported backend), or a
            ``torch.nn.Module``.
        data: arrays, ``(x, y)``, a batched ``tf.data.Dataset``, a
            ``PyDataset``, a ``torch.utils.data.DataLoader`` or any iterable
            of batches (see :func:`tb_bnstats.measure.data.iter_batches`).
            Use batches of the training batch size: upstream BN layers
            normalize each batch with its own moments, as in training.
        num_samples: stop once this many examples were seen (whole batches).
        batch_size: batch size used to cut arrays.
        training: mode of the non-BN layers (Dropout...). False (default):
            statistics of what inference sees. True: fvcore's choice.
        shuffle: permute array rows before batching.
        seed: the seed of that permutation.

    Returns:
        ``{name: LayerPopulation}`` keyed by the names tb_bnstats logs
        (Keras layer paths, PyTorch module paths). ``var`` is the biased
        population variance.

    Raises:
        ValueError: the model is not built, the data gave no batch, or the
            framework / backend is not supported.
    """
    stats, _ = _population_and_kept_batches(model, data, num_samples, batch_size, training, shuffle, seed,
                                            keep_samples=0)
    return stats


# -- recalibration -------------------------------------------------------------


@dataclasses.dataclass
class RecalibrationReport:
    """What :func:`recalibrate` did: the train/inference gap ``before`` and
    ``after``, the population statistics written per layer, the layers
    ``skipped`` (frozen or never run) and the examples measured."""

    before: gap.GapReport
    after: gap.GapReport
    layers: dict[str, LayerPopulation]
    skipped: list[str]  # frozen or never run
    samples: int

    def __str__(self):
        def line(label, g):
            acc = ("" if g.accuracy_gap is None else
                   f"accuracy train-mode {g.accuracy_train_mode:.3f} / "
                   f"inference-mode {g.accuracy_inference_mode:.3f}; ")
            loss = ("" if g.loss_train_mode is None else
                    f"loss {g.loss_train_mode:.4f} / {g.loss_inference_mode:.4f}; ")
            return f"  {label}: {acc}{loss}output drift {g.output_drift:.3f}"

        return "\n".join([f"recalibrated {len(self.layers)} BN layer(s) from {self.samples} samples"
                          + (f" (skipped: {', '.join(self.skipped)})" if self.skipped else ""),
                          line("before", self.before), line("after", self.after)])


def recalibrate(model: Any, data: Any, num_samples: int = DEFAULT_NUM_SAMPLES, batch_size: int = 32,
                training: bool = False, shuffle: bool = False, seed: int = 0, gap_data: Any = None,
                gap_samples: int = 512, include_frozen: bool = False,
                loss_fn: Callable[[Any, Any], Any] | None = None) -> RecalibrationReport:
    """Replaces the moving averages of every BN layer with population
    statistics (:func:`population_stats`) and reports the train/inference gap
    before and after (:func:`tb_bnstats.measure.gap.gap_report`), on
    ``gap_data`` (``(x, y)`` arrays, or by default the first ``gap_samples``
    examples of ``data``).

    Frozen layers (Keras ``trainable=False``, PyTorch ``requires_grad=False``)
    are left alone unless ``include_frozen=True``. All or nothing: if
    anything raises before this returns (the data, a ``KeyboardInterrupt``),
    every variable or buffer is restored bit for bit.

    Args:
        model: as in :func:`population_stats`.
        data: as in :func:`population_stats`.
        num_samples: as in :func:`population_stats`.
        batch_size: as in :func:`population_stats`.
        training: as in :func:`population_stats`.
        shuffle: as in :func:`population_stats`.
        seed: as in :func:`population_stats`.
        gap_data: batches to report the gap on (arrays or a dataset); by
            default the first ``gap_samples`` examples of ``data``.
        gap_samples: see ``gap_data``.
        include_frozen: also recalibrate frozen layers.
        loss_fn: PyTorch: ``loss_fn(output, y)``, for the loss in the report
            (a Keras model's report uses its compiled loss).

    Returns:
        :class:`RecalibrationReport`.

    Raises:
        ValueError: as :func:`population_stats`.

    Example::

        report = tb_bnstats.recalibrate(model, (x_train, y_train), num_samples=4096)
        print(report)   # accuracy train-mode 0.94 / inference-mode 0.12 -> 0.94 / 0.94
    """
    framework = passes.for_model(model)
    named = dict(framework.bn_layers(model))
    undo: list[Callable[[], object]] = []  # what puts each written layer back
    try:
        # Recalibrated frozen layers will normalize with population moments: measured so, a frozen layer's
        # input is what it will be once the frozen layers before it are recalibrated too.
        stats, gap_batches = _population_and_kept_batches(model, data, num_samples, batch_size, training, shuffle,
                                                          seed, gap_samples, include_frozen=include_frozen,
                                                          frozen_batch_mode=include_frozen)
        if gap_data is not None:
            gap_batches = list(batches.iter_batches(gap_data, batch_size=batch_size))
        before, after = _written_and_reported(model, named, stats, gap_batches, loss_fn, undo)
    except BaseException:
        for restore in reversed(undo):
            restore()
        raise
    skipped = [name for name in named if name not in stats]
    return RecalibrationReport(before, after, stats, skipped, next(iter(stats.values())).samples if stats else 0)


def frozen_recalibration(model, x, y, batch_size=None, loss_fn=None):
    """What recalibrating the frozen BN layers on ``(x, y)`` would give (S9,
    pretrained statistics on new data), the model left exactly as it was.

    The frozen layers' population statistics are measured on ``x`` (with
    the frozen layers normalizing with batch moments, as they will once
    recalibrated), written, the gap report taken, and every variable or
    buffer written put back bit for bit.

    Args:
        model: a built Keras model or a ``torch.nn.Module``.
        x, y: a batch of the data the frozen layers see (the probe batch).
        batch_size: rows per forward pass; by default the whole batch (the
            frozen layers then normalize with its moments, exactly the
            statistics written).
        loss_fn: PyTorch: ``loss_fn(output, y)`` (a Keras model uses its
            compiled loss).

    Returns:
        ``(before, after)`` :class:`tb_bnstats.measure.gap.GapReport` on the
        batch, or None when the model has no frozen BN layer that ran.
    """
    framework = passes.for_model(model)
    named = dict(framework.bn_layers(model))
    frozen = [n for n, layer in named.items() if framework.is_frozen(layer)]
    if not frozen:
        return None
    rows = batches.num_rows(x)
    stats, kept = _population_and_kept_batches(model, (x, y), rows, batch_size or rows, False, False, 0, rows,
                                               include_frozen=True, frozen_batch_mode=True)
    frozen = {n: stats[n] for n in frozen if n in stats}
    if not frozen:
        return None
    undo = []
    try:
        return _written_and_reported(model, named, frozen, kept, loss_fn, undo)
    finally:
        for restore in reversed(undo):
            restore()


def _written_and_reported(model, named, stats, gap_batches, loss_fn, undo):
    """The gap report on ``gap_batches`` before and after writing ``stats``
    (``{name: LayerPopulation}``) into the layers ``named``; each write's
    ``undo()`` goes into ``undo`` as it is made (the caller keeps or
    restores them).

    Returns:
        ``(before, after)`` :class:`tb_bnstats.measure.gap.GapReport`.
    """
    framework = passes.for_model(model)
    both_modes = passes.gap_probe(model, loss_fn=loss_fn)
    before = gap.gap_report(model, gap_batches, both_modes)
    for name, pop in stats.items():
        undo.append(framework.write_population(named[name], pop))
    return before, gap.gap_report(model, gap_batches, both_modes)


# -- the variance shift of dropout before BN ----------------------------------------


def variance_shift(model, data, num_samples=2048, batch_size=32):
    """How much wider each trainable BN layer's input is in training than at
    inference (S5, dropout or noise upstream; Li et al., CVPR 2019).

    The population variance of every trainable BN layer's input is measured
    twice -- the other layers in training mode (dropout on, as when the moving
    averages were collected) and in inference mode. Nothing in the model
    changes.

    Args:
        model, data, num_samples, batch_size: as in :func:`population_stats`.

    Returns:
        ``{name: {"train_vs_inference_log_var_ratio": ..., "moving_vs_inference_log_var_ratio": ...,
        "samples": ...}}``: channel means of :func:`tb_bnstats.quantities.log_var_ratio`
        of the training-mode and of the moving variance against the
        inference-mode population variance.
    """
    framework = passes.for_model(model)
    named = dict(framework.bn_layers(model))
    inference = population_stats(model, data, num_samples, batch_size, training=False)
    train = population_stats(model, data, num_samples, batch_size, training=True)
    out = {}
    for name, layer in named.items():
        if name not in inference or name not in train or framework.is_frozen(layer):
            continue
        _, moving, eps = framework.moving_statistics(layer)
        out[name] = {
            "train_vs_inference_log_var_ratio":
                float(np.mean(quantities.log_var_ratio(train[name].var, inference[name].var, eps))),
            "moving_vs_inference_log_var_ratio":
                float(np.mean(quantities.log_var_ratio(moving, inference[name].var, eps))),
            "samples": inference[name].samples,
        }
    return out
