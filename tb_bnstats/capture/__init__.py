"""How batch moments are captured: one protocol, one module per source.

A capture instruments a model so that its training step keeps, per BN layer,
the moments the layer normalized with, and hands them out on request
(:class:`Capture`). Everything downstream -- the recorder, the quantities,
the writer, the reader, the diagnosis, the plugin -- sees only
:class:`Reading` and :class:`tb_bnstats.format.metadata.LayerInfo`, never
the framework.

Sources: :mod:`tb_bnstats.capture.keras` (Keras 3; one module per backend).
A new framework is one new module that implements :class:`Capture`.
"""

import dataclasses
from typing import Dict, List, Optional, Protocol, Tuple, runtime_checkable

import numpy as np

from tb_bnstats.format.metadata import LayerInfo


@dataclasses.dataclass
class LayerMoments:
    """One layer's moments at one step (per-channel float arrays).

    ``batch_mean`` / ``batch_var``: what the layer normalized with (the
    biased variance). ``moving_mean`` / ``moving_var``: the averages after the
    step's update. ``updates``: updates received so far (``t``).
    ``updating`` is False when the layer ran in inference mode during the
    training step (``training=False`` or ``trainable=False``): its moving
    averages were not updated and ``batch_*`` are the moments of what it saw.
    ``init_*`` are the values the moving averages started from.
    ``samples_per_channel``: values per channel in the batch (``n``, for a
    moving variance of Bessel-corrected batch variances); None when the
    convention does not need it.
    """

    batch_mean: np.ndarray
    batch_var: np.ndarray
    moving_mean: np.ndarray
    moving_var: np.ndarray
    updates: int
    updating: bool
    init_mean: np.ndarray
    init_var: np.ndarray
    samples_per_channel: Optional[float] = None


@dataclasses.dataclass
class Reading:
    """What a capture holds after a training step.

    ``step``: the optimizer's iteration count after the step read.
    ``layers``: per layer name. ``metric_totals``: running-mean metrics as
    ``{name: (total, count)}`` (for per-step values between logs).
    """

    step: int
    layers: Dict[str, LayerMoments]
    metric_totals: Dict[str, Tuple[float, float]] = dataclasses.field(default_factory=dict)


@runtime_checkable
class Capture(Protocol):
    """What a capture provides to :class:`tb_bnstats.recorder.Recorder`."""

    @property
    def names(self) -> List[str]:
        """Every BN layer found in the model, in tracking order."""

    def layer_infos(self) -> List[LayerInfo]:
        """The layers the training step ran, in execution order (``depth``)."""

    def resume(self, step: int) -> Dict[str, str]:
        """At the start of a training run at optimizer step ``step``:
        ``{layer: "resumed" | "at_initializer"}`` for layers whose update
        count continues a restored run, or whose moving statistics are still
        at their initial values although ``step`` > 0 (lost on restore)."""

    def not_run(self) -> List[str]:
        """Layers found in the model that the training step never ran."""

    def read(self) -> Optional[Reading]:
        """The moments of the last training step; None before the first."""
