"""tb_bnstats for Flax (NNX and Linen): ``from tb_bnstats.flax import BNStatsMonitor``.

The monitor and everything Flax-specific live in
:mod:`tb_bnstats.frameworks.flax`; this module is the public name.
``COLLECTION`` is the Linen collection the moments travel in
(``mutable=["batch_stats", COLLECTION]``)."""

from tb_bnstats.frameworks.flax.capture import COLLECTION
from tb_bnstats.frameworks.flax.monitor import BNStatsMonitor

__all__ = ["BNStatsMonitor", "COLLECTION"]
