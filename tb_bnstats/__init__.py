"""tb_bnstats: BatchNormalization statistics for TensorBoard.

``BNStatsCallback``, ``population_stats`` and ``recalibrate`` (Keras),
``load`` and ``diagnose`` are imported lazily so that
TensorBoard can import the plugin without TensorFlow or Keras.
"""

__version__ = "0.1.0"

_LAZY = {
    "BNStatsCallback": ("tb_bnstats.callback", "BNStatsCallback"),
    "load": ("tb_bnstats.reader", "load"),
    "diagnose": ("tb_bnstats.diagnosis", "diagnose"),
    "Finding": ("tb_bnstats.diagnosis", "Finding"),
    "population_stats": ("tb_bnstats.population", "population_stats"),
    "recalibrate": ("tb_bnstats.population", "recalibrate"),
}


_SUBMODULES = ("summary", "metadata", "quantities", "reader", "diagnosis", "population")


def __getattr__(name):
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _SUBMODULES:
        return importlib.import_module(f"tb_bnstats.{name}")
    raise AttributeError(f"module 'tb_bnstats' has no attribute {name!r}")


__all__ = ["BNStatsCallback", "load", "diagnose", "Finding", "population_stats", "recalibrate", "summary",
           "metadata", "quantities"]
