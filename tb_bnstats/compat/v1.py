"""tb_bnstats for TensorFlow 1-style graphs: ``BNStatsFetches`` for plain
``sess.run`` loops and ``BNStatsHook`` for ``MonitoredTrainingSession``.

They and everything graph-specific live in :mod:`tb_bnstats.frameworks.tf1`;
this module is the public name."""

from tb_bnstats.frameworks.tf1.monitor import BNStatsFetches, BNStatsHook

__all__ = ["BNStatsFetches", "BNStatsHook"]
