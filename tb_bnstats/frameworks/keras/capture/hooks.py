"""What the Keras captures of every backend share: the two wrappers on each
BatchNormalization layer, "inside a training step", the per-layer slot with
its update count and resume rule, the ring's size, and the capture class
that drains the rings. Each backend module (``tensorflow``, ``jax``,
``torch``) adds how its training step keeps the moments and writes a row.

The wrappers, installed once per layer (idempotent across ``fit`` calls and
callbacks):

* ``layer._moments`` -- Keras calls it in training mode right before
  updating the moving averages; the wrapper hands the exact ``(mean,
  variance)`` the layer normalizes with to the layer's slot. No second
  forward pass.
* ``layer.call`` -- when the layer runs in inference mode *inside a training
  step* (called with ``training=False``, or frozen with ``trainable=False``),
  it hands over the moments of the input the layer saw, as "not updating".

Both act only while the backend's ``train_step`` wrapper marks "inside a
training step", so evaluation, prediction and tb_bnstats' own measurements
are left untouched. They add no weights: ``model.weights``, ``save`` and
``load_weights`` are unchanged.
"""

import functools
import logging
import threading
import weakref

import numpy as np

from tb_bnstats.capture import rows as ring_rows
from tb_bnstats.frameworks.keras import KERAS, internals
from tb_bnstats.frameworks.keras.capture.layers import (
    called_with_training_false,
    channels_of,
    find_batchnorm_layers,
    initializer_values,
    layer_info,
)

logger = logging.getLogger("tb_bnstats")

_state = threading.local()

# Training samples kept for the default probe batch: the first this many the train step runs on, as many
# as a probe uses (tb_bnstats.measure.gap.MAX_PROBE_SAMPLES; the capture does not import measure).
FIRST_BATCH_ROWS = 256


def _rows(structure):
    from keras import tree

    return int(np.shape(tree.flatten(structure)[0])[0])


def static_rows(structure):
    """The batch axis' size of the first tensor of ``structure`` when its
    shape says it (an eager step, a JAX trace), else 0 (a TensorFlow trace
    of batches of any size)."""
    from keras import tree

    leaves = tree.flatten(structure)
    shape = getattr(leaves[0], "shape", None) if leaves else None
    rows = shape[0] if shape is not None and len(shape) else None
    return int(rows) if isinstance(rows, (int, np.integer)) and rows > 0 else 0



def in_train_step():
    """Whether a training step is being run (or traced) on this thread."""
    return getattr(_state, "train_step_depth", 0) > 0


class train_step_scope:
    """Marks "inside a training step" (nestable: a train step calling its
    parent's); ``outermost`` tells the outermost one."""

    def __enter__(self):
        self.outermost = not in_train_step()
        _state.train_step_depth = getattr(_state, "train_step_depth", 0) + 1
        return self

    def __exit__(self, *exc):
        _state.train_step_depth -= 1
        return False


def never_raise(fn, *args):
    """Capture code runs inside the user's train step: a failure there is
    logged once and the step goes on without it."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        if not getattr(_state, "warned", False):
            _state.warned = True
            logger.warning("tb_bnstats: capture failed inside the train step, statistics will be missing: %s", exc)
        return None


class LayerSlot:
    """One BN layer's capture state: the values its moving averages started
    from, its update count, and the hooks (one per model it runs in) to which
    it hands each step's moments. A backend subclass stores the count
    (:meth:`count`, :meth:`set_count`) and keeps moments (:meth:`keep`)."""

    # Whether the layer's moving variance averages Bessel-corrected batch variances (tf_keras' fused
    # kernel): its rows then carry the values per channel, n, for the comparison var_B * n / (n - 1).
    moving_var_unbiased = False
    framework = KERAS  # LayerInfo.framework: KERAS (Keras 3) or TF_KERAS

    def __init__(self, layer):
        self._layer = weakref.ref(layer)  # registries' values must not keep their keys alive
        self.hooks = weakref.WeakSet()
        self.init_mean = self.init_var = None
        self.resumed_from = None  # the optimizer step the count was resumed at

    @property
    def layer(self):
        return self._layer()

    @property
    def channels(self):
        return channels_of(self.layer)

    def remember_initial(self, moving_mean=None, moving_var=None):
        """The values the moving averages start from, as first found (the
        initializers' output on a fresh layer, pre-trained values
        otherwise); given when the layer's variables are not readable."""
        if self.init_mean is None:
            layer = self.layer
            self.init_mean = np.array(layer.moving_mean.numpy() if moving_mean is None else moving_mean,
                                      np.float64).ravel()
            self.init_var = np.array(layer.moving_variance.numpy() if moving_var is None else moving_var,
                                     np.float64).ravel()

    def ran(self):
        """The layer ran in a training step being traced or run."""
        self.remember_initial()
        for hook in self.hooks:
            hook.saw(self.layer)

    def keep(self, mean, variance, updating, inputs):  # pragma: no cover - every backend defines it
        """Keeps this step's ``(mean, variance)`` of the layer (``inputs``:
        what they are the moments of, for the values per channel of each
        replica's slice on several devices)."""
        raise NotImplementedError

    def count(self):
        """Updates counted so far (host read)."""
        raise NotImplementedError  # pragma: no cover

    def set_count(self, value):
        raise NotImplementedError  # pragma: no cover

    def resume(self, iterations):
        """Places a layer's moving statistics at the start of a training run.

        A layer whose trainable moving statistics differ from its
        initializers' values, in a run whose optimizer has done
        ``iterations`` > 0 steps, and for which this process has counted no
        update yet, was restored after training: its count goes on from
        ``iterations`` (an estimate: Keras updates a trainable layer once per
        training step), and the debiased estimate starts from the
        initializers' values, so ``1 - m**t`` continues where it was.

        A layer with statistics that are not its initializers' values, no
        update counted, and a fresh optimizer (``iterations`` = 0) or
        ``trainable=False``, starts from pretrained statistics (loaded
        weights, a base model trained elsewhere): its count starts at 0
        from them, so ``1 - m**t`` is the weight no longer on the pretrained
        values and the debiased estimate is the average of the new batches.

        Returns:
            ``"resumed"``, ``"at_initializer"`` (statistics equal to the
            initial values after ``iterations`` steps: not restored),
            ``"pretrained"`` or None (nothing to say: a fresh run, or a count
            already going on in this process).
        """
        layer = self.layer
        self.remember_initial()
        init_mean, init_var = initializer_values(layer)
        if (np.array_equal(layer.moving_mean.numpy(), init_mean)
                and np.array_equal(layer.moving_variance.numpy(), init_var)):
            return "at_initializer" if iterations > 0 and layer.trainable else None
        counted = self.count()
        if self.resumed_from is not None and counted == self.resumed_from:
            return "resumed"  # by another callback on the model, no step since
        if counted > 0:
            return None
        if iterations <= 0 or not layer.trainable:
            return "pretrained"
        self.set_count(int(iterations))
        self.resumed_from = int(iterations)
        self.init_mean, self.init_var = (np.asarray(init_mean, np.float64).ravel(),
                                         np.asarray(init_var, np.float64).ravel())
        return "resumed"


def instrument_layer(layer, slot):
    """Installs the two wrappers (module docstring) on ``layer``, handing its
    moments to ``slot``."""
    from keras import backend, ops

    original_moments = internals.moments(layer)
    original_call = layer.call

    def _moments(inputs, mask):
        mean, variance = original_moments(inputs, mask)
        if in_train_step():
            never_raise(slot.keep, mean, variance, True, inputs)
        return mean, variance

    def _record_inference_mode(inputs, mask):
        slot.ran()
        x = ops.cast(inputs, backend.result_type(inputs.dtype, "float32"))
        mean, variance = original_moments(x, mask)
        slot.keep(mean, variance, False, x)

    @functools.wraps(original_call)
    def call(inputs, training=None, mask=None):
        if in_train_step():
            if training and layer.trainable:
                never_raise(slot.ran)
            else:
                never_raise(_record_inference_mode, inputs, mask)
        return original_call(inputs, training=training, mask=mask)

    internals.set_moments(layer, _moments)
    layer.call = call


class StepHook:
    """What every backend's hook of a model keeps: the BN layers in the order
    the training step runs them, the moments the step being traced or run
    handed over (``kept``: layer -> the backend's tuple), the rings
    (``rings``: key -> ring with ``steps`` and ``read()``) and how often they
    were read. A backend subclass wraps the model's methods and writes the
    rows."""

    def __init__(self):
        self.execution_order = []  # BN layers, first call first
        self._kept_here = threading.local()  # several replicas trace the step on threads of their own
        self._saw_lock = threading.Lock()
        self.kept = {}
        # Several devices: how many replicas ran the last traced step, whether each keeps its own moving
        # statistics, and whether the layers' moments are the global batch's by construction (JAX sharding).
        self.replicas = 1
        self.moving_per_replica = False
        self.global_moments = False
        self.rings = {}
        self.reads = 0  # of the rings, by the captures
        self._warned = set()
        self._first_batch = None  # numpy copy of the first training samples (the default probe batch)
        self._first_parts = []  # the batches' rows kept so far, until FIRST_BATCH_ROWS
        self.first_batch_failed = False  # they could not be kept: no default probe
        self.batch_rows = 0  # examples in the first training batch a step ran on (0: not known yet)

    @property
    def kept(self):
        """Moments the step being traced or run handed over, on this thread
        (each replica of a ``tf.distribute`` strategy traces on its own)."""
        return self._kept_here.__dict__.setdefault("kept", {})

    @kept.setter
    def kept(self, value):
        self._kept_here.kept = value

    def wants_first_batch(self):
        """Whether the step should still hand its batch to :meth:`keep_first_batch`."""
        return self._first_batch is None and not self.first_batch_failed

    def keep_first_batch(self, data):
        """Copies rows of ``data`` (a batch as ``train_step`` gets it) to the
        host until :data:`FIRST_BATCH_ROWS` are kept, once per model: the
        default probe batch, the first training samples. A backend whose step
        is traced (TensorFlow) keeps them on the device instead."""
        from keras import ops, tree

        kept = sum(_rows(part) for part in self._first_parts)
        part = tree.map_structure(lambda t: np.array(ops.convert_to_numpy(t[:FIRST_BATCH_ROWS - kept])), data)
        self._first_parts.append(part)
        if kept + _rows(part) >= FIRST_BATCH_ROWS:
            self._first_batch = self._joined()

    def _joined(self):
        from keras import tree

        parts, self._first_parts = self._first_parts, []
        return tree.map_structure(lambda *leaves: np.concatenate(leaves), *parts) if len(parts) > 1 else parts[0]

    def guarded_keep_first_batch(self, data):
        """:meth:`keep_first_batch`; a failure turns the default probe off
        with one warning (training goes on)."""
        try:
            self.keep_first_batch(data)
        except Exception as exc:  # noqa: BLE001 - never break the user's train step
            self.first_batch_failed = True
            self.warn_once("first_batch", f"cannot keep the first training batch for the default probe "
                           f"(pass probe_data=): {type(exc).__name__}: {exc}")

    def note_batch(self, data):
        """Remembers how many examples the first training batch ``data``
        holds, the batch the step's BN layers normalize
        (``LayerInfo.batch_samples``), from its static shape. A backend whose
        traced step has no static batch axis (TensorFlow) keeps it on the
        device instead (its override of this and :meth:`batch_samples`)."""
        if not self.batch_rows:
            self.batch_rows = static_rows(data)

    def batch_samples(self):
        """Examples in the first training batch (0: unknown)."""
        return int(self.batch_rows)

    def first_batch(self):
        """``(x, y_or_None)`` of the kept first training batch (numpy, the
        sample weights left out), or None before the first step."""
        if self._first_batch is None and self._first_parts:  # the data had fewer rows, or training stopped
            self._first_batch = self._joined()
        if self._first_batch is None:
            return None
        from keras.utils import unpack_x_y_sample_weight

        x, y, _ = unpack_x_y_sample_weight(self._first_batch)
        return x, y

    def saw(self, layer):
        with self._saw_lock:
            if not any(layer is seen for seen in self.execution_order):
                self.execution_order.append(layer)

    def read_rings(self):
        """``[(Rows, K)]``: every ring, read once (``reads`` counts rings read)."""
        parts = []
        for ring in list(self.rings.values()):
            parts.append((ring.read(), ring.steps))
            self.reads += 1
        return parts

    def guarded(self, fn, *args):
        """``fn(*args)``, a failure warned once: for code that runs inside a
        ``tf.distribute`` merge call, which must return normally on every
        replica (an exception there stops one replica's thread and leaves
        the others waiting)."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - never break the user's train step
            self.warn_once(f"merge {getattr(fn, '__name__', fn)}", f"cannot keep BN statistics of the replicas: "
                           f"{type(exc).__name__}: {exc}")
            return None

    def warn_once(self, where, message):
        """A warning in the log, once per ``where`` (the training step goes on)."""
        if where not in self._warned:
            self._warned.add(where)
            logger.warning("tb_bnstats: %s", message)

    def wrap_train_step(self, model, write_row, on_begin=None, outside=None):
        """Wraps ``model.train_step`` (a stateful one: TensorFlow, torch):
        marks "inside a training step", empties ``kept`` at the outermost
        step (and calls ``on_begin()``), keeps the first batch
        (:meth:`keep_first_batch`), and after the step calls
        ``write_row(model, logs)``; a failure in either is warned once and
        the step's logs go back to Keras unchanged. ``outside``: a decorator
        for those guarded calls (torch: kept out of ``torch.compile``)."""
        original = model.train_step
        model_ref = weakref.ref(model)

        def write(logs):
            try:
                write_row(model_ref(), logs)
            except Exception as exc:  # noqa: BLE001 - never break the user's train step
                self.warn_once("row", f"cannot keep BN statistics from this train step: {exc}")

        keep = self.guarded_keep_first_batch
        note = functools.partial(never_raise, self.note_batch)
        if outside is not None:
            write, keep, note = outside(write), outside(keep), outside(note)

        @functools.wraps(original)
        def train_step(*args, **kwargs):
            with train_step_scope() as scope:
                if scope.outermost:
                    self.kept = {}
                    if on_begin is not None:
                        on_begin()
                    if args and self.wants_first_batch():
                        keep(args[0])
                    if args:
                        note(args[0])
                logs = original(*args, **kwargs)
            if scope.outermost:
                write(logs)
            return logs

        model.train_step = train_step


class KerasCapture:
    """A :class:`tb_bnstats.capture.Capture` of a Keras model, for any
    backend. A backend module subclasses it with its ``hook_class`` (one hook
    per model, shared by its captures: ``execution_order``, ``rings``,
    ``reads``, ``written()``, ``read_rings()``), its ``slot_class`` and the
    registries ``hooks`` (model -> hook) and ``slots`` (layer -> slot),
    both ``weakref.WeakKeyDictionary``.

    Making one instruments ``model`` (idempotent); :meth:`drain` returns
    every step written to the rings since the last drain (or since this
    capture was made), with ``steps`` = the optimizer's iteration count after
    each step.
    """

    hook_class = slot_class = hooks = slots = None
    # How the layers are found and wrapped (tf_keras' module has its own).
    find_layers = staticmethod(find_batchnorm_layers)
    instrument = staticmethod(instrument_layer)

    def __init__(self, model):
        self.model = model
        self._named = self.find_layers(model)
        hook = self.hooks.get(model)
        if hook is None:
            hook = self.hooks[model] = self.hook_class(model)
            model.train_function = None  # a train function made before the hook would bypass it
        self._hook = hook
        self._slots = {}
        for name, layer in self._named:
            slot = self.slots.get(layer)
            if slot is None:
                slot = self.slots[layer] = self.slot_class(layer)
                self.instrument(layer, slot)
                model.train_function = None  # a new layer: trace again with its wrappers
            slot.hooks.add(hook)
            self._slots[name] = slot
        self._drained = hook.written()  # rows written before this capture are not its own

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
        training_false = called_with_training_false(self.model)
        hook = self._hook
        infos = [layer_info(name, layer, order[id(layer)], self._slots[name].init_mean, self._slots[name].init_var,
                            graph_training_false=id(layer) in training_false, replicas=hook.replicas,
                            moving_per_replica=hook.moving_per_replica, global_moments=hook.global_moments,
                            moving_var_unbiased=self._slots[name].moving_var_unbiased,
                            framework=self._slots[name].framework, batch_samples=hook.batch_samples())
                 for name, layer in self._ran()]
        return sorted(infos, key=lambda info: info.depth)

    def resume(self, iterations):
        """At train begin: :meth:`LayerSlot.resume` on every built BN layer;
        returns ``{name: "resumed" | "at_initializer" | "pretrained"}`` of the layers
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

    def first_batch(self):
        """``(x, y_or_None)``: the first :data:`FIRST_BATCH_ROWS` training
        samples the train step ran on (numpy copies; fewer when training had
        fewer), or None before it ran: the default probe batch."""
        return self._hook.first_batch()

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
        :class:`tb_bnstats.capture.Block` s in step order
        (:func:`tb_bnstats.capture.rows.drain`)."""
        named = {id(layer): name for name, layer in self._named}
        blocks, self._drained = ring_rows.drain(self._hook.read_rings(), self._drained, named, self._slots)
        return blocks
