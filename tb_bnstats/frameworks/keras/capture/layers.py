"""What every Keras 3 backend shares: finding the BatchNormalization layers
of a model, their initial moving values, their description
(:class:`tb_bnstats.format.metadata.LayerInfo`) and the model's running-mean
metrics. Backend-free (``keras`` and ``keras.ops`` only)."""

import numpy as np

from tb_bnstats.format import metadata
from tb_bnstats.frameworks.keras import KERAS, internals


def find_batchnorm_layers(model, classes=None):
    """Every ``keras.layers.BatchNormalization`` (subclasses included) at any
    depth -- nested Functional/Sequential models, custom layers, subclassed
    models -- as ``[(unique_name, layer)]`` in tracking order. Names are
    Keras' layer paths (tf_keras': layer names), made unique with a ``#k``
    suffix if needed. ``classes``: the BN classes to look for (default
    Keras 3's; tf_keras passes its own)."""
    import keras

    classes = classes or (keras.layers.BatchNormalization,)
    found, seen, used = [], set(), set()
    for layer in internals.flatten_layers(model):
        if isinstance(layer, classes) and id(layer) not in seen:
            seen.add(id(layer))
            name = getattr(layer, "path", None) or layer.name
            base, k = name, 2
            while name in used:
                name, k = f"{base}#{k}", k + 1
            used.add(name)
            found.append((name, layer))
    return found


def called_with_training_false(model):
    """``{id(layer)}`` of the BN layers that a functional graph of ``model``
    (its own, or that of a functional model inside it) calls with
    ``training=False`` -- the layer itself, or a layer or model around it
    (``base(x, training=False)``). The graphs keep each call's arguments
    (``Node.arguments``). ``fit`` overrides that ``False`` with its own
    ``training=True`` (``keras/src/models/functional.py``, ``operation_fn``;
    keras-team/keras#20285): such a layer trains unless it is frozen."""
    import keras

    marked = set()
    graphs = [model] + internals.flatten_layers(model)
    for graph in graphs:
        for node in internals.graph_nodes(graph):  # a functional model's own calls
            if internals.node_kwargs(node).get("training") is not False:
                continue
            called = node.operation
            for layer in [called] + internals.nested_layers(called):
                if isinstance(layer, keras.layers.BatchNormalization):
                    marked.add(id(layer))
    return marked


def steps_per_execution(model):
    """The training steps one call of the model's train function runs (1
    when unset; tf_keras keeps it in a variable, read outside any trace)."""
    value = getattr(model, "steps_per_execution", 1)
    if hasattr(value, "numpy"):  # a tf.Variable (tf_keras)
        import tensorflow as tf

        with tf.init_scope():
            value = value.numpy()
    return int(value or 1)


def channels_of(layer):
    """A BN layer's channels: the size of its moving mean (tf_keras keeps it
    as [1, ..., 1, C] with a virtual batch size)."""
    return int(np.prod(layer.moving_mean.shape))


def index_by_identity(variables):
    """``{id(variable): position}``: where each variable's value is in a
    state list ordered like ``variables`` (stateless calls)."""
    return {id(v): i for i, v in enumerate(variables)}


def initializer_values(layer):
    """``(moving_mean, moving_variance)`` a fresh copy of ``layer`` starts
    from: its initializers evaluated on the variables' shape (zeros and ones
    by default)."""
    from keras import ops

    shape = tuple(layer.moving_mean.shape)
    dtype = layer.moving_mean.dtype
    return (ops.convert_to_numpy(layer.moving_mean_initializer(shape, dtype=dtype)),
            ops.convert_to_numpy(layer.moving_variance_initializer(shape, dtype=dtype)))


def mean_metrics(model):
    """``[(name, metric)]`` of the model's running-mean metrics (those with
    ``total`` and ``count`` variables: the loss tracker, accuracy...)."""
    found, stack = [], list(model.metrics)
    while stack:
        metric = stack.pop(0)
        if hasattr(metric, "total") and hasattr(metric, "count"):
            found.append((metric.name, metric))
        stack.extend(getattr(metric, "metrics", None) or [])
    return found


def layer_info(name, layer, depth, init_mean, init_var, graph_training_false=False, replicas=1,
               moving_per_replica=False, global_moments=False, moving_var_unbiased=False, framework=KERAS,
               batch_samples=0):
    """The :class:`LayerInfo` of a Keras BatchNormalization layer.

    Args:
        name: its unique name (:func:`find_batchnorm_layers`).
        layer: the built layer.
        depth: its position in execution order (0 = closest to the input).
        init_mean, init_var: per-channel values its moving averages started
            from (channel averages go into the description).
        graph_training_false: the model's graph calls it (or a model around
            it) with ``training=False`` (:func:`called_with_training_false`).
        moving_var_unbiased: its moving variance averages Bessel-corrected
            batch variances (tf_keras' fused kernel); Keras 3's averages the
            biased ones.
        framework: ``KERAS`` (Keras 3) or ``TF_KERAS`` (Keras 2), :mod:`tb_bnstats.frameworks.keras`.
        batch_samples: examples in a training batch, as the train step got
            it (0: unknown).

    Returns:
        Its :class:`tb_bnstats.format.metadata.LayerInfo`.
    """
    return metadata.LayerInfo(
        name=name,
        channels=channels_of(layer),
        momentum=float(layer.momentum),
        epsilon=float(layer.epsilon),
        init_mean=float(np.mean(init_mean)),
        init_var=float(np.mean(init_var)),
        ema_of="stddev" if getattr(layer, "renorm", False) else "variance",
        moving_var_unbiased=bool(moving_var_unbiased),
        depth=depth,
        layer_class=type(layer).__name__,
        framework=framework,
        trainable=bool(layer.trainable),
        synchronized=bool(getattr(layer, "synchronized", False)) or bool(global_moments),
        renorm=bool(getattr(layer, "renorm", False)),
        frozen=not layer.trainable,  # Keras' BN normalizes with its moving averages when not trainable
        graph_training_false=bool(graph_training_false),
        replicas=int(replicas),
        moving_per_replica=bool(moving_per_replica),
        batch_samples=int(batch_samples),
    )
