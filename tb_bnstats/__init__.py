"""tb_bnstats: BatchNormalization statistics for TensorBoard.

The public API, imported lazily so that TensorBoard can import the plugin
without TensorFlow or Keras:

* ``BNStatsCallback`` -- the Keras callback (:mod:`tb_bnstats.frameworks.keras.callback`);
  for PyTorch, ``from tb_bnstats.torch import BNStatsMonitor`` (:mod:`tb_bnstats.torch`);
* ``Options`` -- the recording options every adapter takes (:mod:`tb_bnstats.options`);
* ``Writer`` -- log moments from any training loop (:mod:`tb_bnstats.write.summary`);
* ``load`` -- read logs back as numpy (:mod:`tb_bnstats.read.reader`);
* ``diagnose``, ``Finding`` -- what is wrong (:mod:`tb_bnstats.diagnosis`);
* ``diagnose_model`` -- the checks that need the model (:mod:`tb_bnstats.diagnosis.live`);
* ``population_stats``, ``recalibrate`` -- PreciseBN (:mod:`tb_bnstats.measure.population`);
* ``gap_report`` -- the train/inference gap of a model (:mod:`tb_bnstats.measure.gap`).

The measurements and ``diagnose_model`` take a Keras model or a
``torch.nn.Module``.

The package layout follows the data: ``capture`` -> ``quantities`` ->
``write`` -> event files -> ``read`` -> ``diagnosis`` / ``plugin`` -> the
frontend; ``recorder`` runs the loop, ``measure`` measures a live model,
``format`` describes the log format; each framework is one folder of
``frameworks``, registered there (docs/ARCHITECTURE.md).
"""

__version__ = "0.1.0"

_LAZY = {
    "BNStatsCallback": ("tb_bnstats.frameworks.keras.callback", "BNStatsCallback"),
    "Options": ("tb_bnstats.options", "Options"),
    "Writer": ("tb_bnstats.write.summary", "Writer"),
    "load": ("tb_bnstats.read.reader", "load"),
    "diagnose": ("tb_bnstats.diagnosis", "diagnose"),
    "Finding": ("tb_bnstats.diagnosis.finding", "Finding"),
    "diagnose_model": ("tb_bnstats.diagnosis.live", "diagnose_model"),
    "population_stats": ("tb_bnstats.measure.population", "population_stats"),
    "recalibrate": ("tb_bnstats.measure.population", "recalibrate"),
    "gap_report": ("tb_bnstats.measure.gap", "gap_report"),
}


def __getattr__(name):
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'tb_bnstats' has no attribute {name!r}")


__all__ = sorted(_LAZY)
