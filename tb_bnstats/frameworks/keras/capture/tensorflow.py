"""Captures Keras 3 BatchNormalization moments inside the train step, with the
TensorFlow backend, and keeps every step's moments on the device until the host
drains them.

The BN layers get the shared wrappers of :mod:`tb_bnstats.frameworks.keras.capture.hooks`.
``model.train_step`` is wrapped to mark "inside a training step" while Keras
traces it, and to write, at the end of each step, everything the callback
reads -- the optimizer's iteration count, each layer's update count,
captured and moving moments, the step's logs and the running-mean metrics'
totals -- as one row of a ring buffer variable on the device: row
``(n - 1) % K`` at the n-th step (:class:`_Ring`; the columns and their
float64 storage: :mod:`tb_bnstats.capture.ring`). The host reads the whole ring in one
device-to-host read every up to K steps (:meth:`KerasCapture.drain`);
nothing is read per step, so the step runs on without waiting for the host,
and with ``steps_per_execution`` > 1 every step of an execution has its own
row. The variables are untracked: ``model.weights``, ``save`` and
``load_weights`` are unchanged.

Resuming: the update counts live in this process, not in the checkpoint
(:meth:`tb_bnstats.frameworks.keras.capture.hooks.LayerSlot.resume`).
"""

import weakref

from tb_bnstats.capture import ring
from tb_bnstats.capture.rows import Layout, ring_steps
from tb_bnstats.frameworks import tensorflow_ops
from tb_bnstats.frameworks.keras.capture import hooks
from tb_bnstats.frameworks.keras.capture.hooks import FIRST_BATCH_ROWS, KerasCapture, LayerSlot, StepHook
from tb_bnstats.frameworks.keras.capture.layers import mean_metrics, steps_per_execution

_SLOTS = weakref.WeakKeyDictionary()  # BN layer -> _LayerSlot
_HOOKS = weakref.WeakKeyDictionary()  # model -> _TrainStepHook


def end_of_data_errors():
    """What Keras' TensorFlow trainer takes as "the data ended"."""
    import tensorflow as tf

    return (StopIteration, tf.errors.OutOfRangeError)


class _LayerSlot(LayerSlot):
    """A layer's update count as an untracked ``tf.Variable``, made the first
    time the layer is seen (at train begin for a built layer, or when it
    first runs: a subclassed model builds its layers only then; under a
    trace, ``init_scope`` makes it outside the graph)."""

    def __init__(self, layer):
        super().__init__(layer)
        self.updates = None
        self.moments = None  # batch_mean / batch_var / samples variables, for what a nested graph keeps

    def remember_initial(self, moving_mean=None, moving_var=None):
        if self.updates is None:
            import tensorflow as tf

            with tf.init_scope():
                self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="tb_bnstats_updates")
                super().remember_initial()

    def count(self):
        self.remember_initial()
        return int(self.updates.numpy())

    def set_count(self, value):
        self.updates.assign(int(value))

    def keep(self, mean, variance, updating, inputs=None):
        """Keeps this step's moments for the row the train step writes, and
        the values per channel of ``inputs`` (this replica's slice; the row
        carries them on several replicas or for an unbiased moving
        variance). Inside a nested graph (a BN layer under ``ops.cond`` or a
        loop) the tensors cannot leave it: they go through two variables
        instead, and the count is advanced there, where the layer ran."""
        import tensorflow as tf

        self.remember_initial()
        channels = self.channels
        flat = lambda t: t if t.shape == (channels,) else tf.reshape(t, [channels])  # noqa: E731
        mean, variance = flat(tf.cast(mean, tf.float32)), flat(tf.cast(variance, tf.float32))
        samples = None if inputs is None else tensorflow_ops.values_per_channel(inputs, channels)
        if tf.executing_eagerly() or tf.compat.v1.get_default_graph() is getattr(hooks._state, "graph", None):
            kept = (mean, variance)
        else:
            if self.moments is None:
                with tf.init_scope():
                    self.moments = (tf.Variable(tf.zeros([channels]), trainable=False, name="tb_bnstats_mean"),
                                    tf.Variable(tf.zeros([channels]), trainable=False, name="tb_bnstats_var"),
                                    tf.Variable(0.0, dtype=tf.float64, trainable=False, name="tb_bnstats_samples"))
            self.moments[0].assign(mean)
            self.moments[1].assign(variance)
            if samples is not None:
                self.moments[2].assign(samples)
                samples = self.moments[2]
            if updating:
                self.updates.assign_add(1)
            kept = self.moments[:2]
        for hook in self.hooks:
            hook.kept[self.layer] = (kept, updating, samples)


def replicas_in_sync():
    """How many replicas run the training step together: R inside
    ``tf.distribute.MirroredStrategy.run`` over R devices, else 1."""
    import tensorflow as tf

    if tf.distribute.in_cross_replica_context():
        return 1
    context = tf.distribute.get_replica_context()
    return 1 if context is None else int(context.num_replicas_in_sync)


class _Ring:
    """K rows on the device in one float64 variable, the layout's row in
    :data:`tb_bnstats.capture.ring.FLOAT64` storage (``row_format``), written
    with one ``scatter_update`` per step; read back by :meth:`read`."""

    def __init__(self, row_format, steps_per_execution):
        import tensorflow as tf

        self.layout, self.row_format = row_format.layout, row_format
        self.steps = ring_steps(row_format.row_bytes, steps_per_execution)
        with tf.init_scope():
            self.rows = tf.Variable(tf.zeros(row_format.shape("rows", self.steps), row_format.arrays["rows"].dtype),
                                    trainable=False, name="tb_bnstats_ring")

    def read(self):
        """The whole ring, in one device-to-host read, as :class:`Rows`."""
        return self.row_format.rows({"rows": self.rows.numpy()})


class _TensorFlowOps:
    """:class:`tb_bnstats.capture.ring.Ops` in TensorFlow: a run of scalars
    is one ``tf.stack``, the parts one ``tf.concat``."""

    def vector(self, parts, dtype, out=None):
        import tensorflow as tf

        joined, run = [], []
        for part in parts:
            part = tf.cast(tf.convert_to_tensor(part), dtype)
            if part.shape.rank == 0:
                run.append(part)
                continue
            if run:
                joined, run = joined + [tf.stack(run)], []
            joined.append(part)
        if run:
            joined.append(tf.stack(run))
        return tf.concat(joined, axis=0) if len(joined) > 1 else joined[0] if joined else tf.zeros([0], dtype)

    def bitcast_pairs(self, vector):
        import tensorflow as tf

        return tf.bitcast(tf.reshape(vector, [-1, 2]), tf.float64)


_OPS = _TensorFlowOps()


class _FirstBatch:
    """The first training samples on the device, until
    ``FIRST_BATCH_ROWS``: one untracked variable per tensor of the batch,
    ``[FIRST_BATCH_ROWS + 1, ...]`` (a fixed shape, as XLA needs; rows past
    the end are written to the extra last row and dropped), and the rows
    kept. Each step copies its rows in while fewer are kept (``tf.cond``), so
    every later step pays one scalar read."""

    def __init__(self, data):
        import tensorflow as tf

        self.structure = tf.nest.map_structure(lambda _: 0, data)  # the nesting only, no graph tensor kept
        leaves = tf.nest.flatten(data)
        if not all(tf.is_tensor(t) and t.shape.rank and t.shape[1:].is_fully_defined() for t in leaves):
            raise ValueError("the training batches' shapes are not fixed beyond the batch axis")
        with tf.init_scope():
            self.rows = tf.Variable(0, dtype=tf.int32, trainable=False, name="tb_bnstats_first_rows")
            self.values = [tf.Variable(tf.zeros([FIRST_BATCH_ROWS + 1] + t.shape[1:].as_list(), t.dtype),
                                       trainable=False, name="tb_bnstats_first_batch") for t in leaves]

    def copy_in(self, data):
        """The ops that copy ``data``'s rows in while fewer than
        ``FIRST_BATCH_ROWS`` are kept (traced into the step)."""
        import tensorflow as tf

        tf.nest.assert_same_structure(self.structure, data)
        leaves = tf.nest.flatten(data)

        def copy():
            batch = tf.shape(leaves[0])[0]
            # scatter_update: a MirroredVariable (made under a strategy's scope) has no scatter_nd_update.
            at = tf.minimum(self.rows + tf.range(batch), FIRST_BATCH_ROWS)
            assigns = [variable.scatter_update(tf.IndexedSlices(t, at)) for variable, t in zip(self.values, leaves)]
            with tf.control_dependencies(assigns):
                return self.rows.assign(tf.minimum(self.rows + batch, FIRST_BATCH_ROWS))

        tf.cond(self.rows < FIRST_BATCH_ROWS, copy, lambda: tf.identity(self.rows))

    def read(self):
        """The rows kept so far as numpy (a structure like the step's data),
        or None before the first step."""
        import tensorflow as tf

        rows = int(self.rows.numpy())
        if rows == 0:
            return None
        return tf.nest.pack_sequence_as(self.structure, [v.numpy()[:rows].copy() for v in self.values])


class _TrainStepHook(StepHook):
    """Wraps ``model.train_step`` (:meth:`StepHook.wrap_train_step`), and at
    the end of each step writes one row of the ring of the layers that ran
    (one :class:`_Ring` per layout and ``steps_per_execution``); the first
    batch is kept on the device (:class:`_FirstBatch`)."""

    def __init__(self, model):
        import tensorflow as tf

        super().__init__()
        with tf.init_scope():
            self.seq = tf.Variable(0, dtype=tf.int64, trainable=False, name="tb_bnstats_steps_written")

        def remember_graph():
            hooks._state.graph = tf.compat.v1.get_default_graph()

        self._device_batch = None
        self._batch_rows = None  # the first batch's size on the device, when the trace's batch axis is not static
        self.wrap_train_step(model, self._write_row, on_begin=remember_graph)

    def note_batch(self, data):
        """The first batch's size: its static shape when the trace has one,
        else one ``tf.Variable`` that the step sets while it is still 0 (a
        scalar op per step, read once by :meth:`batch_samples`). Left
        unknown on several replicas (each normalizes its own slice)."""
        import tensorflow as tf

        if self.batch_rows or replicas_in_sync() > 1:
            return
        rows = hooks.static_rows(data)
        if rows or tf.executing_eagerly():
            self.batch_rows = rows
            return
        if self._batch_rows is None:
            with tf.init_scope():
                self._batch_rows = tf.Variable(0, dtype=tf.int64, trainable=False, name="tb_bnstats_batch_rows")
        n = tf.cast(tf.shape(tf.nest.flatten(data)[0])[0], tf.int64)
        self._batch_rows.assign(tf.where(self._batch_rows > 0, self._batch_rows, n))

    def batch_samples(self):
        if not self.batch_rows and self._batch_rows is not None:
            self.batch_rows = int(self._batch_rows.numpy())
        return int(self.batch_rows)

    def keep_first_batch(self, data):
        """Copies the batch in (:class:`_FirstBatch`); on several replicas the
        replicas' slices, joined in replica order (the global batch)."""
        import tensorflow as tf

        if replicas_in_sync() > 1:
            def joined(strategy, data):
                self.guarded(self._copy_first, tf.nest.map_structure(
                    lambda v: tf.concat(strategy.experimental_local_results(v), axis=0), data))
            tf.distribute.get_replica_context().merge_call(joined, args=(data,))
        else:
            self._copy_first(data)

    def _copy_first(self, data):
        if self._device_batch is None:
            self._device_batch = _FirstBatch(data)
        self._device_batch.copy_in(data)

    def first_batch(self):
        if self._first_batch is None and self._device_batch is not None:
            self._first_batch = self._device_batch.read()
        return super().first_batch()

    def written(self):
        return int(self.seq.numpy())

    def _write_row(self, model, logs):
        """One row (:class:`_Ring`) at row ``(n - 1) % K`` of the ring of
        this step's layout; ``n`` counts the rows written. On R replicas
        (``MirroredStrategy``) each replica hands its own moments, moving
        statistics (each keeps its own copy) and values per channel to one
        ``merge_call``, which writes one row holding all of them; the logs
        are the replicas' mean, as Keras reports them."""
        import tensorflow as tf

        layers = [layer for layer in self.execution_order if layer in self.kept]
        slots = [_SLOTS[layer] for layer in layers]
        logs = {k: v for k, v in (logs or {}).items()
                if tf.is_tensor(v) and v.shape.rank == 0 and (v.dtype.is_floating or v.dtype.is_integer)}
        metrics = mean_metrics(model)
        replicas = self.replicas = replicas_in_sync()
        self.moving_per_replica = replicas > 1  # Keras' moving statistics: one copy per replica (aggregation none)
        with_samples = replicas > 1 or any(slot.moving_var_unbiased for slot in slots)
        layout = Layout.of(layers, [slot.channels for slot in slots], [self.kept[layer][1] for layer in layers],
                           logs, [name for name, _ in metrics], replicas=replicas, moving_per_replica=replicas > 1,
                           samples=with_samples)
        row_format = ring.RingFormat(layout, ring.FLOAT64)
        in_graph = [not isinstance(self.kept[layer][0][0], tf.Variable) for layer in layers]
        floats = []
        for layer in layers:
            (mean, variance), _, _ = self.kept[layer]
            # float32 whatever the layer's dtype (a float64 model, a float16 policy): the row's moments.
            floats += [mean, variance, tf.reshape(tf.cast(layer.moving_mean, ring.MOMENTS_DTYPE), [-1]),
                       tf.reshape(tf.cast(layer.moving_variance, ring.MOMENTS_DTYPE), [-1])]
        floats = tf.concat([tf.convert_to_tensor(v) for v in floats], axis=0) if floats else tf.zeros([0])
        values_dtype = row_format.dtype(ring.VALUES)  # each replica's, then their mean, in the row's dtype
        log_values = (tf.stack([tf.cast(v, values_dtype) for v in logs.values()]) if logs
                      else tf.zeros([0], values_dtype))
        execution_steps = steps_per_execution(model)  # K >= steps_per_execution
        write = lambda floats, log_values, samples: self._write(  # noqa: E731
            model, row_format, execution_steps, slots, in_graph, metrics, floats, log_values, samples)
        samples = None
        if with_samples:
            samples_dtype = row_format.dtype(ring.SAMPLES)
            samples = tf.stack([tf.zeros([], samples_dtype) if self.kept[layer][2] is None
                                else tf.convert_to_tensor(self.kept[layer][2]) for layer in layers]
                               ) if layers else tf.zeros([0], samples_dtype)
        if replicas == 1:
            write(floats, log_values, samples)
            return

        def merged(strategy, floats, log_values, samples):
            local = lambda v: strategy.experimental_local_results(v)  # noqa: E731
            self.guarded(write, tf.concat(local(floats), axis=0), tf.reduce_mean(tf.stack(local(log_values)), axis=0),
                         tf.concat(local(samples), axis=0))
        tf.distribute.get_replica_context().merge_call(merged, args=(floats, log_values, samples))

    def _write(self, model, row_format, execution_steps, slots, in_graph, metrics, floats, log_values, samples):
        """Writes the row (:meth:`tb_bnstats.capture.ring.RingFormat.row`):
        the counters advanced here, once per step."""
        import tensorflow as tf

        layout = row_format.layout
        ring_ = self.rings.get((layout.key, execution_steps))
        if ring_ is None:
            ring_ = self.rings[(layout.key, execution_steps)] = _Ring(row_format, execution_steps)
        n = self.seq.assign_add(1)
        counts = [slot.updates.assign_add(1) if updating and graph else slot.updates.read_value()
                  for slot, updating, graph in zip(slots, layout.updating, in_graph)]
        totals = [v for _, metric in metrics for v in (metric.total, metric.count)]
        row = ring_.row_format.row("rows", _OPS, {
            ring.N: [n], ring.STEP: [model.optimizer.iterations], ring.COUNTS: counts,
            ring.VALUES: [log_values] + totals, ring.SAMPLES: [] if samples is None else [samples],
            ring.MOMENTS: [floats]})
        at = tf.reshape(tf.math.floormod(n - 1, ring_.steps), [1])
        ring_.rows.scatter_update(tf.IndexedSlices(row[None, :], at))


class TensorFlowCapture(KerasCapture):
    """Instruments ``model`` (idempotent) and drains its BN moments: a
    :class:`tb_bnstats.capture.Capture` (:class:`KerasCapture`)."""

    hook_class, slot_class, hooks, slots = _TrainStepHook, _LayerSlot, _HOOKS, _SLOTS
