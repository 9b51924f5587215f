"""tb_bnstats for the Hugging Face Trainer: ``from tb_bnstats.transformers import BNStatsCallback``.

The callback lives in :mod:`tb_bnstats.frameworks.transformers`; this module
is the public name. Importing it imports transformers and torch."""

from tb_bnstats.frameworks.transformers.callback import BNStatsCallback

__all__ = ["BNStatsCallback"]
