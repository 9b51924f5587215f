"""tb_bnstats for PyTorch Lightning: ``from tb_bnstats.lightning import BNStatsCallback``.

The callback lives in :mod:`tb_bnstats.frameworks.lightning`; this module is
the public name. Importing it imports Lightning (``lightning.pytorch``, else
``pytorch_lightning``) and torch."""

from tb_bnstats.frameworks.lightning.callback import BNStatsCallback

__all__ = ["BNStatsCallback"]
