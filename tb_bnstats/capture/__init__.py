"""How batch moments are captured: one small interface, one module per source.

A capture exposes ``layers`` (a list of :class:`tb_bnstats.metadata.LayerInfo`)
and ``read()``, returning a :class:`Reading`: the step and, per layer, the raw
moments of the last training step. Everything downstream (quantities, summary,
reader, plugin) depends only on this, never on Keras.
"""

import dataclasses
from typing import Dict, Tuple

import numpy as np


@dataclasses.dataclass
class LayerMoments:
    """One layer's moments at one step (per-channel float arrays).

    ``updating`` is False when the layer ran in inference mode during the
    training step (``training=False`` or ``trainable=False``): its moving
    averages were not updated and ``batch_*`` are the moments of what it saw.
    ``init_*`` are the values the moving averages started from.
    """

    batch_mean: np.ndarray
    batch_var: np.ndarray
    moving_mean: np.ndarray
    moving_var: np.ndarray
    updates: int
    updating: bool
    init_mean: np.ndarray
    init_var: np.ndarray


@dataclasses.dataclass
class Reading:
    """``step``: the optimizer's iteration count after the step read.
    ``metric_totals``: running-mean metrics as ``{name: (total, count)}``."""

    step: int
    layers: Dict[str, LayerMoments]
    metric_totals: Dict[str, Tuple[float, float]] = dataclasses.field(default_factory=dict)
