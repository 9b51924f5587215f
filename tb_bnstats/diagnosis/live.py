"""Findings that need the model, not just the logs.

:func:`diagnose_model` measures on the live model
(:mod:`tb_bnstats.measure`) what training logs cannot show: S5, the variance
shift of dropout before BN (Li et al., CVPR 2019), and, for an averaged copy
of a model (SWA's ``AveragedModel``, an EMA copy), whether its BN statistics
belong to its weights. The callback calls it at the end of each ``fit``
when it has a probe batch.
"""


import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tb_bnstats.diagnosis import group, words
from tb_bnstats.diagnosis.codes import THRESHOLDS
from tb_bnstats.diagnosis.finding import Finding


def diagnose_model(model: Any, data: Any, num_samples: int = 2048, batch_size: int = 32,
                   run: str = "model", averaged: bool | None = None) -> list[Finding]:
    """BN004 on the live model; BN017 on an averaged one.

    For every trainable BN layer the population variance of its input is
    measured with the other layers in training and in inference mode
    (:func:`tb_bnstats.measure.population.variance_shift`); BN004 is raised
    when training-mode batches are wider than inference-mode ones by more
    than ``THRESHOLDS["population_variance_shift"]`` (channel mean of the log
    ratio) and the moving variance sits with the training side: inference
    then divides by a too-large variance.

    An averaged model (``averaged``; None: recognized by its framework,
    as PyTorch's ``torch.optim.swa_utils.AveragedModel``; True for an EMA
    copy kept as a plain model) is checked for statistics that do not belong
    to its weights (:func:`averaged_statistics_findings`). Nothing in the
    model changes.

    Args:
        model: a built Keras model or a ``torch.nn.Module``.
        data: arrays or batches of training-like data.
        num_samples: as in :func:`tb_bnstats.population_stats`.
        batch_size: as in :func:`tb_bnstats.population_stats`.
        run: the run the findings are about.
        averaged: whether ``model`` is an averaged copy of a trained model
            (None: as its framework tells).

    Returns:
        A list of :class:`~tb_bnstats.diagnosis.finding.Finding` (empty, or
        one per code).

    Raises:
        ValueError: as :func:`tb_bnstats.population_stats`.
    """
    from tb_bnstats.measure import passes, population

    framework = passes.framework_of(model)
    found = variance_shift_findings(population.variance_shift(model, data, num_samples, batch_size), framework, run)
    described = getattr(passes.for_model(model), "averaged_model", lambda m: None)(model)
    if averaged or (averaged is None and described is not None):
        found += averaged_statistics_findings(model, data, num_samples, batch_size, run, described)
    return found


def averaged_statistics_findings(model: Any, data: Any, num_samples: int = 2048, batch_size: int = 32,
                                 run: str = "model", described: Mapping[str, Any] | None = None) -> list[Finding]:
    """BN017: the BN statistics of an averaged model (SWA, EMA) against its
    own batch moments on ``data``.

    The averaged weights make other activations than any of the models
    averaged; the statistics BN normalizes with at inference must be those
    of the averaged weights' activations. The population moments of every
    BN layer's input on ``data`` (:func:`tb_bnstats.population_stats`, the
    averaged model's forward with BN on batch moments, other layers in
    inference mode) are compared with its moving statistics, per channel,
    as the logged gaps are (:func:`tb_bnstats.quantities.mean_gap`,
    :func:`tb_bnstats.quantities.log_var_ratio`); BN017 names every layer
    whose median channel is "far" (``THRESHOLDS`` ``gap_mean`` /
    ``gap_log_var``). Frozen layers are left out (their statistics are not
    the weights'). Nothing in the model changes.

    Args:
        model, data, num_samples, batch_size, run: as in :func:`diagnose_model`.
        described: what the framework knows of the averaged model
            (``passes.averaged_model``: ``"why"``), or None.

    Returns:
        A list of :class:`~tb_bnstats.diagnosis.finding.Finding` (empty or one).
    """
    from tb_bnstats import quantities
    from tb_bnstats.measure import passes, population

    framework = passes.for_model(model)
    named = dict(framework.bn_layers(model))
    stats = population.population_stats(model, data, num_samples, batch_size, training=False)
    why = f" ({described['why']})" if described and described.get("why") else ""
    hits = []
    for name, pop in stats.items():
        if framework.is_frozen(named[name]):
            continue
        moving_mean, moving_var, eps = framework.moving_statistics(named[name])
        gap = float(np.median(quantities.mean_gap(pop.mean, pop.var, moving_mean, eps)))
        lv = float(np.median(np.abs(quantities.log_var_ratio(pop.var, moving_var, eps))))
        if not (gap > THRESHOLDS["gap_mean"] or lv > THRESHOLDS["gap_log_var"]):
            continue
        ev = {"population_mean_gap_p50": gap, "population_abs_log_var_ratio_p50": lv, "samples": pop.samples}
        hits.append((name, "BN017", "warning", ev,
                     f"{name}: on the data given, the averaged model's own batch moments are {gap:.2f} std from "
                     f"its running mean and {math.exp(lv):.2f}x off its running variance on the median channel: "
                     f"its statistics were not computed with its weights{why}, and inference normalizes with "
                     f"them. Fix: {words.fix('BN017', passes.framework_of(model))}."))
    return group(run, hits)


def variance_shift_findings(shifts: Mapping[str, Mapping[str, float]], framework: str,
                            run: str = "model") -> list[Finding]:
    """BN004 from measured variance shifts.

    Args:
        shifts: ``{layer: {"train_vs_inference_log_var_ratio": ...,
            "moving_vs_inference_log_var_ratio": ...}}``, channel means of
            :func:`tb_bnstats.quantities.log_var_ratio` against the
            inference-mode variance of the layer's input
            (:func:`tb_bnstats.measure.population.variance_shift`; for a
            graph, :meth:`tb_bnstats.frameworks.tf1.graph.GraphCapture.variance_shift`).
        framework: the layers' framework (the fix's words).
        run: the run the findings are about.

    Returns:
        A list of :class:`~tb_bnstats.diagnosis.finding.Finding` (empty or one).
    """
    threshold = THRESHOLDS["population_variance_shift"]
    hits = []
    for name, ev in shifts.items():
        if ev["train_vs_inference_log_var_ratio"] > threshold and ev["moving_vs_inference_log_var_ratio"] > threshold:
            hits.append((name, "BN004", "warning", ev,
                         f"{name}: in training its input is {np.exp(ev['train_vs_inference_log_var_ratio']):.2f}x "
                         f"wider than at inference (dropout or noise upstream), and the moving variance follows "
                         f"training ({np.exp(ev['moving_vs_inference_log_var_ratio']):.2f}x the inference-time "
                         f"variance): inference outputs shrink. Fix: {words.fix('BN004', framework)}."))
    return group(run, hits)
