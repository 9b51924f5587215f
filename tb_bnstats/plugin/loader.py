"""Entry point of the BN Convergence tab (``tensorboard_plugins`` group).

TensorBoard imports this module at start-up, outside any ``try``: an import
error here would stop TensorBoard for every user. It therefore imports only
TensorBoard's ``base_plugin``; the plugin itself (numpy, the reader) is
imported inside :meth:`BNStatsLoader.load`, where TensorBoard logs failures
instead of dying. Nothing here or there imports TensorFlow or Keras.
"""

from typing import Any

from tensorboard.plugins import base_plugin


class BNStatsLoader(base_plugin.TBLoader):
    """Builds :class:`tb_bnstats.plugin.plugin.BNStatsPlugin`."""

    def load(self, context: Any) -> Any:
        from tb_bnstats.plugin.plugin import BNStatsPlugin

        return BNStatsPlugin(context)
