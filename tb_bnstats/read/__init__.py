"""Reading logs back: :mod:`tb_bnstats.read.reader` (through TensorBoard's
data provider, for :func:`tb_bnstats.load` and the plugin) and
:mod:`tb_bnstats.read.integrity` (which parts of the event files on disk
cannot be read). Imports neither TensorFlow nor Keras."""
