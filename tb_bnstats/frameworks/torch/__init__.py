"""PyTorch: ``torch.nn`` BatchNorm modules in a training loop, through
:class:`.monitor.BNStatsMonitor` (``tb_bnstats.torch.BNStatsMonitor``).

* :mod:`.monitor`: the adapter, the loop's ``step()`` over the recorder;
* :mod:`.capture`: the capture (forward hooks, a ring per module, DDP ranks);
* :mod:`.passes`: the measurement passes over ``torch.nn.Module``;
* :mod:`.words`: how findings speak of PyTorch modules.

Importing this package imports no torch.
"""

import sys
from typing import Any

from tb_bnstats.frameworks import Framework

# LayerInfo.framework of PyTorch modules.
PYTORCH = "pytorch"


def owns(model: Any) -> bool:
    """Whether ``model`` is a ``torch.nn.Module``."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


FRAMEWORK = Framework(name="PyTorch", layer_frameworks=(PYTORCH,), words="tb_bnstats.frameworks.torch.words",
                      owns=owns, passes="tb_bnstats.frameworks.torch.passes")
