"""Measurements on a live model that change nothing in it (unless asked:
:func:`~tb_bnstats.measure.population.recalibrate`):

* :mod:`~tb_bnstats.measure.data`: arrays and datasets as batches;
* :mod:`~tb_bnstats.measure.population`: population statistics
  ("PreciseBN"), recalibration, the variance shift of dropout before BN;
* :mod:`~tb_bnstats.measure.gap`: the one train/inference pass (the probe);
* :mod:`~tb_bnstats.frameworks.keras.passes`: the Keras forward passes they
  run, where the backend shows.
"""
