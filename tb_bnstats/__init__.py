"""tb_bnstats: BatchNormalization statistics for TensorBoard.

``BNStatsCallback`` (Keras) and ``load`` are imported lazily so that
TensorBoard can import the plugin without TensorFlow or Keras.
"""

__version__ = "0.1.0"

_LAZY = {
    "BNStatsCallback": ("tb_bnstats.callback", "BNStatsCallback"),
    "load": ("tb_bnstats.reader", "load"),
}


_SUBMODULES = ("summary", "metadata", "quantities", "reader")


def __getattr__(name):
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _SUBMODULES:
        return importlib.import_module(f"tb_bnstats.{name}")
    raise AttributeError(f"module 'tb_bnstats' has no attribute {name!r}")


__all__ = ["BNStatsCallback", "load", "summary", "metadata", "quantities"]
