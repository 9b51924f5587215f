"""tb_bnstats for older TensorFlow code: :mod:`tb_bnstats.compat.v1`
(TensorFlow 1-style graphs: ``tf.compat.v1.Session``, placeholders,
``MonitoredTrainingSession``). tf_keras (Keras 2) models take the usual
:class:`tb_bnstats.BNStatsCallback`."""
