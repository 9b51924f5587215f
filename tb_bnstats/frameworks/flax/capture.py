"""Captures the batch moments of Flax BatchNorm layers (NNX and Linen) from
inside the user's compiled train step, and keeps every step's row in a ring
on the device until the host drains it.

Where the moments come from. Both ``flax.nnx.BatchNorm`` and
``flax.linen.BatchNorm`` compute their batch statistics with one function,
``_compute_stats`` of their module. The capture wraps that function (a pass
through, except inside a monitored BatchNorm call, where it also hands its
result over) and the layer's call, so that the moments kept are the very
arrays the layer normalized with and averaged into its running statistics:
no second reduction over the activations. A layer called with
``use_running_average=True`` inside a differentiated function (a training
step that freezes or forgets to switch the layer to batch statistics) has
no batch statistics of its own: the moments of its input are computed for
it. Calls outside differentiation with ``use_running_average=True``
(evaluation) keep nothing.

How they leave the compiled step, without changing it:

* NNX: each monitored ``nnx.BatchNorm`` gets one extra attribute,
  :data:`ATTRIBUTE`, an ``nnx.Variable`` of the type :class:`BNMoments`
  ([2, C]: the last training call's mean and variance). ``nnx.jit``,
  ``nnx.value_and_grad`` and ``nnx.split`` / ``nnx.merge`` carry it as they
  carry the layer's ``BatchStat`` s, so the step writes it in place. It is
  not a ``Param`` or a ``BatchStat`` (``nnx.Optimizer(..., wrt=nnx.Param)``
  and ``nnx.state(model, nnx.BatchStat)`` never see it) and
  :meth:`FlaxCapture.close` removes it.
* Linen: a method interceptor (``flax.linen.intercept_methods``) puts the
  moments into the collection :data:`COLLECTION` of each BatchNorm called
  with that collection mutable: the step asks for it with
  ``mutable=["batch_stats", "bn_stats"]`` and returns ``updates["bn_stats"]``
  among its metrics (the two changed lines).

The ring. After each step the monitor hands :meth:`FlaxCapture.write_step`
the moments (device arrays), the running statistics as the model or the
train state now holds them, and the step's metrics; one jitted function,
dispatched asynchronously and donating the ring, writes them as one row
(columns in :data:`tb_bnstats.capture.ring.INT32` storage: JAX runs
without 64-bit types) and counts an update for each layer whose stored
running statistics changed since the row before. That count is what tells
a step that computes the update but does not store it (Linen's
``batch_stats`` not written back into the train state) from one that does.
Nothing is read from the device per step; a drain reads the ring's two
arrays once.

Several devices. Under ``jax.jit`` with the batch sharded over a mesh the
layer's moments are the global batch's (XLA reduces across devices), logged
as one batch. A Linen step under ``jax.pmap`` returns every device's
``bn_stats`` and ``batch_stats`` stacked on a leading device axis; the
ring then holds each device's slice's moments and its own running
statistics (the replica series), and the global batch's moments are the
devices' pooled. The layer's ``axis_name`` decides what the layer
normalized with: given, the devices' moments averaged (synchronized; the
capture keeps the moments of the device's own slice beside them); not
given, each device its own slice's (unsynchronized, what is kept).
"""

import dataclasses
import functools
import itertools
import threading
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from tb_bnstats.capture import Block, ring
from tb_bnstats.capture import rows as ring_rows
from tb_bnstats.format.metadata import LayerInfo
from tb_bnstats.frameworks.flax import FLAX
from tb_bnstats.frameworks.jax_ops import JAX_OPS

# The Linen collection the moments travel in (``mutable=["batch_stats", COLLECTION]``).
COLLECTION = "bn_stats"
# The attribute of a monitored nnx.BatchNorm holding its side channel (a BNMoments variable).
ATTRIBUTE = "tb_bnstats_moments"

_LOCAL = threading.local()  # .frames: one dict per monitored BatchNorm call being run (its _compute_stats result)
_CAPTURES: "weakref.WeakValueDictionary[int, FlaxCapture]" = weakref.WeakValueDictionary()
_TOKENS = itertools.count(1)
_INSTALLED: dict[str, Any] = {}


def _frames() -> list[dict[str, Any]]:
    frames = getattr(_LOCAL, "frames", None)
    if frames is None:
        frames = _LOCAL.frames = []
    return frames


def _differentiated(x: Any) -> bool:
    """Whether ``x`` is traced for differentiation (a training step's forward)."""
    return any(type(x).__name__ in ("JVPTracer", "LinearizeTracer") for x in _tracer_chain(x))


def _tracer_chain(x: Any) -> list[Any]:
    out: list[Any] = []
    while x is not None and len(out) < 16:
        out.append(x)
        x = getattr(x, "primal", None) if type(x).__name__ in ("JVPTracer", "LinearizeTracer") else getattr(
            x, "val", None)
    return out


def _input_moments(x: Any, axis: Any) -> tuple[Any, Any]:
    """The per-channel mean and biased variance of ``x`` (float32), over
    every axis but ``axis``: what a layer called with
    ``use_running_average=True`` saw."""
    import jax.numpy as jnp

    x = jnp.asarray(x, jnp.float32)
    features = {a % x.ndim for a in (axis if isinstance(axis, (tuple, list)) else (axis,))}
    reduce = tuple(a for a in range(x.ndim) if a not in features)
    mean = x.mean(reduce)
    return mean, jnp.square(x - jnp.expand_dims(mean, reduce)).mean(reduce)


@dataclasses.dataclass
class _Seen:
    """What a trace of the train step showed of one layer."""

    channels: int
    momentum: float
    epsilon: float
    updating: bool
    axis_name: Any
    layer_class: str
    samples: float = 0.0  # values per channel of the call's input (one device's slice under pmap)
    replicas: int = 1  # devices of a pmapped step (set by write_step from its outputs)


class _LayerSlot:
    """One BN layer's host-side record: its name, its initial statistics
    (``init_mean`` / ``init_var``, what the update count starts from) and
    whether they were pretrained (not Flax's 0 / 1). The ring's layouts hold
    weak references to it."""

    def __init__(self, name: str, mean: Any, var: Any) -> None:
        self.name = name
        self.init_mean = np.asarray(mean, np.float64).reshape(-1)
        self.init_var = np.asarray(var, np.float64).reshape(-1)
        self.pretrained = not (np.all(self.init_mean == 0) and np.all(self.init_var == 1))


# -- the interception (installed once per process) ---------------------------------------------


def _wrap_compute_stats(module: Any) -> None:
    original = module._compute_stats
    if getattr(original, "_tb_bnstats", False):
        return

    @functools.wraps(original)
    def _compute_stats(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        frames = _frames()
        if frames and "stats" not in frames[-1]:
            frames[-1]["stats"] = out
        return out

    _compute_stats._tb_bnstats = True  # type: ignore[attr-defined]
    module._compute_stats = _compute_stats


def _call_arg(args: tuple[Any, ...], kwargs: dict[str, Any], default: Any) -> Any:
    """``use_running_average`` as passed to a BatchNorm's ``__call__(x, use_running_average=None)``."""
    given = kwargs.get("use_running_average", args[1] if len(args) > 1 else None)
    return default if given is None else given


def _keep(capture: "FlaxCapture | None", name: str, x: Any, frame: dict[str, Any], frozen: bool,
          seen: _Seen, axis: Any, local: bool = False) -> Any:
    """The [2, C] moments of one training call, and the trace's record of the
    layer. ``local``: a Linen layer with ``axis_name`` (inside ``pmap``),
    whose own statistics are the devices' averaged: this device's slice's
    moments are kept (the global ones are their pool)."""
    import jax
    import jax.numpy as jnp

    if frozen or "stats" not in frame or local:
        mean, var = _input_moments(x, axis)
    else:
        mean, var = frame["stats"]
    moments = jnp.stack([jnp.reshape(jnp.asarray(mean, jnp.float32), [-1]),
                         jnp.reshape(jnp.asarray(var, jnp.float32), [-1])])
    seen.samples = float(np.prod(x.shape)) / max(seen.channels, 1)
    if capture is not None:
        capture._traced(name, seen)
    return jax.lax.stop_gradient(moments)


def tapping(taps: "dict[int, Any] | None") -> None:
    """Sets this thread's measurement taps: ``{id(nnx.BatchNorm): tap(layer,
    x, out)}``, called after each call of those layers; while set, no layer
    keeps moments for a capture. None ends it."""
    _install_nnx()
    _LOCAL.tap = taps


def _install_nnx() -> None:
    if "nnx" in _INSTALLED:
        return
    from flax.nnx.nn import normalization

    from flax import nnx

    _wrap_compute_stats(normalization)
    original = nnx.BatchNorm.__call__

    @functools.wraps(original)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        tap = getattr(_LOCAL, "tap", None)  # a measurement pass (tb_bnstats.frameworks.flax.passes)
        if tap is not None:
            out = original(self, *args, **kwargs)
            if id(self) in tap:
                tap[id(self)](self, args[0] if args else kwargs.get("x"), out)
            return out
        channel: Any = vars(self).get(ATTRIBUTE)  # a BNMoments variable on a monitored layer
        if not isinstance(channel, _moments_class()):
            return original(self, *args, **kwargs)
        frozen = bool(_call_arg(args, kwargs, self.use_running_average))
        frames = _frames()
        frames.append({})
        try:
            out = original(self, *args, **kwargs)
        finally:
            frame = frames.pop()
        x = args[0] if args else kwargs.get("x")
        if frozen and not _differentiated(x):
            return out  # evaluation: not a training step
        meta = channel.get_metadata()
        capture = _CAPTURES.get(meta.get("capture", 0))
        try:
            seen = _Seen(int(self.num_features), float(self.momentum), float(self.epsilon), not frozen,
                         self.axis_name, type(self).__name__)
            channel[...] = _keep(capture, meta.get("layer", "?"), x, frame, frozen, seen, self.axis)
        except Exception as exc:  # noqa: BLE001 - the user's step goes on
            if capture is not None:
                capture.warn_once("keep", f"cannot keep the BN moments of this step: {type(exc).__name__}: {exc}")
        return out

    nnx.BatchNorm.__call__ = __call__
    _INSTALLED["nnx"] = original


def _linen_interceptor(next_fun: Any, args: tuple[Any, ...], kwargs: dict[str, Any], context: Any) -> Any:
    from flax import linen as nn

    module = context.module
    if (context.method_name != "__call__" or not isinstance(module, nn.BatchNorm) or module.scope is None
            or module.is_initializing() or not module.is_mutable_collection(COLLECTION)):
        return next_fun(*args, **kwargs)
    frozen = bool(_call_arg(args, kwargs, module.use_running_average))
    frames = _frames()
    frames.append({})
    try:
        out = next_fun(*args, **kwargs)
    finally:
        frame = frames.pop()
    x: Any = args[0] if args else kwargs.get("x")
    if frozen and not _differentiated(x):
        return out
    name = ".".join(str(p) for p in module.scope.path)
    capture = _LINEN[-1]() if _LINEN else None
    seen = _Seen(int(x.shape[module.axis if isinstance(module.axis, int) else module.axis[0]]),
                 float(module.momentum), float(module.epsilon),
                 not frozen and module.is_mutable_collection("batch_stats"), module.axis_name, type(module).__name__)
    module.put_variable(COLLECTION, "moments", _keep(capture, name, x, frame, frozen, seen, module.axis,
                                                     local=module.axis_name is not None))
    return out


_LINEN: list[weakref.ref] = []  # the Linen captures, the newest last (it gets the traces' records)


def _install_linen() -> None:
    if "linen" in _INSTALLED:
        return
    from flax.linen import module as linen_module
    from flax.linen import normalization

    _wrap_compute_stats(normalization)
    # Pushed for good on this thread's interceptor stack (what ``flax.linen.intercept_methods`` does for a block).
    linen_module._global_interceptor_stack.push(_linen_interceptor)
    _INSTALLED["linen"] = _linen_interceptor


@functools.cache
def _moments_class() -> Any:
    """:class:`BNMoments`, the ``nnx.Variable`` type of the side channel (made when Flax is first used)."""
    from flax import nnx

    class BNMoments(nnx.Variable):
        """tb_bnstats' side channel on a monitored ``nnx.BatchNorm``: the
        last training call's batch mean and variance ([2, C], float32)."""

    BNMoments.__module__ = __name__
    return BNMoments


# -- the ring ---------------------------------------------------------------------------------------


class _Ring:
    """K rows of one layout on the device (``format``'s ``ints`` and
    ``floats``) and what the next row needs: each layer's running statistics
    of the row before (for the update count), the counts and the row number."""

    def __init__(self, layout: ring_rows.Layout, last: list[Any], counts: list[int], seq: int) -> None:
        import jax.numpy as jnp

        self.layout = layout
        self.format = ring.RingFormat(layout, ring.INT32)
        self.steps = ring_rows.ring_steps(self.format.row_bytes)
        self.carry = {
            "ints": jnp.zeros(self.format.shape("ints", self.steps), jnp.int32),
            "floats": jnp.zeros(self.format.shape("floats", self.steps), jnp.float32),
            "last": [jnp.asarray(v, jnp.float32) for v in last],
            "counts": jnp.asarray(counts, jnp.int32).reshape([len(counts)]),
            "seq": jnp.asarray(seq, jnp.int32),
        }
        self.write = _writer(self.format, self.steps, layout.replicas)

    def read(self) -> ring_rows.Rows:
        import jax

        ints, floats = jax.device_get([self.carry["ints"], self.carry["floats"]])
        return self.format.rows({"ints": np.asarray(ints), "floats": np.asarray(floats)})

    def counts(self) -> list[int]:
        return [int(c) for c in np.asarray(self.carry["counts"])]


def _writer(row_format: ring.RingFormat, steps: int, replicas: int) -> Any:
    """The jitted row write of a ring (the module docstring), donating the ring."""
    import jax
    import jax.numpy as jnp

    def write(carry: dict[str, Any], step: Any, values: list[Any], moments: list[Any], running: list[Any],
              samples: list[Any]) -> dict[str, Any]:
        n = carry["seq"] + 1
        now = [jnp.concatenate([jnp.reshape(m, [-1]), jnp.reshape(v, [-1])]).astype(jnp.float32) for m, v in running]
        changed = jnp.stack([jnp.any(a != b) for a, b in zip(now, carry["last"])]).astype(jnp.int32) if now else \
            jnp.zeros([0], jnp.int32)
        counts = carry["counts"] + changed
        parts: list[list[Any]] = [[] for _ in range(replicas)]
        for layer_moments, (mean, var) in zip(moments, running):
            # One device: [2, C] and [C]; a pmapped step: [R, 2, C] and [R, C] (each device's).
            layer_moments = jnp.reshape(layer_moments, [replicas, 2, -1])
            mean, var = jnp.reshape(mean, [replicas, -1]), jnp.reshape(var, [replicas, -1])
            for r in range(replicas):
                parts[r] += [layer_moments[r, 0], layer_moments[r, 1], mean[r], var[r]]
        values = [jnp.mean(v) for v in values]  # a pmapped step's per-device scalars: their mean
        columns: dict[str, Sequence[Any]] = {ring.N: [n], ring.STEP: [step], ring.COUNTS: [counts], ring.VALUES: values,
                   ring.MOMENTS: [p for part in parts for p in part], ring.SAMPLES: samples}
        at = (n - 1) % steps
        return {"ints": carry["ints"].at[at].set(row_format.row("ints", JAX_OPS, columns)),
                "floats": carry["floats"].at[at].set(row_format.row("floats", JAX_OPS, columns)),
                "last": now, "counts": counts, "seq": n}

    return jax.jit(write, donate_argnums=(0,))


# -- the capture ------------------------------------------------------------------------------------


class FlaxCapture:
    """The BatchNorm layers of a Flax model, instrumented: a
    :class:`tb_bnstats.capture.Capture`.

    Args:
        model: an ``nnx.Module``, or a Linen ``(module, variables)`` pair
            (``variables`` holding ``batch_stats``).
        warn_once: ``warn_once(where, message)``, the recorder's.

    Raises:
        TypeError: ``model`` is neither.
    """

    def __init__(self, model: Any, warn_once: Any = None) -> None:
        from tb_bnstats.frameworks.flax import is_linen_pair, is_nnx

        self.warn_once = warn_once or (lambda where, message: warnings.warn(f"tb_bnstats: {message}",
                                                                             RuntimeWarning, stacklevel=3))
        self.model = model
        self.token = next(_TOKENS)
        _CAPTURES[self.token] = self
        self._seen: dict[str, _Seen] = {}  # name -> what the last trace of the step showed, in trace order
        self._slots: dict[str, _LayerSlot] = {}
        self._rings: dict[Any, _Ring] = {}
        self._written_key: Any = None
        self._drained = self._reads = 0
        self._seq = 0
        self._counts: dict[str, int] = {}
        self._last: dict[str, Any] = {}  # name -> running statistics of the last row (device)
        if is_nnx(model):
            self.api = "nnx"
            self._install_nnx(model)
        elif is_linen_pair(model):
            self.api = "linen"
            self._install_linen(*model)
        else:
            raise TypeError(f"tb_bnstats.flax needs an nnx.Module or a Linen (module, variables) pair, got "
                            f"{type(model).__name__}")

    # -- instrumenting ---------------------------------------------------------------------------

    def _install_nnx(self, model: Any) -> None:
        import jax.numpy as jnp

        from flax import nnx

        _install_nnx()
        moments_type = _moments_class()  # BNMoments
        self._modules: dict[str, Any] = {}
        for path, module in nnx.iter_graph(model):
            if isinstance(module, nnx.BatchNorm):
                name = ".".join(str(p) for p in path)
                if name in self._modules or not name:
                    continue
                self._modules[name] = module
                self._slots[name] = _LayerSlot(name, module.mean[...], module.var[...])
                setattr(module, ATTRIBUTE, moments_type(jnp.zeros([2, int(module.num_features)], jnp.float32),
                                                        layer=name, capture=self.token))

    def _install_linen(self, module: Any, variables: Any) -> None:
        _install_linen()
        _LINEN.append(weakref.ref(self))
        stats = variables.get("batch_stats", {}) if hasattr(variables, "get") else {}
        for path, leaf in _walk(stats):
            if isinstance(leaf, dict) and "mean" in leaf and "var" in leaf and not isinstance(leaf["mean"], dict):
                name = ".".join(path)
                self._slots[name] = _LayerSlot(name, leaf["mean"], leaf["var"])

    def _traced(self, name: str, seen: _Seen) -> None:
        """A trace of the train step ran layer ``name`` in training (called while tracing)."""
        if name in self._slots:
            self._seen.pop(name, None)
            self._seen[name] = seen  # trace order: the latest trace's

    # -- between steps ---------------------------------------------------------------------------

    def write_step(self, step: int, values: dict[str, Any], state: Any = None, moments: Any = None) -> bool:
        """The training step ``step`` is done: its moments, the running
        statistics now and ``values`` (``{name: array or number}``) become one
        row (one asynchronous dispatch; nothing is read back).

        Args:
            step: the optimizer's step after it.
            values: the step's scalars.
            state: Linen: the train state after the step (``.batch_stats``)
                or a variables dict (``["batch_stats"]``).
            moments: Linen: ``updates["bn_stats"]`` as the step returned it.

        Returns:
            True when a row was written (the step ran BN layers).
        """
        import jax.numpy as jnp

        names = [n for n in self._seen if n in self._slots]
        if not names:
            return False
        if self.api == "nnx":
            layer_moments = [getattr(self._modules[n], ATTRIBUTE)[...] for n in names]
            running = [(self._modules[n].mean[...], self._modules[n].var[...]) for n in names]
        else:
            stats = getattr(state, "batch_stats", None)
            if stats is None and hasattr(state, "get"):
                stats = state.get("batch_stats")
            if stats is None or moments is None:
                raise ValueError("a Linen step needs step(state, bn_stats=updates['bn_stats'], ...): the train state "
                                 "after the step and the moments its apply returned (mutable=['batch_stats', "
                                 "'bn_stats'])")
            layer_moments = [_at(moments, n)["moments"] for n in names]
            running = [(_at(stats, n)["mean"], _at(stats, n)["var"]) for n in names]
        seen = [self._seen[n] for n in names]
        # A pmapped step (Linen) returns each device's moments and statistics on a leading device axis.
        replicas = int(layer_moments[0].shape[0]) if layer_moments[0].ndim == 3 else 1
        if any(tuple(m.shape) != ((replicas, 2, s.channels) if replicas > 1 else (2, s.channels))
               or int(np.prod(r[0].shape)) != replicas * s.channels
               for m, r, s in zip(layer_moments, running, seen)):
            return False
        for s in seen:
            s.replicas = replicas
        key = self._written_key = (tuple(names), tuple(s.updating for s in seen), tuple(values), replicas)
        ring_ = self._rings.get(key)
        if ring_ is None:
            layout = ring_rows.Layout.of([self._slots[n] for n in names], [s.channels for s in seen],
                                         [s.updating for s in seen], list(values), (), replicas=replicas,
                                         moving_per_replica=replicas > 1)
            last = []  # the running statistics of the row before, as `now` in the row write lays them out
            for n, s in zip(names, seen):
                before = self._last.get(n)
                if before is None or int(np.prod(before.shape)) != 2 * replicas * s.channels:
                    slot = self._slots[n]
                    before = np.concatenate([np.tile(slot.init_mean, replicas), np.tile(slot.init_var, replicas)])
                last.append(before)
            ring_ = self._rings[key] = _Ring(layout, last, [self._counts.get(n, 0) for n in names], self._seq)
        samples = []
        if replicas > 1:
            samples = [np.asarray([s.samples for _ in range(replicas) for s in seen], np.float32)]
        ring_.carry = ring_.write(ring_.carry, int(step), [jnp.asarray(v, jnp.float32) for v in values.values()],
                                  layer_moments, running, samples)
        self._seq += 1
        for name, last in zip(names, ring_.carry["last"]):
            self._last[name] = last
        self._ring_names = names
        return True

    # -- the Capture protocol ----------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._slots)

    def layer_infos(self) -> list[LayerInfo]:
        out = []
        for depth, (name, seen) in enumerate(self._seen.items()):
            if name not in self._slots:
                continue
            out.append(LayerInfo(
                name=name, channels=seen.channels, momentum=seen.momentum, epsilon=seen.epsilon,
                init_mean=float(np.mean(self._slots[name].init_mean)),
                init_var=float(np.mean(self._slots[name].init_var)), moving_var_unbiased=False, depth=depth,
                layer_class=seen.layer_class, framework=FLAX, trainable=seen.updating,
                synchronized=seen.axis_name is not None, replicas=seen.replicas,
                moving_per_replica=seen.replicas > 1))
        return out

    def resume(self, step: int) -> dict[str, str]:
        """``"pretrained"`` for layers whose statistics are not Flax's initial
        0 / 1 (their count starts at 0 from them), ``"at_initializer"`` for
        layers at 0 / 1 when ``step`` > 0 steps were taken before."""
        out = {}
        for name, slot in self._slots.items():
            if slot.pretrained:
                out[name] = "pretrained"
            elif step > 0:
                out[name] = "at_initializer"
        return out

    def not_run(self) -> list[str]:
        return [name for name in self._slots if name not in self._seen]

    @property
    def drain_every(self) -> int | None:
        return min((r.steps for r in self._rings.values()), default=None)

    @property
    def reads(self) -> int:
        return self._reads

    def drain(self) -> list[Block]:
        parts = []
        for ring_ in self._rings.values():
            parts.append((ring_.read(), ring_.steps))
            self._reads += 1
        for ring_ in self._rings.values():
            for ref, count in zip(ring_.layout.layers, ring_.counts()):
                slot = ref()
                if slot is not None:
                    self._counts[slot.name] = max(self._counts.get(slot.name, 0), count)
        named = {id(slot): name for name, slot in self._slots.items()}
        blocks, self._drained = ring_rows.drain(parts, self._drained, named, self._slots)
        self._rings = {k: r for k, r in self._rings.items() if k == self._written_key}
        return blocks

    def close(self) -> None:
        """Removes the side channel from the model (NNX); Linen's interceptor
        stays installed (it keeps nothing unless a step asks for ``bn_stats``)."""
        if self.api == "nnx":
            for module in self._modules.values():
                if ATTRIBUTE in vars(module):
                    delattr(module, ATTRIBUTE)
        else:
            _LINEN[:] = [ref for ref in _LINEN if ref() is not None and ref() is not self]


def _walk(tree: Any, path: tuple[str, ...] = ()) -> Any:
    """``(path, node)`` of every dict in a nested mapping, itself first."""
    yield path, tree
    if hasattr(tree, "items"):
        for key, value in tree.items():
            if hasattr(value, "items"):
                yield from _walk(value, (*path, str(key)))


def _at(tree: Any, name: str) -> Any:
    for part in name.split("."):
        tree = tree[part]
    return tree
