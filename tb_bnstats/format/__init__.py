"""The log format: what tb_bnstats writes into event files and reads back.

* :mod:`tb_bnstats.format.metadata`: plugin name, tags, versioned summary
  metadata and :class:`~tb_bnstats.format.metadata.LayerInfo`.
* :mod:`tb_bnstats.format.records`: the in-memory form of a run's records
  (:class:`~tb_bnstats.format.records.RunData`), built in one place for the
  reader, the plugin and the writer's own history.

Nothing here imports another part of tb_bnstats, TensorFlow or Keras.
"""
