"""Keras: Keras 3 on its TensorFlow, JAX and torch backends, and tf_keras
(Keras 2) models, through :class:`.callback.BNStatsCallback`
(``tb_bnstats.BNStatsCallback``).

* :mod:`.callback`: the adapter, Keras' callback hooks over the recorder;
* :mod:`.capture`: the capture, one module per backend and tf_keras';
* :mod:`.passes`: the measurement passes over Keras 3 models;
* :mod:`.words`: how findings speak of Keras 3 and tf_keras layers;
* :mod:`.internals`: the private Keras API the capture relies on, checked.

Importing this package imports no Keras.
"""

import sys
from typing import Any

from tb_bnstats.frameworks import Framework

# LayerInfo.framework of the layers this folder logs.
KERAS = "keras"  # Keras 3, any backend
TF_KERAS = "tf_keras"  # Keras 2: the tf-keras package, tf.keras under TF_USE_LEGACY_KERAS=1


def owns(model: Any) -> bool:
    """Whether ``model`` is a Keras 3 layer or model (a tf_keras model is
    not: the measurements take Keras 3 models only)."""
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(model, keras.layers.Layer)


FRAMEWORK = Framework(name="Keras 3", layer_frameworks=(KERAS, TF_KERAS), words="tb_bnstats.frameworks.keras.words",
                      owns=owns, passes="tb_bnstats.frameworks.keras.passes")
