"""Captures BatchNormalization moments in a TensorFlow 1-style graph
(``tf.compat.v1``: placeholders, ``Session.run``, ``MonitoredTrainingSession``).

A graph has no layer objects to wrap: the layers are found in the graph
(:func:`find_layers`), each is given a few fetches of its own
(:class:`GraphCapture`), and what a train call fetched becomes one host row.
The user-facing objects are in :mod:`tb_bnstats.compat.v1`.

Found:

* the layers of ``tf.compat.v1.layers.batch_normalization`` (tf_keras) and
  of ``tf.keras.layers.BatchNormalization`` called in a graph: a variable
  scope with ``moving_mean`` and ``moving_variance`` variables. Their
  input is the float tensor that enters the scope from outside, their
  ``training`` the boolean that does (an ``is_training`` placeholder) or a
  constant, their momentum and epsilon are read from the constants the
  layer built (``AssignMovingAvg/decay``, the momentum of the fused update,
  the ``FusedBatchNorm`` epsilon), also inside ``tf.cond`` branches;
* ``tf.compat.v1.nn.fused_batch_norm(..., is_training=True)`` ops that
  carry their own moving statistics: ``mean=`` / ``variance=`` variables and
  ``exponential_avg_factor`` < 1 (the op computes the new averages itself,
  ``momentum = 1 - exponential_avg_factor``). A fused op without them has
  moving averages the graph does not name: log them with
  :func:`hand_written`.

Per layer and train call, the fetch is one float64 vector of the batch
moments of the layer's input (``tf.nn.moments`` in float32, over every axis
but the channels': the moments a layer in training mode normalizes with,
biased variance), its values per channel, the value of its ``training``
tensor, and its moving statistics *after* the call: when the layer's update
ops run in the call (they are among the ops the train fetches need,
:func:`ops_needed`), the
read depends on them; when they do not, a plain read is that value too
(nothing changes the variables). The fetches never make an update op run
that the train call would not run.

The update count ``t`` advances in a call where the layer ran in training
mode and its update ops ran: a train op built without
``tf.control_dependencies(UPDATE_OPS)`` leaves it at 0 (S2, BN002).
"""

import dataclasses
import functools
import math
import warnings

import numpy as np

from tb_bnstats.capture import Block, LayerBlock
from tb_bnstats.format.metadata import LayerInfo
from tb_bnstats.frameworks import tensorflow_ops
from tb_bnstats.frameworks.tf1 import TF1

# A host buffer of at most this many train calls between drains.
HOST_ROWS = 256
_FUSED = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
_IF = ("If", "StatelessIf")
_ASSIGN_SUB = ("AssignSubVariableOp", "AssignSub")  # a moving-average update (resource, reference variable)
# Ops that take what a Session.run must be given or consumes: a fetch needing one the train call does not
# need would fail (a placeholder not fed) or take a batch from the user's input pipeline.
_INPUT_OPS = ("Placeholder", "PlaceholderV2", "IteratorGetNext", "IteratorGetNextSync", "IteratorGetNextAsOptional",
              "MultiDeviceIteratorGetNextFromShard", "QueueDequeue", "QueueDequeueV2", "QueueDequeueMany",
              "QueueDequeueManyV2", "QueueDequeueUpTo", "QueueDequeueUpToV2", "ReaderRead", "ReaderReadV2")


@dataclasses.dataclass
class GraphLayer:
    """One BN layer of a graph: what to fetch and how it averages.

    ``inputs``: the tensor it normalizes (None when ``batch_mean`` /
    ``batch_var`` are given instead, hand-written BN). ``moving_mean`` /
    ``moving_var``: its variables. ``momentum``: Keras' convention (the
    weight kept on the old average; ``decay`` in TF1 words). ``training``:
    a boolean tensor or a Python bool. ``update_ops``: the ops that update
    the moving statistics (None: assumed to run in every train call).
    ``moving_var_unbiased``: the moving variance averages Bessel-corrected
    variances (``FusedBatchNorm``'s).
    """

    name: str
    moving_mean: object
    moving_var: object
    momentum: float
    epsilon: float
    inputs: object = None
    batch_mean: object = None
    batch_var: object = None
    training: object = True
    update_ops: list | None = None
    moving_var_unbiased: bool = False
    channel_axis: int = -1
    layer_class: str = "BatchNormalization"
    ema_of: str = "variance"

    @functools.cached_property
    def channels(self):
        return int(np.prod(self.moving_mean.shape))


# What a train call fetches of a layer is one float64 vector -- each fetched tensor costs the session about
# 30 us (on a 4-BN conv net in one same-run comparison: 24 tensors made a 20 ms step 1.067x, one vector per
# layer 1.019x): its batch mean, batch variance, moving mean and moving variance ([C] each), then its
# training value (1 / 0) and its values per channel.
_PARTS = ("batch_mean", "batch_var", "moving_mean", "moving_var")


def _part(vectors, name, channels):
    """``name`` of :data:`_PARTS` from layer vectors ([..., 4C + 2])."""
    i = _PARTS.index(name)
    return vectors[..., i * channels:(i + 1) * channels]


def _training(vectors, channels):
    return vectors[..., 4 * channels] != 0


def _samples(vectors, channels):
    return vectors[..., 4 * channels + 1]


def _scope_of(variable_name, leaf):
    name = variable_name.split(":")[0]
    return name[:-len(leaf) - 1] if name.endswith("/" + leaf) else None


def _function_nodes(graph):
    """``{function name: [NodeDef]}`` of the graph's function library (the
    bodies of ``tf.cond`` branches, control flow v2)."""
    return {f.signature.name: list(f.node_def) for f in graph.as_graph_def().library.function}


def _const_value(node_def):
    import tensorflow as tf

    return tf.make_ndarray(node_def.attr["value"].tensor)


def _scope_ops(graph, scope):
    return [op for op in graph.get_operations() if op.name.startswith(scope + "/")]


def _branch_nodes(ops, functions):
    """The NodeDefs inside the ``tf.cond`` branches of ``ops``."""
    nodes = []
    for op in ops:
        if op.type in _IF:
            for branch in ("then_branch", "else_branch"):
                nodes += functions.get(op.get_attr(branch).name, [])
    return nodes


def _momentum_of(graph, scope, ops, functions):
    """The momentum tf_keras' layer built into the graph, or None.

    Non-fused: ``AssignMovingAvg/decay`` = 1 - momentum (a constant, also
    inside the update's ``tf.cond``). Fused: ``AssignMovingAvg/sub`` is
    ``1 - momentum`` with the momentum a constant, or with a ``training``
    tensor the output of a ``tf.cond`` whose true branch is that constant
    (an ``If`` op, or a ``Merge`` under control flow v1)."""
    for op in ops:
        if op.type == "Const" and op.name.endswith("AssignMovingAvg/decay"):
            return 1.0 - float(_const_value(op.node_def))
    for node in _branch_nodes(ops, functions):
        if node.op == "Const" and node.name.endswith("AssignMovingAvg/decay"):
            return 1.0 - float(_const_value(node))
    try:
        sub = graph.get_operation_by_name(scope + "/AssignMovingAvg/sub")
    except KeyError:
        return None
    source = sub.inputs[1].op
    while source.type == "Identity":
        source = source.inputs[0].op
    if source.type == "Merge":  # control flow v1 (disable_v2_behavior): Merge(false branch, true branch)
        source = source.inputs[1].op
        while source.type == "Identity":
            source = source.inputs[0].op
    if source.type == "Const":
        return float(_const_value(source.node_def))
    if source.type in _IF:
        consts = [n for n in functions.get(source.get_attr("then_branch").name, []) if n.op == "Const"]
        if len(consts) == 1:
            return float(_const_value(consts[0]))
    return None


def _fused_kernel(ops, functions):
    """The ``NodeDef`` of the scope's ``FusedBatchNorm`` kernel (among
    ``ops`` or inside their ``tf.cond`` branches), or None: a non-fused layer."""
    nodes = [op.node_def for op in ops if op.type in _FUSED] or _branch_nodes(ops, functions)
    return next((node for node in nodes if node.op in _FUSED), None)


def _epsilon_of(ops, kernel):
    if kernel is not None:
        return float(kernel.attr["epsilon"].f)
    for op in ops:
        if op.type == "Const" and op.name.endswith("batchnorm/add/y"):
            return float(_const_value(op.node_def))
    return None


def _channel_axis_of(ops, kernel, inputs, channels):
    """The channel axis of a layer's input: the fused kernel's
    ``data_format`` (``NC..``: 1), else the one axis the non-fused
    ``moments/mean`` of the input itself leaves out of its reduction (not
    that of a reshaped input: a virtual batch size adds an axis), else the
    last axis of that size (then the second)."""
    import tensorflow as tf

    if kernel is not None:
        return 1 if kernel.attr["data_format"].s.decode().startswith("NC") else -1
    rank = inputs.shape.rank
    for op in ops:
        if op.type == "Mean" and op.name.endswith("moments/mean") and op.inputs[0].shape.rank == rank:
            axes = tf.get_static_value(op.inputs[1])
            if axes is None:
                continue
            kept = sorted(set(range(rank)) - {int(a) % rank for a in np.ravel(axes)})
            if len(kept) == 1 and inputs.shape[kept[0]] in (channels, None):
                return kept[0]
    return -1 if inputs.shape[-1] == channels else 1


def _layer_of_scope(graph, scope, moving_mean, moving_var, update_collection, functions):
    """A :class:`GraphLayer` for a tf_keras BN scope, or ``(None, why)``."""
    import tensorflow as tf

    ops = _scope_ops(graph, scope)
    inside = {op.name for op in ops}
    channels = int(np.prod(moving_mean.shape))
    inputs, training = None, None
    for op in ops:
        for t in op.inputs:
            if t.op.name in inside or t.op.name.startswith(scope + "/"):
                continue
            if t.dtype == tf.bool and training is None:
                training = t
            elif (inputs is None and t.dtype.is_floating and t.shape.rank is not None and t.shape.rank >= 2
                  and channels in (t.shape[-1], t.shape[1])):
                inputs = t
    if inputs is None:
        return None, "no input tensor found entering its scope"
    momentum = _momentum_of(graph, scope, ops, functions)
    kernel = _fused_kernel(ops, functions)
    epsilon = _epsilon_of(ops, kernel)
    # The update ops: UPDATE_OPS' (tf.compat.v1.layers adds its updates there), else the layer's own
    # (a tf.keras layer in a graph lists them in layer.updates only): the moving-average assignments in
    # its scope, or the tf.cond around them.
    update_ops = [op for op in update_collection if op.name.startswith(scope + "/")]
    if not update_ops:
        update_ops = [op for op in ops if op.type in _ASSIGN_SUB and "AssignMovingAvg" in op.name]
        update_ops += [op for op in ops if op.type in _IF and any(
            n.op in _ASSIGN_SUB for n in _branch_nodes([op], functions))]
    if training is None:
        training = bool(update_ops)  # a constant training=True builds update ops, training=False none
    if momentum is None and training is not False:
        return None, "its momentum could not be read from the graph"
    axis = _channel_axis_of(ops, kernel, inputs, channels)
    renorm = any(v.name.startswith(scope + "/moving_stddev") for v in graph.get_collection("variables"))
    return GraphLayer(
        name=scope, moving_mean=moving_mean, moving_var=moving_var, momentum=0.99 if momentum is None else momentum,
        epsilon=1e-3 if epsilon is None else epsilon, inputs=inputs, training=training, update_ops=update_ops,
        moving_var_unbiased=kernel is not None, channel_axis=axis,
        layer_class="tf.compat.v1.layers.batch_normalization", ema_of="stddev" if renorm else "variance"), None


def _variable_of(tensor, variables):
    """The variable whose value ``tensor`` is (through reads and identities), or None."""
    by_op = {v.op.name: v for v in variables}  # a resource variable's handle op, a ref variable's own
    op = tensor.op
    for _ in range(4):
        if op.name in by_op:
            return by_op[op.name]
        if op.type not in ("Identity", "ReadVariableOp") or not op.inputs:
            return None
        op = op.inputs[0].op
    return None


def _raw_fused_layers(graph, taken, variables):
    """:class:`GraphLayer` s of ``tf.compat.v1.nn.fused_batch_norm`` training
    ops outside the scopes found (module docstring), and ``{op name: why}``
    for those that cannot be logged."""
    layers, skipped = [], {}
    for op in graph.get_operations():
        if op.type not in _FUSED or not op.get_attr("is_training") or any(
                op.name.startswith(scope + "/") for scope in taken):
            continue
        factor = float(op.get_attr("exponential_avg_factor")) if "exponential_avg_factor" in op.node_def.attr else 1.0
        moving_mean = _variable_of(op.inputs[3], variables) if len(op.inputs) > 3 else None
        moving_var = _variable_of(op.inputs[4], variables) if len(op.inputs) > 4 else None
        if moving_mean is None or moving_var is None or not factor < 1.0:
            skipped[op.name] = ("its moving averages are not mean= / variance= variables updated with "
                                "exponential_avg_factor < 1; name them with add_layer(...)")
            continue
        averages = {op.outputs[1].name, op.outputs[2].name}
        update_ops = [other for other in graph.get_operations()
                      if other.type in ("AssignVariableOp", "Assign") and other.inputs
                      and any(t.name in averages for t in _value_sources(other))]
        data_format = op.get_attr("data_format").decode()
        layers.append(GraphLayer(
            name=op.name.rsplit("/", 1)[0] if "/" in op.name else op.name, moving_mean=moving_mean,
            moving_var=moving_var, momentum=1.0 - factor, epsilon=float(op.get_attr("epsilon")),
            inputs=op.inputs[0], update_ops=update_ops, moving_var_unbiased=True,
            channel_axis=1 if data_format.startswith("NC") else -1, layer_class="fused_batch_norm"))
    return layers, skipped


def _value_sources(assign_op, depth=3):
    """The tensors an assign op's value comes from, through a few pass-through ops."""
    frontier, seen = [assign_op.inputs[-1]], []
    for _ in range(depth):
        seen += frontier
        frontier = [t for f in frontier if f.op.type in ("Identity", "Cast") for t in f.op.inputs]
    return seen + frontier


def find_layers(graph):
    """The BN layers of ``graph`` (module docstring).

    Returns:
        ``(layers, skipped)``: :class:`GraphLayer` s in graph order, and
        ``{name: why}`` of BN ops found that cannot be logged.
    """
    import tensorflow as tf

    variables = graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
    by_scope = {}
    for v in variables:
        for leaf, key in (("moving_mean", 0), ("moving_variance", 1)):
            scope = _scope_of(v.name, leaf)
            if scope is not None:
                by_scope.setdefault(scope, [None, None])[key] = v
    functions = _function_nodes(graph) if any(op.type in _IF for op in graph.get_operations()) else {}
    update_collection = graph.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
    layers, skipped = [], {}
    for scope, (mean, var) in by_scope.items():
        if mean is None or var is None:
            continue
        layer, why = _layer_of_scope(graph, scope, mean, var, update_collection, functions)
        if layer is None:
            skipped[scope] = why
        else:
            layers.append(layer)
    raw, raw_skipped = _raw_fused_layers(graph, list(by_scope), variables)
    skipped.update(raw_skipped)
    return layers + raw, skipped


def hand_written(name, moving_mean, moving_var, momentum, inputs=None, batch_mean=None, batch_var=None,
                 epsilon=1e-3, training=True, update_ops=None, channel_axis=-1, moving_var_unbiased=False):
    """A :class:`GraphLayer` named by its tensors and variables (module
    docstring of :mod:`tb_bnstats.compat.v1`, ``add_layer``).

    Raises:
        ValueError: neither ``inputs`` nor both ``batch_mean`` and
            ``batch_var``, ``moving_var_unbiased`` without ``inputs`` (the
            values per channel ``n`` of ``var_B * n / (n - 1)`` are taken
            from them), a momentum outside [0, 1), or moving statistics that
            are not variables of the graph.
    """
    if inputs is None and (batch_mean is None or batch_var is None):
        raise ValueError(f"{name}: give inputs= (the tensor the layer normalizes) or both batch_mean= and "
                         "batch_var= (what it normalizes with, e.g. tf.nn.moments' outputs)")
    if moving_var_unbiased and inputs is None:
        raise ValueError(f"{name}: moving_var_unbiased=True needs inputs= (the tensor the layer normalizes): the "
                         "batch variance is compared as var * n / (n - 1), with n the values per channel in it")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"{name}: momentum (TF1's decay: moving = decay * moving + (1 - decay) * batch) must be "
                         f"in [0, 1), got {momentum!r}")
    for what, v in (("moving_mean", moving_mean), ("moving_var", moving_var)):
        if not hasattr(v, "read_value"):
            raise ValueError(f"{name}: {what} must be the variable holding the moving average, got {v!r}")
    return GraphLayer(name=name, moving_mean=moving_mean, moving_var=moving_var, momentum=float(momentum),
                      epsilon=float(epsilon), inputs=inputs, batch_mean=batch_mean, batch_var=batch_var,
                      training=training,
                      # ops, whatever the assign returned (a tensor, or a resource variable's unread value)
                      update_ops=None if update_ops is None else [getattr(u, "op", u) for u in update_ops],
                      moving_var_unbiased=bool(moving_var_unbiased), channel_axis=channel_axis,
                      layer_class="hand-written")


def fetch_key(fetches):
    """A hashable key of ``Session.run`` fetches (their names), for what is
    worked out once per set of fetches."""
    import tensorflow as tf

    return tuple(getattr(item, "name", item) for item in tf.nest.flatten(fetches))


def ops_needed(fetches, graph):
    """The names of every op a ``Session.run`` of ``fetches`` (any nest of
    tensors, ops, variables and their names) runs: the fetched ops and,
    transitively, their inputs and control inputs."""
    import tensorflow as tf

    stack = []
    for item in tf.nest.flatten(fetches):
        if item is None:
            continue
        element = graph.as_graph_element(item) if isinstance(item, str) else item
        element = getattr(element, "op", element)  # a tensor or a variable: its op
        if isinstance(element, tf.Operation):
            stack.append(element)
    seen = set()
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return seen


class GraphCapture:
    """A :class:`tb_bnstats.capture.Capture` of a graph's BN layers: builds
    each layer's fetches (module docstring) when made (before the graph is
    finalized), and keeps what each train call fetched on the host until
    :meth:`drain`.

    Args:
        graph: the ``tf.Graph``.
        layers: the :class:`GraphLayer` s.
        metrics: ``{name: scalar tensor}`` fetched with them (the loss...).
    """

    def __init__(self, graph, layers, metrics=None):
        import tensorflow as tf

        self.model = graph
        self.layers = list(layers)
        self.metrics = dict(metrics or {})
        self._rows = []
        self._counts = {layer.name: 0 for layer in self.layers}
        self._init = {}
        self._left_out = {}  # name -> True once a logged call ran it in training mode without its update ops
        self._seen = set()  # the layers a logged call ran
        self._fetch_cache = {}
        self.reads = 0
        with graph.as_default(), tf.name_scope("tb_bnstats"):
            self._plain = {layer.name: self._layer_fetches(layer, with_updates=False) for layer in self.layers}
            self._after = {layer.name: self._layer_fetches(layer, with_updates=True) for layer in self.layers
                           if layer.update_ops}
            self._metric_fetches = {name: tf.cast(t, tf.float64) for name, t in self.metrics.items()}
        for layer in self.layers:
            self._init[layer.name] = tuple(_initial_value(v, fill) for v, fill in
                                           ((layer.moving_mean, 0.0), (layer.moving_var, 1.0)))

    @staticmethod
    def _layer_fetches(layer, with_updates):
        import tensorflow as tf

        with tf.name_scope(layer.name.replace(":", "_")):
            if layer.inputs is not None:
                mean, var = tensorflow_ops.channel_moments(layer.inputs, layer.channel_axis)
                samples = tensorflow_ops.values_per_channel(layer.inputs, layer.channels)
            else:
                mean, var = tf.cast(layer.batch_mean, tf.float32), tf.cast(layer.batch_var, tf.float32)
                samples = tf.constant(float("nan"), tf.float64)
            training = tf.convert_to_tensor(layer.training, tf.bool)
            # A control edge to a tf.cond (If) op does not wait for the assignments inside its branch once
            # the cond is lowered for the session (measured: the read came before them); a data edge from
            # its output, the value the branch assigned, does.
            waits = [tf.identity(op.outputs[0]) if op.type in _IF and op.outputs else op
                     for op in (layer.update_ops or [])] if with_updates else []
            with tf.control_dependencies(waits):
                moving = (tf.identity(layer.moving_mean.read_value()), tf.identity(layer.moving_var.read_value()))
            # float32 moments as float64: exact
            parts = [tf.reshape(tf.cast(t, tf.float64), [-1]) for t in (mean, var, moving[0], moving[1])]
            return tf.concat(parts + [tf.reshape(tf.cast(training, tf.float64), [1]),
                                      tf.reshape(tf.cast(samples, tf.float64), [1])], axis=0)

    # -- per train call ------------------------------------------------------------

    def fetches(self, train_fetches, fed=()):
        """What to add to a train call of ``train_fetches``: per layer the
        call runs, its fetches, read after its update ops where those run
        (module docstring), and the metrics whose inputs the call runs or is
        fed (``fed``: the names of the ops of the call's feed keys).

        A layer the call does not run is left out (it is not logged at that
        step): its fetches could need a placeholder the call does not feed,
        or take a batch from an input pipeline the call does not read.

        Returns:
            ``(fetches, updates_run)``: ``updates_run`` ``{layer: bool}``
            goes to :meth:`keep`; ``({}, None)`` when the graph has BN
            layers and the call runs none (nothing to add).
        """
        key = (fetch_key(train_fetches), frozenset(fed))
        cached = self._fetch_cache.get(key)
        if cached is None:  # a new set of train fetches: which layers and update ops it runs, found once
            needed = ops_needed(train_fetches, self.model)
            ran = [layer for layer in self.layers if self._runs_in(layer, needed)]
            runs = {layer.name: layer.update_ops is None or (bool(layer.update_ops) and all(
                op.name in needed for op in layer.update_ops)) for layer in ran}
            fetches = {name: (self._after[name] if runs[name] and name in self._after else self._plain[name])
                       for name in runs}
            metrics = {name: t for name, t in self._metric_fetches.items()
                       if self._given(self.metrics[name], needed | set(fed))}
            # A graph without BN layers logs its metrics; one with them, the calls that run a layer.
            cached = ({"layers": fetches, "metrics": metrics}, runs) if ran or not self.layers else ({}, None)
            self._fetch_cache[key] = cached
            if len(self._fetch_cache) > 64:
                self._fetch_cache.pop(next(iter(self._fetch_cache)))
        return cached

    def _runs_in(self, layer, needed):
        """Whether a call running the ops ``needed`` runs ``layer``: its
        input (or its moments) and its ``training`` tensor are computed."""
        import tensorflow as tf

        computes = [layer.inputs] if layer.inputs is not None else [layer.batch_mean, layer.batch_var]
        if tf.is_tensor(layer.training):
            computes.append(layer.training)
        return all(t.op.name in needed for t in computes)

    def _given(self, tensor, needed):
        """Whether every feed or input-pipeline op ``tensor`` needs is one
        the call runs anyway (fetching it then changes nothing)."""
        graph = self.model
        return all(name in needed for name in ops_needed(tensor, graph)
                   if graph.get_operation_by_name(name).type in _INPUT_OPS)

    def keep(self, step, results, updates_run, values=None):
        """Keeps one train call's ``results`` (of :meth:`fetches`) as the row
        of ``step``; ``values``: other numbers of the step (its loss...).

        Returns:
            True when :meth:`layer_infos` changed with this call (a layer
            run for the first time, or first run without its update ops).
        """
        layers, changed = {}, False
        for layer in self.layers:
            got = results["layers"].get(layer.name)
            if got is None:  # not run by this call
                continue
            changed |= layer.name not in self._seen
            self._seen.add(layer.name)
            training = bool(_training(got, layer.channels))
            if training and not updates_run[layer.name]:
                changed |= layer.name not in self._left_out
                self._left_out[layer.name] = True
            layers[layer.name] = (got, training and updates_run[layer.name])
        logs = {name: float(v) for name, v in results["metrics"].items()}
        logs.update({name: float(v) for name, v in (values or {}).items()})
        self._rows.append((int(step), layers, logs))
        return changed

    def variance_shift(self, session, feed_dict):
        """S5 on the live graph: each layer's input variance on one batch
        (``feed_dict``) run with every layer's ``training`` tensor fed True
        (dropout driven by the same tensor on) and fed False, against its
        moving variance. Runs only the layers' own fetches (no update op).

        Returns:
            ``{name: {"train_vs_inference_log_var_ratio": ...,
            "moving_vs_inference_log_var_ratio": ...}}``, channel means of
            :func:`tb_bnstats.quantities.log_var_ratio` (layers whose
            ``training`` is a tensor and whose input is known).
        """
        from tb_bnstats import quantities

        layers = [layer for layer in self.layers if layer.inputs is not None and not isinstance(layer.training, bool)]
        if not layers:
            return {}
        fetches = {layer.name: self._plain[layer.name] for layer in layers}
        modes = {}
        for mode in (True, False):
            feed = dict(feed_dict)
            feed.update({layer.training: mode for layer in layers})
            modes[mode] = session.run(fetches, feed)
        out = {}
        for layer in layers:
            train, inference = modes[True][layer.name], modes[False][layer.name]
            # The variances as the moving one averages them (Bessel-corrected for a fused kernel).
            c = layer.channels
            # c and layer bound as defaults (B023), though the lambda is only called in this iteration.
            comparable = lambda got, c=c, layer=layer: quantities.comparable_batch_var(  # noqa: E731
                _part(got, "batch_var", c), float(_samples(got, c)), layer.moving_var_unbiased)
            inference_var = comparable(inference)
            out[layer.name] = {
                "train_vs_inference_log_var_ratio": float(np.mean(quantities.log_var_ratio(
                    comparable(train), inference_var, layer.epsilon))),
                "moving_vs_inference_log_var_ratio": float(np.mean(quantities.log_var_ratio(
                    _part(inference, "moving_var", c), inference_var, layer.epsilon))),
            }
        return out

    # -- the Capture protocol --------------------------------------------------------

    @property
    def names(self):
        return [layer.name for layer in self.layers]

    def _ran(self):
        """The layers a logged call ran (all of them before the first)."""
        return [layer for layer in self.layers if layer.name in self._seen or not self._seen]

    def layer_infos(self):
        infos = []
        for depth, layer in enumerate(self._ran()):
            init_mean, init_var = self._init[layer.name]
            infos.append(LayerInfo(
                name=layer.name, channels=layer.channels, momentum=layer.momentum,
                epsilon=layer.epsilon, init_mean=float(np.mean(init_mean)), init_var=float(np.mean(init_var)),
                ema_of=layer.ema_of, moving_var_unbiased=layer.moving_var_unbiased, depth=depth,
                layer_class=layer.layer_class, framework=TF1,
                update_ops_left_out=self._left_out.get(layer.name, False)))
        return infos

    def resume(self, step):
        """At the first train call of a run at global step ``step`` > 0: a
        layer whose moving statistics are not at their initial values was
        restored (its count goes on from ``step``, one update per step, an
        estimate); one at them after ``step`` steps lost them on restore
        (S3, BN008)."""
        states = {}
        if step <= 0 or not self._rows:
            return states
        _, layers, _ = self._rows[0]
        for layer in self.layers:
            if layer.name not in layers:
                continue
            got, updated = layers[layer.name]
            init_mean, init_var = self._init[layer.name]
            c = layer.channels
            moving_mean = _part(got, "moving_mean", c)
            if updated:  # read after the first update: from the initial values, it is one step of the average
                m = layer.momentum
                at_init = np.allclose(moving_mean, m * init_mean + (1 - m) * _part(got, "batch_mean", c),
                                      rtol=1e-4, atol=1e-6)
            else:
                at_init = np.allclose(moving_mean, init_mean) and np.allclose(_part(got, "moving_var", c), init_var)
            if at_init:
                states[layer.name] = "at_initializer"
            elif self._counts[layer.name] == 0:
                self._counts[layer.name] = int(step)
                states[layer.name] = "resumed"
        return states

    def not_run(self):
        ran = {layer.name for layer in self._ran()}
        return [layer.name for layer in self.layers if layer.name not in ran]

    @property
    def drain_every(self):
        return HOST_ROWS

    def drain(self):
        """The kept train calls as blocks: one per run of consecutive calls
        that ran the same layers (one block when every call runs them all)."""
        rows, self._rows = self._rows, []
        if not rows:
            return []
        self.reads += 1
        blocks, start = [], 0
        for i in range(1, len(rows) + 1):
            if i == len(rows) or rows[i][1].keys() != rows[start][1].keys():
                blocks.append(self._block(rows[start:i]))
                start = i
        return blocks

    def _block(self, rows):
        """One :class:`Block` of kept calls that ran the same layers."""
        steps = np.array([step for step, _, _ in rows], np.int64)
        layers = {}
        for layer in self.layers:
            if layer.name not in rows[0][1]:
                continue
            vectors = np.stack([r[1][layer.name][0] for r in rows])  # [S, 4C + 2]
            c = layer.channels
            samples = _samples(vectors, c)
            updated = np.array([r[1][layer.name][1] for r in rows], np.int64)
            updates = self._counts[layer.name] + np.cumsum(updated)
            self._counts[layer.name] = int(updates[-1])
            init_mean, init_var = self._init[layer.name]
            layers[layer.name] = LayerBlock(
                **{part: np.ascontiguousarray(_part(vectors, part, c)) for part in _PARTS}, updates=updates,
                updating=bool(updated.any()), init_mean=init_mean, init_var=init_var,
                samples_per_channel=samples if layer.moving_var_unbiased and np.all(np.isfinite(samples)) else None)
        names = sorted({name for _, _, logs in rows for name in logs})
        logs = {name: np.array([r[2].get(name, math.nan) for r in rows], np.float64) for name in names}
        return Block(steps=steps, layers=layers, logs=logs)


def _initial_value(variable, fill):
    """A variable's initial value as numpy when its initializer is a constant
    (tf_keras' zeros / ones), else ``fill``."""
    import tensorflow as tf

    try:
        value = tf.get_static_value(variable.initial_value)
    except Exception:  # noqa: BLE001 - not every initializer is constant
        value = None
    if value is None:
        warnings.warn(f"tb_bnstats: {variable.name}: initializer not constant, taken as {fill}", RuntimeWarning,
                      stacklevel=1)
        return np.full(int(np.prod(variable.shape)), fill)
    return np.broadcast_to(np.asarray(value, np.float64), tuple(variable.shape)).ravel().copy()
