"""TensorFlow 1-style graphs (``tf.compat.v1.Session``, placeholders,
``MonitoredTrainingSession``), through :mod:`.monitor`
(``tb_bnstats.compat.v1``: ``BNStatsFetches``, ``BNStatsHook``).

* :mod:`.monitor`: the adapters, a ``sess.run`` loop's fetches and a
  ``SessionRunHook``, over the recorder;
* :mod:`.graph`: the capture, the graph's BN layers found and fetched;
* :mod:`.words`: how findings speak of graph code (``UPDATE_OPS``,
  ``is_training``, ``Saver``).

The measurements (:func:`tb_bnstats.recalibrate` and the rest) do not take
graphs. Importing this package imports no TensorFlow.
"""

from tb_bnstats.frameworks import Framework

# LayerInfo.framework of a graph's layers.
TF1 = "tf.compat.v1"

FRAMEWORK = Framework(name="TensorFlow 1-style graphs", layer_frameworks=(TF1,),
                      words="tb_bnstats.frameworks.tf1.words")
