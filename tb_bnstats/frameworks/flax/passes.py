"""The Flax part of the measurements (:class:`tb_bnstats.measure.passes.Passes`):
forward passes of an ``nnx.Module`` or of a Linen ``(module, variables)``
pair that change nothing in it.

* NNX: each pass runs on ``nnx.clone(model)``, a copy whose variables hold
  the same arrays: the copy's BatchNorms are set to batch statistics
  (``use_running_average=False``) or to their running ones, its Dropouts to
  the pass's mode (``deterministic``), and what the copy writes (running
  statistics, RNG counts) stays in the copy. Each measured BatchNorm of the
  copy is tapped: its input's moments (numpy, float64) and its output.
* Linen: ``module.apply(variables, x, ...)`` with ``batch_stats`` mutable
  and the updates thrown away; a method interceptor
  (``flax.linen.intercept_methods``) sets each BatchNorm's
  ``use_running_average`` and each Dropout's ``deterministic`` for the pass
  (the call's argument where the call passes one, else the module's
  attribute for that call) and taps the BatchNorms. The model's own mode
  argument (``train``, ``training``, ``is_training``, or ``deterministic``
  and the like, the other way round) is passed as the pass's mode; Dropout
  gets a fixed ``"dropout"`` key.

Passes run eagerly (no ``jit``): the moments are numpy's of the very input
arrays. Writing population statistics (:func:`write_population`) sets an
NNX layer's ``mean`` / ``var`` or the Linen pair's
``variables["batch_stats"]`` entries (a dict, changed in place); Flax's
running variance is the biased one, as the population's.

Frozen layers: an NNX BatchNorm with ``use_running_average=True`` while
another BatchNorm of the model has ``False`` (the model in training, that
layer kept on its running statistics) is frozen; after ``model.eval()``
none is. Linen decides at each call: no layer counts as frozen.
"""

import contextlib
import inspect
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from tb_bnstats import quantities
from tb_bnstats.frameworks.flax import is_linen_pair, is_nnx
from tb_bnstats.measure import data as batches
from tb_bnstats.measure.gap import ProbeLayer, ProbeResult

# Names of a Linen model's mode argument: True in training, and those meaning the opposite.
TRAIN_ARGS = ("train", "training", "is_training")
EVAL_ARGS = ("deterministic", "use_running_average", "inference", "eval", "evaluate")
DEFAULT_EPSILON = 1e-5  # Flax's, until a pass has seen the layer

_FROZEN: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()  # NNX BatchNorm -> frozen


class LinenLayer:
    """One ``nn.BatchNorm`` of a Linen ``(module, variables)`` pair: its path
    in ``variables["batch_stats"]`` and its ``epsilon`` (Flax's default
    until a pass has seen the layer)."""

    def __init__(self, variables: Any, path: tuple[str, ...]) -> None:
        self.variables, self.path, self.epsilon = variables, path, DEFAULT_EPSILON

    @property
    def stats(self) -> Any:
        """The layer's entry of ``variables["batch_stats"]`` (``mean``, ``var``)."""
        node = self.variables["batch_stats"]
        for part in self.path:
            node = node[part]
        return node


def bn_layers(model: Any) -> list[tuple[str, Any]]:
    """``[(name, layer)]``: every BatchNorm, named as the capture names it:
    NNX's ``nnx.BatchNorm`` modules by graph path, Linen's by their path in
    ``variables["batch_stats"]`` (:class:`LinenLayer`).

    Raises:
        ValueError: ``model`` is neither an ``nnx.Module`` nor a Linen pair.
    """
    if is_nnx(model):
        from flax import nnx

        out, seen = [], set()
        for path, module in nnx.iter_graph(model):
            if isinstance(module, nnx.BatchNorm) and id(module) not in seen and path:
                seen.add(id(module))
                out.append((".".join(str(p) for p in path), module))
        training = any(not m.use_running_average for _, m in out)
        for _, module in out:
            _FROZEN[module] = bool(module.use_running_average) and training
        return out
    if is_linen_pair(model):
        _, variables = model
        out_linen: list[tuple[str, Any]] = []
        for path, node in _walk(variables.get("batch_stats", {})):
            if hasattr(node, "get") and "mean" in node and "var" in node and not hasattr(node["mean"], "items"):
                out_linen.append((".".join(path), LinenLayer(variables, path)))
        return out_linen
    raise ValueError(f"expected an nnx.Module or a Linen (module, variables) pair, got {type(model).__name__}")


def _walk(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, tree
    if hasattr(tree, "items"):
        for key, value in tree.items():
            if hasattr(value, "items"):
                yield from _walk(value, (*path, str(key)))


def is_frozen(layer: Any) -> bool:
    """Whether the layer normalizes with its running statistics in training
    (module docstring: NNX only; a Linen layer never counts as frozen)."""
    return not isinstance(layer, LinenLayer) and _FROZEN.get(layer, False)


def moving_statistics(layer: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """``(mean, var, epsilon)`` of a BatchNorm's running statistics (float64)."""
    if isinstance(layer, LinenLayer):
        stats = layer.stats
        return (np.asarray(stats["mean"], np.float64).reshape(-1), np.asarray(stats["var"], np.float64).reshape(-1),
                float(layer.epsilon))
    return (np.asarray(layer.mean[...], np.float64).reshape(-1), np.asarray(layer.var[...], np.float64).reshape(-1),
            float(layer.epsilon))


def _moments(x: Any, axis: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-channel mean and biased variance of ``x`` (float64) over every
    axis but the feature ``axis``, and the values per channel."""
    x = np.asarray(x, np.float64)
    features = {a % x.ndim for a in (axis if isinstance(axis, (tuple, list)) else (axis,))}
    reduce = tuple(a for a in range(x.ndim) if a not in features)
    n = float(np.prod([x.shape[a] for a in reduce]))
    return x.mean(reduce).reshape(-1), x.var(reduce).reshape(-1), n


class ModePasses:
    """Forward passes of a Flax model with its BatchNorms in a given mode,
    handing out the input moments and outputs of those ``named`` (module
    docstring).

    Args:
        model: an ``nnx.Module`` or a Linen ``(module, variables)`` pair.
        named: ``[(name, layer)]`` of :func:`bn_layers` to measure.
    """

    def __init__(self, model: Any, named: list[tuple[str, Any]]) -> None:
        self.model, self.named = model, list(named)
        self.names = {name for name, _ in self.named}

    def run(self, x: Any, training: bool, bn_batch: bool,
            frozen_batch_mode: bool = False) -> tuple[Any, dict[str, tuple[np.ndarray, np.ndarray, float]],
                                                      dict[str, Any]]:
        """One forward pass of ``x``.

        Args:
            x: the batch.
            training: mode of the layers that are not BatchNorm (Dropout).
            bn_batch: BatchNorms (but frozen ones) normalize with batch
                moments (True) or their running statistics (False).
            frozen_batch_mode: with ``bn_batch``, the frozen ones too.

        Returns:
            ``(output, {name: (mean [C], var [C], n)}, {name: BN output})``.
        """
        if is_linen_pair(self.model):
            return self._run_linen(x, training, bn_batch)
        return self._run_nnx(x, training, bn_batch, frozen_batch_mode)

    def _run_nnx(self, x: Any, training: bool, bn_batch: bool, frozen_batch_mode: bool) -> Any:
        from flax import nnx
        from tb_bnstats.frameworks.flax import capture

        model = self.model
        original = dict(bn_layers(model))
        copy = nnx.clone(model)
        moments: dict[str, Any] = {}
        outputs: dict[str, Any] = {}
        taps = {}
        copy.set_attributes(deterministic=not training, raise_if_not_found=False)
        for name, layer in bn_layers(copy):
            kept = is_frozen(original[name]) and not frozen_batch_mode
            layer.use_running_average = not (bn_batch and not kept)
            if name in self.names:
                taps[id(layer)] = self._tap(name, moments, outputs)
        capture.tapping(taps)
        try:
            out = copy(x)
        finally:
            capture.tapping(None)
        return out, moments, outputs

    @staticmethod
    def _tap(name: str, moments: dict[str, Any], outputs: dict[str, Any]) -> Callable[[Any, Any, Any], None]:
        def keep(layer: Any, x: Any, out: Any) -> None:
            moments[name] = _moments(x, layer.axis)
            outputs[name] = np.asarray(out)

        return keep

    def _run_linen(self, x: Any, training: bool, bn_batch: bool) -> Any:
        import jax

        from flax import linen as nn

        module, variables = self.model
        layers = dict(bn_layers(self.model))
        moments: dict[str, Any] = {}
        outputs: dict[str, Any] = {}

        def interceptor(next_fun: Any, args: tuple[Any, ...], kwargs: dict[str, Any], context: Any) -> Any:
            layer = context.module
            if context.method_name != "__call__" or layer.scope is None:
                return next_fun(*args, **kwargs)
            if isinstance(layer, nn.BatchNorm):
                name = ".".join(str(p) for p in layer.scope.path)
                with _mode(layer, "use_running_average", not bn_batch, args, kwargs) as (args, kwargs):
                    out = next_fun(*args, **kwargs)
                if name in layers:
                    layers[name].epsilon = float(layer.epsilon)
                if name in self.names:
                    moments[name] = _moments(args[0] if args else kwargs["x"], layer.axis)
                    outputs[name] = np.asarray(out)
                return out
            if isinstance(layer, nn.Dropout):
                with _mode(layer, "deterministic", not training, args, kwargs) as (args, kwargs):
                    return next_fun(*args, **kwargs)
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            out, _ = module.apply(dict(variables), x, **_mode_arguments(module, training),
                                  mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        return out, moments, outputs


@contextlib.contextmanager
def _mode(layer: Any, field: str, value: bool, args: tuple[Any, ...],
          kwargs: dict[str, Any]) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    """A Linen layer's mode flag (``use_running_average`` / ``deterministic``,
    the second argument of its ``__call__``) set to ``value`` for one call:
    the call's argument where given, else the layer's attribute (restored)."""
    if field in kwargs or len(args) > 1:
        if field in kwargs:
            kwargs = {**kwargs, field: value}
        else:
            args = (args[0], value, *args[2:])
        yield args, kwargs
        return
    before = getattr(layer, field)
    object.__setattr__(layer, field, value)
    try:
        yield args, kwargs
    finally:
        object.__setattr__(layer, field, before)


def _mode_arguments(module: Any, training: bool) -> dict[str, bool]:
    """The model's mode keyword arguments for a pass (module docstring).

    Raises:
        ValueError: a required argument (after the input) that is not a mode.
    """
    out = {}
    params = list(inspect.signature(module.__call__).parameters.values())[1:]
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in TRAIN_ARGS:
            out[p.name] = training
        elif p.name in EVAL_ARGS:
            out[p.name] = not training
        elif p.default is p.empty:
            raise ValueError(f"cannot call {type(module).__name__} for a measurement: its argument {p.name!r} "
                             f"is neither the input nor a mode ({', '.join(TRAIN_ARGS + EVAL_ARGS)})")
    return out


@contextlib.contextmanager
def moment_passes(model: Any, named: list[tuple[str, Any]], training: bool,
                  frozen_batch_mode: bool = False) -> Iterator[Callable[[Any], Any]]:
    """The population measurement's passes: BatchNorms normalize with batch
    moments (frozen ones too with ``frozen_batch_mode``), other layers in
    ``training`` mode.

    Yields:
        ``run(x) -> {name: (mean [C], var [C], n)}`` as numpy float64.
    """
    passes = ModePasses(model, named)

    def run(x: Any) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
        return passes.run(x, training=training, bn_batch=True, frozen_batch_mode=frozen_batch_mode)[1]

    yield run


def write_population(layer: Any, pop: Any) -> Callable[[], None]:
    """Writes population statistics (``pop.mean``, ``pop.var``, biased as
    Flax's running variance) into a BatchNorm's running statistics.

    Returns:
        ``undo()``, which puts the previous arrays back.

    Raises:
        TypeError: a Linen pair whose ``batch_stats`` cannot be changed in
            place (a ``FrozenDict``).
    """
    import jax.numpy as jnp

    if isinstance(layer, LinenLayer):
        stats = layer.stats
        if not isinstance(stats, dict):
            raise TypeError(f"the Linen variables' batch_stats are a {type(stats).__name__}: pass a (module, "
                            "variables) pair with plain dicts (flax.core.unfreeze(variables)) to write into them")
        saved_linen = (stats["mean"], stats["var"])

        def undo_linen() -> None:
            stats["mean"], stats["var"] = saved_linen

        stats["mean"] = jnp.asarray(pop.mean, saved_linen[0].dtype).reshape(saved_linen[0].shape)
        stats["var"] = jnp.asarray(pop.var, saved_linen[1].dtype).reshape(saved_linen[1].shape)
        return undo_linen
    saved = (layer.mean[...], layer.var[...])

    def undo() -> None:
        layer.mean[...], layer.var[...] = saved

    layer.mean[...] = jnp.asarray(pop.mean, saved[0].dtype).reshape(saved[0].shape)
    layer.var[...] = jnp.asarray(pop.var, saved[1].dtype).reshape(saved[1].shape)
    return undo


class GapProbe:
    """Runs batches through a Flax model in training mode (BatchNorms on batch
    statistics, Dropout on) and in inference mode (running statistics,
    Dropout off) without changing anything.

    Args:
        model: an ``nnx.Module`` or a Linen ``(module, variables)`` pair.
        x, y: an optional fixed batch for :meth:`run` without arguments.
        named_layers: ``[(name, layer)]`` of :func:`bn_layers` to measure.
        loss_fn: ``loss_fn(output, y) -> scalar`` for the ``loss`` of both
            modes (None: no loss).
    """

    def __init__(self, model: Any, x: Any = None, y: Any = None, named_layers: Any = (),
                 loss_fn: Callable[[Any, Any], Any] | None = None) -> None:
        self.model, self.x, self.y, self.loss_fn = model, x, y, loss_fn
        self.passes = ModePasses(model, list(named_layers))

    def run(self, x: Any = None, y: Any = None) -> ProbeResult:
        """Both modes on ``(x, y)``, or on the fixed batch.

        Returns:
            :class:`tb_bnstats.measure.gap.ProbeResult`.
        """
        if x is None:
            x, y = self.x, self.y
        out_t, moments, bn_out_t = self.passes.run(x, training=True, bn_batch=True)
        out_i, _, bn_out_i = self.passes.run(x, training=False, bn_batch=False)
        y_t, y_i = (np.asarray(batches.first_leaf(o), np.float64) for o in (out_t, out_i))
        metrics = {True: self._metrics(out_t, y, y_t), False: self._metrics(out_i, y, y_i)}
        layers = {}
        for name, layer in self.passes.named:
            if name not in moments or name not in bn_out_i:
                continue
            mean, var, _ = moments[name]
            moving_mean, moving_var, _ = moving_statistics(layer)
            drift = quantities.output_drift(*quantities.squared_norms(bn_out_t[name], bn_out_i[name]))
            layers[name] = ProbeLayer(mean, var, moving_mean, moving_var, drift)
        return ProbeResult(metrics[True], metrics[False], layers, y_t, y_i, quantities.squared_norms(y_t, y_i))

    def _metrics(self, out: Any, y: Any, y_np: np.ndarray) -> dict[str, float]:
        if y is None:
            return {}
        found = {}
        if self.loss_fn is not None:
            found["loss"] = float(self.loss_fn(batches.first_leaf(out), y))
        accuracy = quantities.argmax_accuracy(np.asarray(y), y_np)
        if accuracy is not None:
            found["accuracy"] = accuracy
        return found
