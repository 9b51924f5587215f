"""Findings that need the model, not just the logs.

:func:`diagnose_model` measures on the live model
(:mod:`tb_bnstats.measure`) what training logs cannot show: S5, the variance
shift of dropout before BN (Li et al., CVPR 2019). The callback calls it at
the end of each ``fit`` when it has a probe batch.
"""


from collections.abc import Mapping
from typing import Any

import numpy as np

from tb_bnstats.diagnosis import group, words
from tb_bnstats.diagnosis.codes import THRESHOLDS
from tb_bnstats.diagnosis.finding import Finding


def diagnose_model(model: Any, data: Any, num_samples: int = 2048, batch_size: int = 32,
                   run: str = "model") -> list[Finding]:
    """BN004 on the live model.

    For every trainable BN layer the population variance of its input is
    measured with the other layers in training and in inference mode
    (:func:`tb_bnstats.measure.population.variance_shift`); BN004 is raised
    when training-mode batches are wider than inference-mode ones by more
    than ``THRESHOLDS["population_variance_shift"]`` (channel mean of the log
    ratio) and the moving variance sits with the training side: inference
    then divides by a too-large variance. Nothing in the model changes.

    Args:
        model: a built Keras model or a ``torch.nn.Module``.
        data: arrays or batches of training-like data.
        num_samples: as in :func:`tb_bnstats.population_stats`.
        batch_size: as in :func:`tb_bnstats.population_stats`.
        run: the run the findings are about.

    Returns:
        A list of :class:`~tb_bnstats.diagnosis.finding.Finding` (empty or one).

    Raises:
        ValueError: as :func:`tb_bnstats.population_stats`.
    """
    from tb_bnstats.measure import passes, population

    return variance_shift_findings(population.variance_shift(model, data, num_samples, batch_size),
                                   passes.framework_of(model), run)


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
