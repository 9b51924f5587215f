"""tb_bnstats for PyTorch: ``from tb_bnstats.torch import BNStatsMonitor``.

The monitor and everything PyTorch-specific live in
:mod:`tb_bnstats.frameworks.torch`; this module is the public name."""

from tb_bnstats.frameworks.torch.monitor import BNStatsMonitor

__all__ = ["BNStatsMonitor"]
