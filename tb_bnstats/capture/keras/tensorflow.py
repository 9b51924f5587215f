"""Captures Keras 3 BatchNormalization moments inside the train step, with the
TensorFlow backend, and keeps every step's moments on the device until the host
drains them.

How: each BN layer gets two instance-level wrappers, installed once per layer
(idempotent across ``fit`` calls and callbacks):

* ``layer._moments`` -- Keras calls it in training mode right before updating
  the moving averages; the wrapper keeps the exact ``(mean, variance)`` the
  layer normalizes with. No second forward pass; works under XLA
  (``jit_compile``).
* ``layer.call`` -- when the layer runs in inference mode *inside a training
  step* (called with ``training=False``, or frozen with ``trainable=False``),
  it keeps the moments of the input the layer saw and notes "not updating".

``model.train_step`` is wrapped to mark "inside a training step" while Keras
traces it, so evaluation and prediction graphs are left untouched, and to
write, at the end of each step, everything the callback reads -- the
optimizer's iteration count, each layer's update count, captured and moving
moments, the step's logs and the running-mean metrics' totals -- as one row
of a ring buffer variable on the device: row ``(n - 1) % K`` at the n-th step
(:class:`_Ring`). The host reads the whole ring in one device-to-host read
every up to K steps (:meth:`TensorFlowCapture.drain`); nothing is read per
step, so the step runs on without waiting for the host, and with
``steps_per_execution`` > 1 every step of an execution has its own row. The
wrappers add no weights: ``model.weights``, ``save`` and ``load_weights``
are unchanged. Another backend gets a module of its own beside this one,
behind the :class:`tb_bnstats.capture.Capture` protocol.

Resuming: the update counts live in this process, not in the checkpoint. At
each ``fit``'s start :meth:`TensorFlowCapture.resume` compares every trainable
layer's moving statistics with its initializers' values: different after
optimizer steps > 0 means restored, and the count goes on from the step;
equal means they were lost on restore (S3).
"""

import functools
import logging
import threading
import weakref

import numpy as np

from tb_bnstats.capture import Block, LayerBlock
from tb_bnstats.capture.keras.layers import find_batchnorm_layers, initializer_values, layer_info, mean_metrics

logger = logging.getLogger("tb_bnstats")

# The ring holds K rows: as many as fit in RING_BYTES, at most RING_MAX_STEPS,
# and never fewer than the model's steps_per_execution (a drain happens only
# between executions). Moments are stored as float32 (what Keras computes
# them in), two to a float64 slot; step, counts and metrics as float64.
RING_BYTES = 32 * 2**20
RING_MAX_STEPS = 256

_state = threading.local()
_SLOTS = weakref.WeakKeyDictionary()  # BN layer -> _LayerSlot
_HOOKS = weakref.WeakKeyDictionary()  # model -> _TrainStepHook


def end_of_data_errors():
    """What Keras' TensorFlow trainer takes as "the data ended"."""
    import tensorflow as tf

    return (StopIteration, tf.errors.OutOfRangeError)


def _in_train_step():
    return getattr(_state, "train_step_depth", 0) > 0


def ring_steps(row_bytes, steps_per_execution):
    """K, the rows of a ring of rows of ``row_bytes`` (see :data:`RING_BYTES`)."""
    return max(int(steps_per_execution), 1, min(RING_MAX_STEPS, RING_BYTES // max(int(row_bytes), 1)))


class _LayerSlot:
    """One layer's update count (an untracked ``tf.Variable``, made at train
    begin for a built layer or the first time the layer runs: a subclassed
    model builds its layers only then; under a trace, ``init_scope`` makes
    it outside the graph) and the values its moving averages started from."""

    def __init__(self, layer):
        self._layer = weakref.ref(layer)  # _SLOTS' values must not keep their keys alive
        self.hooks = weakref.WeakSet()
        self.channels = None
        self.resumed_from = None  # the optimizer step the count was resumed at
        self.moments = None  # batch_mean / batch_var variables, for moments of a nested graph

    def ensure_variables(self):
        if self.channels is not None:
            return
        import tensorflow as tf

        layer = self._layer()
        with tf.init_scope():
            channels = int(layer.moving_mean.shape[0])
            self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="tb_bnstats_updates")
            # The values the moving averages start from, as found: the
            # initializers' output on a fresh layer, pre-trained values otherwise.
            self.init_mean = np.array(layer.moving_mean.numpy(), np.float64)
            self.init_var = np.array(layer.moving_variance.numpy(), np.float64)
        self.channels = channels

    def keep(self, mean, variance, updating):
        """Keeps this step's moments for the row the train step writes. Inside
        a nested graph (a BN layer under ``ops.cond`` or a loop) the tensors
        cannot leave it: they go through two variables instead, and the count
        is advanced there, where the layer ran."""
        import tensorflow as tf

        self.ensure_variables()
        flat = lambda t: t if t.shape == (self.channels,) else tf.reshape(t, [self.channels])  # noqa: E731
        mean, variance = flat(tf.cast(mean, tf.float32)), flat(tf.cast(variance, tf.float32))
        if tf.executing_eagerly() or tf.compat.v1.get_default_graph() is getattr(_state, "graph", None):
            kept = (mean, variance)
        else:
            if self.moments is None:
                with tf.init_scope():
                    self.moments = (tf.Variable(tf.zeros([self.channels]), trainable=False, name="tb_bnstats_mean"),
                                    tf.Variable(tf.zeros([self.channels]), trainable=False, name="tb_bnstats_var"))
            self.moments[0].assign(mean)
            self.moments[1].assign(variance)
            if updating:
                self.updates.assign_add(1)
            kept = self.moments
        for hook in self.hooks:
            hook.kept[self._layer()] = (kept, updating)

    def resume(self, iterations):
        """Continues the update count of a layer restored from a checkpoint.

        A layer whose trainable moving statistics differ from its
        initializers' values, in a run whose optimizer has done
        ``iterations`` > 0 steps, and for which this process has counted no
        update yet, was restored after training: its count goes on from
        ``iterations`` (an estimate: Keras updates a trainable layer once per
        training step), and the debiased estimate starts from the
        initializers' values, so ``1 - m**t`` continues where it was. Returns
        ``"resumed"``, ``"at_initializer"`` (statistics equal to the initial
        values after ``iterations`` steps: not restored) or None (nothing to
        say: a fresh run, a frozen layer, or a count already going on in this
        process)."""
        layer = self._layer()
        if iterations <= 0 or not layer.trainable:
            return None
        self.ensure_variables()
        init_mean, init_var = initializer_values(layer)
        if (np.array_equal(layer.moving_mean.numpy(), init_mean)
                and np.array_equal(layer.moving_variance.numpy(), init_var)):
            return "at_initializer"
        counted = int(self.updates.numpy())
        if self.resumed_from is not None and counted == self.resumed_from:
            return "resumed"  # by another callback on the model, no step since
        if counted > 0:
            return None
        self.updates.assign(int(iterations))
        self.resumed_from = int(iterations)
        self.init_mean, self.init_var = np.asarray(init_mean, np.float64), np.asarray(init_var, np.float64)
        return "resumed"


class _Ring:
    """K rows on the device, each one training step: see :meth:`_TrainStepHook._write_row`
    for the layout of a row and :meth:`TensorFlowCapture._block` for its reading."""

    def __init__(self, layers, channels, updating, log_names, metric_names, steps_per_execution):
        import tensorflow as tf

        self.layers, self.channels, self.updating = layers, channels, updating
        self.log_names, self.metric_names = log_names, metric_names
        self.head = 2 + len(layers) + len(log_names) + 2 * len(metric_names)
        floats = 4 * sum(channels)
        self.packed = (floats + 1) // 2
        self.width = self.head + self.packed
        self.steps = ring_steps(8 * self.width, steps_per_execution)
        with tf.init_scope():
            self.rows = tf.Variable(tf.zeros([self.steps, self.width], tf.float64), trainable=False,
                                    name="tb_bnstats_ring")


class _TrainStepHook:
    """Wraps ``model.train_step``: marks "inside a training step", records the
    order BN layers run in, and at the end of each step writes one row of the
    ring of the layers that ran (one :class:`_Ring` per layout)."""

    def __init__(self, model):
        import tensorflow as tf

        self.execution_order = []  # BN layers, first call first, as traced
        self.kept = {}  # layer -> ((mean, variance), updating) of the step being traced
        self.rings = {}  # layout -> _Ring
        self.reads = 0  # of the rings, by the captures
        with tf.init_scope():
            self.seq = tf.Variable(0, dtype=tf.int64, trainable=False, name="tb_bnstats_steps_written")
        self._warned = False
        original = model.train_step
        model_ref = weakref.ref(model)

        @functools.wraps(original)
        def train_step(*args, **kwargs):
            outermost = not _in_train_step()
            if outermost:
                self.kept = {}
                _state.graph = tf.compat.v1.get_default_graph()
            _state.train_step_depth = getattr(_state, "train_step_depth", 0) + 1
            try:
                logs = original(*args, **kwargs)
            finally:
                _state.train_step_depth -= 1
            if outermost:
                self._write_row_or_warn(model_ref(), logs)
            return logs

        model.train_step = train_step

    def saw(self, layer):
        if not any(layer is seen for seen in self.execution_order):
            self.execution_order.append(layer)

    def _write_row_or_warn(self, model, logs):
        try:
            self._write_row(model, logs)
        except Exception as exc:  # noqa: BLE001 - never break the user's train step
            if not self._warned:
                self._warned = True
                logger.warning("tb_bnstats: cannot keep BN statistics from this train step: %s", exc)

    def _write_row(self, model, logs):
        """One row: ``[n, iterations, update count per layer, logs...,
        (total, count) per running-mean metric...]`` as float64, then every
        layer's ``batch_mean, batch_var, moving_mean, moving_var`` as float32,
        two to a float64 (``tf.bitcast``), written at row ``(n - 1) % K``
        of the ring; ``n`` counts the rows written."""
        import tensorflow as tf

        layers = [layer for layer in self.execution_order if layer in self.kept]
        slots = [_SLOTS[layer] for layer in layers]
        logs = {k: v for k, v in (logs or {}).items()
                if tf.is_tensor(v) and v.shape.rank == 0 and (v.dtype.is_floating or v.dtype.is_integer)}
        metrics = mean_metrics(model)
        execution_steps = int(getattr(model, "steps_per_execution", 1) or 1)
        layout = (tuple(id(layer) for layer in layers), tuple(self.kept[layer][1] for layer in layers),
                  tuple(logs), tuple(name for name, _ in metrics), execution_steps)  # K >= steps_per_execution
        ring = self.rings.get(layout)
        if ring is None:
            ring = self.rings[layout] = _Ring(
                [weakref.ref(layer) for layer in layers], [p.channels for p in slots], layout[1], layout[2],
                layout[3], execution_steps)
        n = self.seq.assign_add(1)
        head = [n, model.optimizer.iterations]
        floats = []
        for layer, slot in zip(layers, slots):
            (mean, variance), updating = self.kept[layer]
            in_graph = not isinstance(mean, tf.Variable)
            head.append(slot.updates.assign_add(1) if updating and in_graph else slot.updates.read_value())
            # float32 whatever the layer's dtype (a float64 model, a float16 policy): the row's layout.
            floats += [mean, variance, tf.cast(layer.moving_mean, tf.float32),
                       tf.cast(layer.moving_variance, tf.float32)]
        head += list(logs.values())
        for _, metric in metrics:
            head += [metric.total, metric.count]
        head = tf.stack([tf.cast(tf.convert_to_tensor(v), tf.float64) for v in head])
        if floats:
            floats = tf.concat([tf.convert_to_tensor(v) for v in floats], axis=0)
            if ring.packed * 2 != int(floats.shape[0]):
                floats = tf.concat([floats, tf.zeros([1], tf.float32)], axis=0)
            head = tf.concat([head, tf.bitcast(tf.reshape(floats, [ring.packed, 2]), tf.float64)], axis=0)
        ring.rows.scatter_nd_update(tf.reshape(tf.math.floormod(n - 1, ring.steps), [1, 1]), head[None, :])


def _never_raise(fn, *args):
    """Capture code runs inside the user's train step: a failure there is
    logged once and the step goes on without it."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        if not getattr(_state, "warned", False):
            _state.warned = True
            logger.warning("tb_bnstats: capture failed inside the train step, statistics will be missing: %s", exc)
        return None


def _instrument_layer(layer, hook):
    """Installs the two wrappers on ``layer`` once; returns its slot."""
    from keras import backend, ops

    slot = _SLOTS.get(layer)
    if slot is not None:
        slot.hooks.add(hook)
        return slot
    slot = _LayerSlot(layer)
    slot.hooks.add(hook)
    original_moments = layer._moments
    original_call = layer.call

    def _moments(inputs, mask):
        mean, variance = original_moments(inputs, mask)
        if _in_train_step():
            _never_raise(slot.keep, mean, variance, True)
        return mean, variance

    def _note_ran():
        slot.ensure_variables()
        for h in slot.hooks:
            h.saw(layer)

    def _record_inference_mode(inputs, mask):
        _note_ran()
        x = ops.cast(inputs, backend.result_type(inputs.dtype, "float32"))
        mean, variance = original_moments(x, mask)
        slot.keep(mean, variance, updating=False)

    @functools.wraps(original_call)
    def call(inputs, training=None, mask=None):
        if _in_train_step():
            if training and layer.trainable:
                _never_raise(_note_ran)
            else:
                _never_raise(_record_inference_mode, inputs, mask)
        return original_call(inputs, training=training, mask=mask)

    layer._moments = _moments
    layer.call = call
    _SLOTS[layer] = slot
    return slot


class TensorFlowCapture:
    """Instruments ``model`` (idempotent) and drains its BN moments: a
    :class:`tb_bnstats.capture.Capture`.

    :meth:`drain` returns every step written to the ring since the last
    drain (or since this capture was made), with ``steps`` = the optimizer's
    iteration count after each step.
    """

    def __init__(self, model):
        self.model = model
        self._named = find_batchnorm_layers(model)
        hook = _HOOKS.get(model)
        if hook is None:
            hook = _HOOKS[model] = _TrainStepHook(model)
            # A train function traced before this hook existed would bypass it.
            model.train_function = None
        self._hook = hook
        new_layers = [layer for _, layer in self._named if layer not in _SLOTS]
        self._slots = {name: _instrument_layer(layer, hook) for name, layer in self._named}
        if new_layers:
            model.train_function = None
        self._drained = int(hook.seq.numpy())  # rows written before this capture are not its own

    @property
    def names(self):
        """Names of every BN layer found, in tracking order."""
        return [name for name, _ in self._named]

    def _ran(self):
        """``[(name, layer)]`` of the BN layers the traced train step ran."""
        ran = {id(layer) for layer in self._hook.execution_order}
        return [(name, layer) for name, layer in self._named if id(layer) in ran]

    def layer_infos(self):
        """LayerInfo of every layer that ran in the traced train step, in
        execution order (depth 0 = closest to the input)."""
        order = {id(layer): i for i, layer in enumerate(self._hook.execution_order)}
        infos = [layer_info(name, layer, order[id(layer)], self._slots[name].init_mean, self._slots[name].init_var)
                 for name, layer in self._ran()]
        return sorted(infos, key=lambda info: info.depth)

    def resume(self, iterations):
        """At train begin: :meth:`_LayerSlot.resume` on every built BN layer;
        returns ``{name: "resumed" | "at_initializer"}`` of the layers
        concerned (an unbuilt layer is counted from 0 when it runs)."""
        states = {}
        for name, layer in self._named:
            if getattr(layer, "moving_mean", None) is not None:
                state = self._slots[name].resume(iterations)
                if state is not None:
                    states[name] = state
        return states

    def not_run(self):
        """Names of BN layers found in the model that the train step never ran."""
        ran = {name for name, _ in self._ran()}
        return [name for name, _ in self._named if name not in ran]

    @property
    def drain_every(self):
        """The smallest K of this model's rings (None before the first traced
        step): the ring written next may be any of them."""
        rings = list(self._hook.rings.values())
        return min(r.steps for r in rings) if rings else None

    @property
    def reads(self):
        """Device-to-host reads of this model's rings so far (by every
        capture of it in this process)."""
        return self._hook.reads

    def drain(self):
        """Every row written since the last drain, one read per ring (one
        ring unless the train step was traced with other layers), as
        :class:`tb_bnstats.capture.Block` s in step order: rows of several
        rings are merged by their row count ``n`` and cut into one block per
        run of rows of the same ring."""
        parts, full = [], False
        for ring in list(self._hook.rings.values()):
            rows = ring.rows.numpy()
            self._hook.reads += 1
            rows = rows[rows[:, 0] > self._drained]
            full |= len(rows) == ring.steps  # every row is new: older ones may have been overwritten
            if len(rows):
                parts.append((ring, rows))
        if not parts:
            return []
        seq = np.concatenate([rows[:, 0] for _, rows in parts])
        part = np.concatenate([np.full(len(rows), k) for k, (_, rows) in enumerate(parts)])
        local = np.concatenate([np.arange(len(rows)) for _, rows in parts])
        order = np.argsort(seq, kind="stable")
        written = int(seq[order[-1]])
        lost = written - self._drained - len(seq) if full else 0
        self._drained = written
        blocks = []
        for run in np.split(order, np.flatnonzero(np.diff(part[order])) + 1):  # runs of rows of one ring
            ring, rows = parts[part[run[0]]]
            blocks.append(self._block(ring, rows[local[run]]))
        blocks[0].lost = lost
        return blocks

    def _block(self, ring, rows):
        """A :class:`Block` of the rows of ``ring`` (layout: :meth:`_TrainStepHook._write_row`)."""
        names = {id(layer): name for name, layer in self._named}
        layers, offset = {}, 2
        counts = rows[:, 2:2 + len(ring.layers)]
        offset += len(ring.layers)
        logs = {name: rows[:, offset + i] for i, name in enumerate(ring.log_names)}
        offset += len(ring.log_names)
        totals = {name: (rows[:, offset + 2 * i], rows[:, offset + 2 * i + 1])
                  for i, name in enumerate(ring.metric_names)}
        floats = np.ascontiguousarray(rows[:, ring.head:]).view(np.float32)
        start = 0
        for i, (ref, channels, updating) in enumerate(zip(ring.layers, ring.channels, ring.updating)):
            layer = ref()
            chunk = floats[:, start:start + 4 * channels].reshape(len(rows), 4, channels)
            start += 4 * channels
            name = names.get(id(layer)) if layer is not None else None
            if name is None:
                continue
            slot = self._slots[name]
            layers[name] = LayerBlock(
                batch_mean=chunk[:, 0], batch_var=chunk[:, 1], moving_mean=chunk[:, 2], moving_var=chunk[:, 3],
                updates=counts[:, i].astype(np.int64), updating=bool(updating), init_mean=slot.init_mean,
                init_var=slot.init_var)
        return Block(steps=rows[:, 1].astype(np.int64), layers=layers, logs=logs, metric_totals=totals)
