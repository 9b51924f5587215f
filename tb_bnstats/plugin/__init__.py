"""The TensorBoard plugin behind the "BN Convergence" tab.

TensorBoard imports :mod:`tb_bnstats.plugin.loader` at start-up through the
``tensorboard_plugins`` entry point; nothing in this package imports
TensorFlow or Keras.
"""
