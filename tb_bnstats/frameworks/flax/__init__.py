"""Flax: ``flax.nnx.BatchNorm`` and ``flax.linen.BatchNorm`` in a JAX training
loop, through :class:`.monitor.BNStatsMonitor` (``tb_bnstats.flax.BNStatsMonitor``).

* :mod:`.monitor`: the adapter, the loop's ``step()`` over the recorder;
* :mod:`.capture`: the capture (the moments from inside the compiled step, a
  ring on the device);
* :mod:`.passes`: the measurements' forward passes (population statistics,
  recalibration, the train/inference gap);
* :mod:`.words`: how findings speak of Flax layers.

Importing this package imports no JAX or Flax.
"""

import sys
from typing import Any

from tb_bnstats.frameworks import Framework

# LayerInfo.framework of Flax layers (NNX and Linen).
FLAX = "flax"


def is_nnx(model: Any) -> bool:
    """Whether ``model`` is an ``nnx.Module`` (without importing Flax)."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(model, nnx.Module)


def is_linen_pair(model: Any) -> bool:
    """Whether ``model`` is a Linen ``(module, variables)`` pair."""
    linen = sys.modules.get("flax.linen")
    return (linen is not None and isinstance(model, tuple) and len(model) == 2
            and isinstance(model[0], linen.Module) and hasattr(model[1], "get"))


def owns(model: Any) -> bool:
    """Whether ``model`` is one of Flax's: an ``nnx.Module`` or a Linen ``(module, variables)`` pair."""
    return is_nnx(model) or is_linen_pair(model)


FRAMEWORK = Framework(name="Flax", layer_frameworks=(FLAX,), words="tb_bnstats.frameworks.flax.words", owns=owns,
                      passes="tb_bnstats.frameworks.flax.passes")
