"""Captures Keras 3 BatchNormalization moments inside the train step, with the
JAX backend, and keeps every step's moments on the device until the host
drains them.

Keras' JAX train step is a pure function, compiled with ``jax.jit``:
``train_step(state, data) -> (logs, state)`` with ``state = (trainable,
non_trainable, optimizer, metrics)`` lists of arrays. Nothing it computes
can be stored aside (a traced value that leaves the function is an error),
and variables outside ``state`` are not updated inside ``jit``. So the
captured values travel *in* the state, as extra entries at the end of the
non-trainable list, which Keras threads from step to step and never
assigns to the model:

* ``model.stateless_call`` is wrapped: inside a training step it appends
  the moments the BN layers handed over (the shared wrappers of
  :mod:`tb_bnstats.frameworks.keras.capture.hooks`, inside ``jax.value_and_grad``) to
  the non-trainable values it returns; ``model.stateless_compute_loss``
  passes them on (it rebuilds that list from the model's variables);
* ``model.train_step`` is wrapped: it takes the ring (the carry) off the end
  of the incoming non-trainable list, runs Keras' step, takes the moments
  off the end of the outgoing one, writes the step's row (step, update
  counts, logs, metric totals, moments, moving statistics from the new
  state) into the ring with ``.at[].set``, and puts the ring back;
* ``model.make_train_function`` is wrapped so that the train function Keras
  makes is called with the ring added to the state it receives, and returns
  the state without it: Keras, ``model.weights``, ``save()`` and
  ``load_weights()`` never see it. The ring is part of the argument
  ``jit`` donates, so it is updated in place.

The ring's shape depends on what the step does (which layers run, the
logs it returns), so before the first execution the train step is traced
once with ``jax.eval_shape`` on the first batch (a trace, no compilation)
to learn it; each train function Keras makes gets a new wrapped step (JAX
caches traces by function and shapes, and a model compiled again must be
traced again). The host reads the ring's two arrays once per drain
(:meth:`KerasCapture.drain`), between executions.

A training step that drops or rejects the extra entries (a custom
``train_step`` that rebuilds the non-trainable values) is traced once more
without them and then runs without moments, saying so once. Under flax NNX
no ring is carried (one warning).

Several devices (``keras.distribution.DataParallel``): the step is traced
once for the global batch, sharded over the devices along its first axis
(device ``r`` holds rows ``r*B/R`` to ``(r+1)*B/R``), and BN's moments are
the global batch's (XLA all-reduces them): synchronized by construction.
Each device's own slice's moments are computed next to them by reshaping the
batch axis into ``[R, B/R]`` (no data moves between devices for that) and
go into the row replica after replica; the ring (the row's columns in
:data:`tb_bnstats.capture.ring.INT32` storage: JAX has no 64-bit types
without ``jax_enable_x64``) is replicated on every device (the train
function's output shardings get one entry per ring array,
:func:`_with_ring_shardings`).
"""

import functools
import itertools
import weakref

import numpy as np

from tb_bnstats.capture import ring
from tb_bnstats.capture.rows import Layout, ring_steps
from tb_bnstats.frameworks.keras import internals
from tb_bnstats.frameworks.keras.capture.hooks import KerasCapture, LayerSlot, StepHook, never_raise, train_step_scope
from tb_bnstats.frameworks.keras.capture.layers import index_by_identity, mean_metrics, steps_per_execution

_SLOTS = weakref.WeakKeyDictionary()  # BN layer -> _LayerSlot
_HOOKS = weakref.WeakKeyDictionary()  # model -> _TrainStepHook


def end_of_data_errors():
    """What Keras' JAX trainer takes as "the data ended"."""
    return (StopIteration,)


class _LayerSlot(LayerSlot):
    """A layer's slot; its update count lives in the ring of the model's hook
    (:meth:`_TrainStepHook.count_of`)."""

    def ran(self):
        for hook in self.hooks:  # inside a trace: the variables may be purged, nothing is read
            hook.saw(self.layer)

    def keep(self, mean, variance, updating, inputs=None):
        import jax.numpy as jnp

        channels = self.channels
        mean = jnp.reshape(jnp.asarray(mean, jnp.float32), [channels])
        variance = jnp.reshape(jnp.asarray(variance, jnp.float32), [channels])
        replicas = batch_devices()
        per_replica = None
        if replicas > 1 and inputs is not None:
            # Each device's slice of the global batch (rows are contiguous per device), channels last.
            x = jnp.moveaxis(jnp.asarray(inputs, jnp.float32), self.layer.axis, -1).reshape(replicas, -1, channels)
            per_replica = (x.mean(axis=1), x.var(axis=1), float(x.shape[1]))
        for hook in self.hooks:
            if hook.collecting_moments:  # the hook whose step is being traced
                hook.kept[self.layer] = (mean, variance, updating, per_replica)

    def count(self):
        return max((hook.count_of(self.layer) for hook in self.hooks), default=0)

    def set_count(self, value):
        for hook in self.hooks:
            hook.set_count(self.layer, value)


def batch_devices():
    """How many devices the batch is split over: along the batch axis of the
    mesh of ``keras.distribution.distribution()`` (1 without one)."""
    from keras import distribution

    current = distribution.distribution()
    if current is None or getattr(current, "batch_dim_name", None) is None:
        return 1
    mesh = current.device_mesh
    return int(mesh.shape[list(mesh.axis_names).index(current.batch_dim_name)])


def _distributed():
    """Whether a ``keras.distribution`` is set: Keras' jit then fixes the
    train function's output shardings, one per array of the state."""
    from keras import distribution

    return distribution.distribution() is not None


def _with_ring_shardings(model):
    """Wraps ``model._get_state_sharding_spec`` (which Keras' JAX trainer
    makes the train function's output shardings of under a distribution)
    to add a replicated sharding for each array of the ring carried in the
    non-trainable state."""
    original = internals.state_sharding_spec(model)

    @functools.wraps(original)
    def sharding_spec():
        import jax
        from keras import distribution

        trainable, non_trainable, *rest = original()
        mesh = distribution.distribution().device_mesh.backend_mesh
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        return (trainable, list(non_trainable) + [replicated] * _Ring.ARRAYS, *rest)

    internals.set_state_sharding_spec(model, sharding_spec)


class _Ring:
    """The carry: K rows on the device, the arrays of the layout's row in
    :data:`tb_bnstats.capture.ring.INT32` storage (``ints`` [K, 2 + L]
    int32, ``floats`` [K, V + 4 sum(C) (+ R * L)] float32; ``format``), then
    the running ``counts`` [L] and ``seq`` (rows written)."""

    ARRAYS = 4

    def __init__(self, layout, steps_per_execution, counts, seq):
        import jax.numpy as jnp

        self.layout = layout
        self.format = ring.RingFormat(layout, ring.INT32)
        self.names = [array.name for array in self.format.storage.arrays]
        self.steps = ring_steps(self.format.row_bytes, steps_per_execution)
        counter = self.format.dtype(ring.COUNTS)
        self.arrays = [jnp.zeros(self.format.shape(array.name, self.steps), array.dtype)
                       for array in self.format.storage.arrays] + [jnp.asarray(counts, counter),
                                                                   jnp.asarray(seq, counter)]
        self.stale = False  # the step now runs with another layout: a new ring before the next execution

    def read(self):
        """The whole ring (two device-to-host copies, one per array: the
        device buffers are donated to the next step), as :class:`Rows`."""
        return self.format.rows({name: np.array(a) for name, a in zip(self.names, self.arrays)})


class _JaxOps:
    """:class:`tb_bnstats.capture.ring.Ops` in ``jax.numpy`` (traced: XLA fuses them)."""

    def vector(self, parts, dtype, out=None):
        import jax.numpy as jnp

        if not parts:
            return jnp.zeros([0], dtype)
        return jnp.concatenate([jnp.reshape(jnp.asarray(p, dtype), [-1]) for p in parts])

    def bitcast_pairs(self, vector):
        import jax
        import jax.numpy as jnp

        return jax.lax.bitcast_convert_type(jnp.reshape(vector, [-1, 2]), jnp.float64)


_OPS = _JaxOps()


def _empty_carry():
    """A carry of no ring (the train function's output shardings count the
    ring's arrays under a distribution, so something is carried)."""
    import jax.numpy as jnp

    return [jnp.zeros([0, 0], jnp.int32), jnp.zeros([0, 0], jnp.float32), jnp.zeros([0], jnp.int32),
            jnp.zeros([], jnp.int32)]


def _unsupported(model):
    """Why the carried ring cannot run for ``model`` (None when it can):
    Keras' jit then expects the state to match its shardings exactly, or
    bypasses the wrapped step (flax NNX)."""
    from keras import distribution

    current = distribution.distribution()
    if current is not None and getattr(current, "batch_dim_name", None) is None:
        return "this keras.distribution splits no batch axis"
    return "flax NNX is enabled (Keras calls the class's train_step)" if internals.nnx_enabled() else None


class _TrainStepHook(StepHook):
    """The wrappers of one model (module docstring) and its rings: ``kept``
    is layer -> (mean, variance, updating, per_replica) of the step being
    traced (``per_replica``: ``(means [R, C], variances [R, C], values per
    channel)`` of each device's slice, or None on one device),
    ``rings`` the active :class:`_Ring` under its layout's key, and rings no
    longer written (kept until the next read)."""

    def __init__(self, model):
        super().__init__()
        self.active = None
        self._sized = False  # a ring was sized for the current train step
        self._model = weakref.ref(model)
        self._start_counts = weakref.WeakKeyDictionary()  # layer -> count to start a ring from
        self._discovered = None  # the Layout of the step last traced without a ring (by _new_ring)
        self._passing = True  # the moments can travel in the state (False after a step rejected them)
        self._wrap(model)

    # -- the wrappers ------------------------------------------------------------

    def _wrap(self, model):
        original_step, original_call = model.train_step, model.stateless_call
        original_loss, original_make = model.stateless_compute_loss, internals.make_train_function(model)

        @functools.wraps(original_call)
        def stateless_call(*args, **kwargs):
            out = original_call(*args, **kwargs)
            if not (self._collecting and self.kept):
                return out
            import jax

            moments = jax.lax.stop_gradient(self._kept_moments())
            return (out[0], list(out[1]) + [moments]) + tuple(out[2:])

        @functools.wraps(original_loss)
        def stateless_compute_loss(*args, **kwargs):
            if not self._collecting:
                return original_loss(*args, **kwargs)
            given = kwargs["non_trainable_variables"] if "non_trainable_variables" in kwargs else args[1]
            extras = list(given[self._num_state():])
            loss, (trainable, non_trainable, metrics) = original_loss(*args, **kwargs)
            return loss, (trainable, list(non_trainable) + extras, metrics)

        def new_train_step():
            # A new function for each train function Keras makes: JAX caches traces by function and
            # argument shapes, and a recompiled model (another loss, same shapes) must be traced again.
            @functools.wraps(original_step)
            def train_step(state, data):
                try:
                    trainable, non_trainable, optimizer, metrics = state
                except (TypeError, ValueError):
                    return original_step(state, data)  # not Keras' state: left alone
                never_raise(self.note_batch, data)  # shapes are static in a JAX trace
                n = self._num_state()
                carry, non_trainable = list(non_trainable[n:]), list(non_trainable[:n])
                with train_step_scope():
                    logs, state, moments = self._run_step(original_step,
                                                          (trainable, non_trainable, optimizer, metrics), data)
                trainable, non_trainable, optimizer, metrics = state
                try:
                    carry = self._write_row(carry, moments, logs, non_trainable, optimizer, metrics)
                finally:
                    self.kept = {}  # no tracer outlives its trace
                return logs, (trainable, list(non_trainable) + carry, optimizer, metrics)

            return train_step

        @functools.wraps(original_make)
        def make_train_function(force=False):
            if model.train_function is None or force:
                model.train_step = new_train_step()
                self._sized = False  # the new step is sized again (one eval_shape)
                if _distributed() and not hasattr(internals.state_sharding_spec(model), "__wrapped__"):
                    _with_ring_shardings(model)
            made = original_make(force=force)
            fn = model.train_function
            if fn is not None and not getattr(fn, "_tb_bnstats_carries", False):
                model.train_function = self._carrying(fn, model.train_step)
            return made

        self._collecting = False
        model.stateless_call, model.stateless_compute_loss = stateless_call, stateless_compute_loss
        model.train_step = new_train_step()
        internals.set_make_train_function(model, make_train_function)

    @property
    def collecting_moments(self):
        return self._collecting

    def _num_state(self):
        return len(self._model().non_trainable_variables)

    def _run_step(self, original_step, state, data):
        """Keras' step with the moments passed in the state; when that breaks
        the step, once more without them (and no moments from then on)."""
        n = self._num_state()
        self.kept, self._collecting = {}, self._passing
        try:
            logs, new_state = original_step(state, data)
        except Exception as exc:  # noqa: BLE001 - the plain step below raises the user's own errors
            if not self._collecting:
                raise
            self.kept, self._collecting = {}, False
            logs, new_state = original_step(state, data)  # the user's own error raises here
            self._passing = False
            self.warn_once("passing", "this train step does not pass the BN moments on in its state "
                           f"({type(exc).__name__}: {exc}); it runs without them and no BN statistics are "
                           "logged")
        finally:
            self._collecting = False
        trainable, non_trainable, optimizer, metrics = new_state
        moments = list(non_trainable[n:])
        if self.kept and self._passing and not moments:
            self._passing = False
            self.warn_once("dropped", "this train step drops the BN moments passed in its state; no "
                       "BN statistics are logged")
        return logs, (trainable, list(non_trainable[:n]), optimizer, metrics), moments

    def _kept_moments(self):
        import jax.numpy as jnp

        parts = []
        for mean, variance, _, per_replica in self.kept.values():
            parts += [mean, variance] if per_replica is None else [mean, variance, per_replica[0].reshape([-1]),
                                                                  per_replica[1].reshape([-1])]
        return jnp.concatenate(parts)

    def _carrying(self, fn, train_step):
        """``fn`` (Keras' train function) called with the active ring added to
        the non-trainable state, and returning the state without it."""

        @functools.wraps(fn)
        def train_function(state, iterator):
            import jax

            model = self._model()
            unsupported = _unsupported(model)
            if unsupported:
                self.warn_once("unsupported", f"{unsupported}: no BN statistics are logged (training runs as is)")
                return fn(state, iterator)
            trainable, non_trainable, optimizer, metrics = state
            needs_ring = self._needs_ring(model)
            if self.wants_first_batch() and jax.process_count() > 1:
                self.first_batch_failed = True  # a global batch not on this process alone: no default probe
            if needs_ring or self.wants_first_batch():
                first = next(iterator)  # StopIteration: the data ended, as Keras expects
                iterator = itertools.chain([first], iterator)
                if self.wants_first_batch():
                    self.guarded_keep_first_batch(first)
            if needs_ring:
                try:
                    self._new_ring(train_step, state, first, model)
                except Exception as exc:  # noqa: BLE001 - never break the user's training
                    self.active, self._sized = None, True
                    self.warn_once("ring", f"cannot make the ring for this train step, no BN statistics are "
                                   f"logged: {type(exc).__name__}: {exc}")
            carry = self.active.arrays if self.active is not None else []
            if not carry and _distributed():
                carry = _empty_carry()
            logs, state = fn((trainable, list(non_trainable) + carry, optimizer, metrics), iterator)
            trainable, non_trainable, optimizer, metrics = state
            n = self._num_state()
            if self.active is not None:
                self.active.arrays = list(non_trainable[n:])
            return logs, (trainable, list(non_trainable[:n]), optimizer, metrics)

        train_function._tb_bnstats_carries = True
        return train_function

    # -- the ring ------------------------------------------------------------------

    def _new_ring(self, train_step, state, first, model):
        """Traces the step once (``jax.eval_shape``: no compilation, no
        change to the model or the data) to learn its layout, and makes the ring for it; counts
        and the row number go on from the ring before."""
        import jax

        trainable, non_trainable, optimizer, metrics = state
        self._remember_initial(model, non_trainable)
        previous = self.active
        seq = self.written()
        if previous is not None:  # its counts go on in the next ring
            for ref, count in zip(previous.layout.layers, np.asarray(previous.arrays[2])):
                if ref() is not None:
                    self._start_counts[ref()] = int(count)
        self._discovered = None
        try:
            # A new function each time: JAX caches traces by function and shapes, and this one must run.
            jax.eval_shape(lambda s, d: train_step(s, d), state, first)
        except Exception as exc:  # noqa: BLE001 - the real step will raise it if it is the user's
            self._discovered = None
            self.warn_once("discover", f"cannot trace the train step to size the ring: {exc}")
        finally:
            self.kept = {}  # no tracer outlives its trace
        self._sized = True
        layout = self._discovered
        if layout is None:
            self.active = None
            return
        counts = [_SLOTS[ref()].count() if ref() in _SLOTS else 0 for ref in layout.layers]
        # A ring of an earlier layout stays in self.rings until drained; the same layout again gets a new one.
        if previous is not None:
            self.rings.pop(previous.layout.key, None)
            self.rings[("written before", id(previous))] = previous  # read at the next drain, then let go
        if layout.key in self.rings:  # an older ring of this layout, not read since
            self.rings[("written before", id(self.rings[layout.key]))] = self.rings.pop(layout.key)
        self.active = self.rings[layout.key] = _Ring(layout, steps_per_execution(model), counts, seq)

    def _needs_ring(self, model):
        """Before an execution: no ring sized yet, or the step now has
        another layout, or runs more steps per execution than the ring holds."""
        if not self._sized:
            return True
        ring = self.active
        return ring is not None and (ring.stale or ring.steps < steps_per_execution(model))

    def _remember_initial(self, model, non_trainable):
        """Initial values of layers first seen now, from the state (the
        model's own variables may be purged during ``fit``)."""
        index = index_by_identity(model.non_trainable_variables)
        for layer, slot in list(_SLOTS.items()):
            if self in slot.hooks and slot.init_mean is None and id(layer.moving_mean) in index:
                slot.remember_initial(np.asarray(non_trainable[index[id(layer.moving_mean)]]),
                                      np.asarray(non_trainable[index[id(layer.moving_variance)]]))

    def _write_row(self, carry, moments, logs, non_trainable, optimizer, metrics):
        """Returns the carry with this step's row written (the module
        docstring); unchanged when the step's layout is not the ring's (a
        new ring is made before the next execution)."""
        try:
            return self._row(carry, moments, logs, non_trainable, optimizer, metrics)
        except Exception as exc:  # noqa: BLE001 - never break the user's train step
            self.warn_once("row", f"cannot keep BN statistics from this train step: {exc}")
            return carry

    def _row(self, carry, moments, logs, non_trainable, optimizer, metrics):
        import jax.numpy as jnp

        model = self._model()
        layers = list(self.kept)
        scalar_logs = {k: v for k, v in (logs or {}).items()
                       if hasattr(v, "shape") and v.shape == () and jnp.issubdtype(v.dtype, jnp.number)}
        named_metrics = mean_metrics(model)
        per_replica = [self.kept[layer][3] for layer in layers]
        replicas = batch_devices() if layers and all(p is not None for p in per_replica) else 1
        self.replicas, self.global_moments = replicas, replicas > 1
        layout = Layout.of(layers, [int(self.kept[layer][0].shape[0]) for layer in layers],
                           [self.kept[layer][2] for layer in layers], scalar_logs, [n for n, _ in named_metrics],
                           replicas=replicas)
        if not carry:
            self._discovered = layout
            return carry
        active = self.active
        if active is None or active.layout.key != layout.key or len(carry) != 4:
            if active is not None:
                active.stale = True
            return carry
        if layout.layers and not moments:
            return carry  # the step did not pass them on (warned in _run_step)
        rows_int, rows_float, counts, seq = carry
        n = seq + 1
        counts = counts + jnp.asarray([1 if updating else 0 for updating in layout.updating], counts.dtype)
        optimizer_index = index_by_identity(model.optimizer.variables)
        iterations = optimizer[optimizer_index[id(model.optimizer.iterations)]] \
            if id(model.optimizer.iterations) in optimizer_index else n
        state_index = index_by_identity(model.non_trainable_variables)
        metric_index = index_by_identity(model.metrics_variables)
        values = list(scalar_logs.values())
        for _, metric in named_metrics:
            values += [metrics[metric_index[id(v)]] for v in (metric.total, metric.count)]
        flat, start = (moments[0] if moments else None), 0
        by_replica = [[] for _ in range(replicas)]  # the row's moments, replica after replica
        for layer, channels in zip(layers, layout.channels):
            moving = [jnp.asarray(non_trainable[state_index[id(v)]], ring.MOMENTS_DTYPE).reshape([-1])
                      for v in (layer.moving_mean, layer.moving_variance)]
            if replicas == 1:
                by_replica[0] += [flat[start:start + 2 * channels]] + moving
                start += 2 * channels
                continue
            start += 2 * channels  # the global batch's moments: the drain pools the replicas' into them
            means = flat[start:start + replicas * channels].reshape([replicas, channels])
            variances = flat[start + replicas * channels:start + 2 * replicas * channels].reshape([replicas, channels])
            start += 2 * replicas * channels
            for r in range(replicas):
                by_replica[r] += [means[r], variances[r]] + moving
        columns = {ring.N: [n], ring.STEP: [iterations], ring.COUNTS: [counts], ring.VALUES: values,
                   ring.MOMENTS: [part for parts in by_replica for part in parts],
                   ring.SAMPLES: [[p[2] for _ in range(replicas) for p in per_replica]] if replicas > 1 else []}
        at = (n - 1) % active.steps
        rows_int = rows_int.at[at].set(active.format.row("ints", _OPS, columns))
        rows_float = rows_float.at[at].set(active.format.row("floats", _OPS, columns))
        return [rows_int, rows_float, counts, n]

    # -- what the capture asks -----------------------------------------------------

    def written(self):
        return int(np.asarray(self.active.arrays[3])) if self.active is not None else 0

    def count_of(self, layer):
        ring = self.active
        if ring is not None:
            for i, ref in enumerate(ring.layout.layers):
                if ref() is layer:
                    return int(np.asarray(ring.arrays[2])[i])
        return self._start_counts.get(layer, 0)

    def set_count(self, layer, value):
        self._start_counts[layer] = int(value)
        ring = self.active
        if ring is not None:
            for i, ref in enumerate(ring.layout.layers):
                if ref() is layer:
                    ring.arrays[2] = ring.arrays[2].at[i].set(int(value))

    def read_rings(self):
        """Every ring, one read each; a ring no longer written is let go once read."""
        parts = super().read_rings()
        self.rings = {key: ring for key, ring in self.rings.items() if ring is self.active}
        return parts


class JaxCapture(KerasCapture):
    """Instruments ``model`` (idempotent) and drains its BN moments: a
    :class:`tb_bnstats.capture.Capture` (:class:`KerasCapture`)."""

    hook_class, slot_class, hooks, slots = _TrainStepHook, _LayerSlot, _HOOKS, _SLOTS
