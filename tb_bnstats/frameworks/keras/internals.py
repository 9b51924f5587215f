"""The private Keras API tb_bnstats relies on, in one place.

Keras 3 and tf_keras (Keras 2) have no public way to see a BatchNormalization
layer's batch moments inside the train step, to list every nested layer, or
to run the compiled loss statelessly; tb_bnstats uses a few private names for
it. Every one of them is listed in :data:`SYMBOLS` (what it is, why it is
needed) and reached through the accessors below, never by name elsewhere in
``tb_bnstats/frameworks/keras`` (``train_function``, which Keras' own fit
loop sets and calls, is checked but used by name).

:func:`check` looks each one up on the installed Keras (and its kind:
callable or attribute, and a callable's parameters) and returns the missing
ones. The callback runs it on the first model it is given: with a Keras whose
internals changed, it warns once (:func:`missing_message`: the symbol, the
installed version, the tested range) and turns monitoring off -- ``fit`` runs
unchanged, nothing is wrapped and nothing is written. An accessor called on a
Keras without its symbol raises :class:`MissingInternal` with the same words.

Tested ranges: :data:`TESTED_KERAS` (setup.py pins Keras 3 to it) and
:data:`TESTED_TF_KERAS`; a release outside them is guarded by :func:`check`.
"""

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# The Keras 3 releases tb_bnstats is tested with: setup.py's pin (a release outside it is checked symbol by symbol).
TESTED_KERAS = ">=3.10,<3.16"
# The tf-keras (Keras 2) releases tested: the same minor as TensorFlow (README, Install).
TESTED_TF_KERAS = ">=2.21,<2.22"

KERAS3, TF_KERAS = "keras", "tf_keras"


class MissingInternal(AttributeError):
    """A private Keras symbol tb_bnstats needs is not on the installed Keras."""


@dataclass(frozen=True)
class Symbol:
    """One private name: ``owner`` (a dotted import path, module or class)
    and ``attribute`` on it (None: the owner itself), of ``framework``
    (``"keras"`` or ``"tf_keras"``), only on ``backend`` when set (Keras 3's
    backend name); ``callable`` (else an attribute of an instance of a
    tiny functional model, :func:`_instance`); ``params``: the leading
    parameter names a callable must take, in order (how tb_bnstats calls
    it); with ``by_keyword``, in any order."""

    owner: str
    attribute: str | None
    why: str
    framework: str = KERAS3
    backend: str | None = None
    callable: bool = True
    params: tuple[str, ...] = ()
    by_keyword: bool = False

    @property
    def name(self) -> str:
        return self.owner if self.attribute is None else f"{self.owner}.{self.attribute}"


SYMBOLS: tuple[Symbol, ...] = (
    # -- Keras 3, every backend ---------------------------------------------------------------------------------
    Symbol("keras.layers.BatchNormalization", "_moments",
           "(mean, variance) of a batch, called by the layer in training mode: wrapped per layer to hand the exact "
           "moments the layer normalizes with to the capture (no second forward pass); the passes call the class's",
           params=("self", "inputs", "mask")),
    Symbol("keras.layers.Layer", "_flatten_layers",
           "every nested layer of a model (nested models, custom layers, subclassed models): where the BN layers "
           "are found", params=("include_self", "recursive"), by_keyword=True),
    Symbol("keras.Model", "_nodes_by_depth",
           "a functional model's calls, by depth: which BN layers its graph calls with training=False", callable=False),
    Symbol("keras.src.ops.node.Node", "arguments",
           "the arguments of one call in a functional graph (the training=False given to it)", callable=False),
    Symbol("keras.Model", "_compile_loss",
           "the loss compile() made: the probe runs the compiled loss statelessly when there is one; compile() "
           "makes a new one (the probe's traces are then stale)", callable=False),
    Symbol("keras.Model", "_compile_metrics",
           "the metrics compile() made: the probe evaluates them statelessly in both modes", callable=False),
    Symbol("keras.Model", "make_train_function",
           "makes model.train_function from train_step (undocumented in Keras 3): the JAX capture wraps it so "
           "that each new train function carries the ring", params=("self", "force")),
    Symbol("keras.Model", "train_function",
           "the function fit calls per execution (undocumented): wrapped to drain the capture when training raises",
           callable=False),
    # -- Keras 3, JAX backend -----------------------------------------------------------------------------------
    Symbol("keras.Model", "_get_state_sharding_spec",
           "the train function's state shardings under a keras.distribution: the ring's arrays are added, "
           "replicated", backend="jax", params=("self",)),
    Symbol("keras.Model", "jax_state_sync",
           "puts fit's JAX state back into the variables (undocumented): a measurement pass reads the variables",
           backend="jax", params=("self",)),
    Symbol("keras.src.backend.config", "is_nnx_enabled",
           "whether flax NNX is on: Keras then calls the class's train_step and bypasses the wrapped one",
           backend="jax"),
    # -- tf_keras (Keras 2) -------------------------------------------------------------------------------------
    Symbol("tf_keras.src.layers.normalization.batch_normalization", "BatchNormalizationBase",
           "the base of tf.keras.layers.BatchNormalization and tf.compat.v1.layers': the classes looked for",
           framework=TF_KERAS, callable=False),
    Symbol("tf_keras.src.layers.normalization.batch_normalization.BatchNormalizationBase", "_moments",
           "the non-fused kernel's batch moments: wrapped per layer, as Keras 3's",
           framework=TF_KERAS, params=("self", "inputs", "reduction_axes", "keep_dims", "mask")),
    Symbol("tf_keras.src.layers.normalization.batch_normalization.BatchNormalizationBase", "_fused_batch_norm",
           "the fused kernel (its moments stay inside it): wrapped to take the moments of its input",
           framework=TF_KERAS, params=("self", "inputs", "mask", "training")),
    Symbol("tf_keras.layers.Layer", "_flatten_layers", "every nested layer of a tf_keras model, as Keras 3's",
           framework=TF_KERAS, params=("include_self", "recursive"), by_keyword=True),
    # Not checked, provided: tf_keras' CallbackList asks every callback for _supports_tf_logs and
    # _implements_{train,test,predict}_batch_hooks (BNStatsCallback defines them); without them, it would
    # only convert the logs to numbers every step.
)


def _resolve(dotted: str) -> Any:
    """The module or class at ``dotted`` (``keras.layers.Layer``,
    ``keras.src.backend.config``), importing the longest module prefix.

    Raises:
        MissingInternal: not found.
    """
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            if not hasattr(obj, part):
                raise MissingInternal(f"no {'.'.join(parts[:parts.index(part) + 1])}")
            obj = getattr(obj, part)
        return obj
    raise MissingInternal(f"no module {parts[0]}")


_INSTANCES: dict[str, Any] = {}


def _instance(owner: str) -> Any:
    """An instance of ``owner`` holding the attributes set in ``__init__``:
    a tiny functional model (Input -> Identity, no weights, a few ms) for
    ``keras.Model``, one of its graph's calls for ``Node``."""
    if not _INSTANCES:
        import keras

        # Named, so that Keras' automatic names (dense_1, functional_2...) of the user's models do not move.
        inputs = keras.Input((1,), name="tb_bnstats_internals_input")
        outputs = keras.layers.Identity(name="tb_bnstats_internals_identity")(inputs)
        model = keras.Model(inputs, outputs, name="tb_bnstats_internals_model")
        _INSTANCES["keras.Model"] = model
        calls = [node for node in graph_nodes(model) if not getattr(node, "is_input", False)]
        _INSTANCES["keras.src.ops.node.Node"] = calls[0] if calls else None
    return _INSTANCES.get(owner)


def framework_version(framework: str = KERAS3) -> str:
    """The installed version of ``framework`` ("?" when it has none)."""
    try:
        module = importlib.import_module(framework)
    except ImportError:
        return "(not installed)"
    return str(getattr(module, "__version__", "?"))


def _problem(symbol: Symbol) -> str | None:
    """Why ``symbol`` is not usable on the installed Keras (None: it is)."""
    try:
        owner = _resolve(symbol.owner)
        if symbol.attribute is None:
            found = owner
        elif symbol.callable or inspect.ismodule(owner):
            if not hasattr(owner, symbol.attribute):
                return "missing"
            found = getattr(owner, symbol.attribute)
        else:  # set on instances
            instance = _instance(symbol.owner)
            if instance is None or not hasattr(instance, symbol.attribute):
                return "missing"
            found = getattr(instance, symbol.attribute)
    except MissingInternal as e:
        return f"missing ({e})"
    except Exception as e:  # noqa: BLE001 - any failure to look it up is "not usable"
        return f"not usable ({type(e).__name__}: {e})"
    if symbol.callable:
        if not callable(found):
            return "not callable"
        if symbol.params:
            try:
                names = tuple(inspect.signature(found).parameters)
            except (TypeError, ValueError):
                return None  # no signature to read (a builtin): trusted
            if (not set(symbol.params) <= set(names) if symbol.by_keyword
                    else names[:len(symbol.params)] != symbol.params):
                return f"takes ({', '.join(names)}), tb_bnstats calls it with ({', '.join(symbol.params)})"
    return None


def check(framework: str = KERAS3, backend: str | None = None) -> list[tuple[Symbol, str]]:
    """The symbols of ``framework`` (``"keras"``: Keras 3 on ``backend``,
    default the running one; ``"tf_keras"``) that the installed release
    lacks or changed, as ``[(symbol, problem)]``: empty when all are
    there. Symbols of another backend are not looked up."""
    if framework == KERAS3 and backend is None:
        import keras

        backend = keras.backend.backend()
    return [(s, problem) for s in SYMBOLS
            if s.framework == framework and (s.backend is None or s.backend == backend)
            and (problem := _problem(s)) is not None]


def missing_message(missing: Sequence[tuple[Symbol, str]], framework: str = KERAS3) -> str:
    """The warning of :func:`check`'s findings: the symbols, the installed
    version, the tested range, and what happens (monitoring off)."""
    tested = TESTED_KERAS if framework == KERAS3 else TESTED_TF_KERAS
    package = "keras" if framework == KERAS3 else "tf-keras"
    what = "; ".join(f"{s.name}: {problem}" for s, problem in missing)
    return (f"tb_bnstats: the private {package} API it relies on changed in {package} "
            f"{framework_version(framework)} ({what}); tb_bnstats is tested with {package}{tested}. "
            f"BatchNormalization monitoring is off for this model: fit runs unchanged and nothing is logged. "
            f"Install {package}{tested} to monitor (tb_bnstats.frameworks.keras.internals lists what it uses).")


def _get(obj: Any, attribute: str, symbol: str) -> Any:
    try:
        return getattr(obj, attribute)
    except AttributeError:
        raise MissingInternal(missing_message([(_by_name(symbol), "missing")], _by_name(symbol).framework)) from None


def _by_name(name: str) -> Symbol:
    return next(s for s in SYMBOLS if s.name == name)


# -- accessors: the only places that name the private API ---------------------------------------------------------

def flatten_layers(model: Any) -> list[Any]:
    """Every layer nested in ``model`` at any depth, ``model`` excluded
    (Keras 3's or tf_keras' ``_flatten_layers``)."""
    tf_keras_model = "tf_keras" in type(model).__module__
    flatten = _get(model, "_flatten_layers", "tf_keras.layers.Layer._flatten_layers" if tf_keras_model
                   else "keras.layers.Layer._flatten_layers")
    return list(flatten(include_self=False, recursive=True))


def nested_layers(obj: Any) -> list[Any]:
    """:func:`flatten_layers` of a graph's operation; [] when it has no
    layers (an op that is not a layer)."""
    return flatten_layers(obj) if hasattr(obj, "_flatten_layers") else []


def graph_nodes(model: Any) -> list[Any]:
    """The calls of ``model``'s own functional graph (every depth); [] for
    a model without one (Sequential before build, subclassed, a layer)."""
    by_depth = getattr(model, "_nodes_by_depth", None) or {}
    return [node for nodes in by_depth.values() for node in nodes]


def node_kwargs(node: Any) -> dict[str, Any]:
    """The keyword arguments one graph call was made with ({} if unknown)."""
    arguments = getattr(node, "arguments", None)
    return {} if arguments is None else dict(arguments.kwargs)


MOMENTS = "_moments"  # the attribute a layer's own wrapper is installed under (passes save and restore it)


def moments(layer: Any) -> Callable[..., Any]:
    """``layer._moments`` as bound now (possibly tb_bnstats' wrapper)."""
    return _get(layer, MOMENTS, "keras.layers.BatchNormalization._moments" if "tf_keras" not in type(layer).__module__
                else "tf_keras.src.layers.normalization.batch_normalization.BatchNormalizationBase._moments")


def class_moments(layer: Any) -> Callable[..., Any]:
    """The class's ``_moments`` (unbound, bypassing any instance wrapper)."""
    return _get(type(layer), MOMENTS, "keras.layers.BatchNormalization._moments")


def set_moments(layer: Any, fn: Callable[..., Any]) -> None:
    """Installs ``fn`` as ``layer._moments`` (on the instance)."""
    setattr(layer, MOMENTS, fn)


def fused_batch_norm(layer: Any) -> Callable[..., Any]:
    """tf_keras' ``layer._fused_batch_norm`` as bound now."""
    return _get(layer, "_fused_batch_norm",
                "tf_keras.src.layers.normalization.batch_normalization.BatchNormalizationBase._fused_batch_norm")


def set_fused_batch_norm(layer: Any, fn: Callable[..., Any]) -> None:
    """Installs ``fn`` as tf_keras' ``layer._fused_batch_norm``."""
    layer._fused_batch_norm = fn


def tf_keras_batchnorm_classes() -> tuple[type, ...]:
    """tf_keras' BN base class, as a tuple for ``isinstance``."""
    try:
        from tf_keras.src.layers.normalization.batch_normalization import BatchNormalizationBase
    except ImportError:
        name = "tf_keras.src.layers.normalization.batch_normalization.BatchNormalizationBase"
        raise MissingInternal(missing_message([(_by_name(name), "missing")], TF_KERAS)) from None
    return (BatchNormalizationBase,)


def compiled_loss(model: Any) -> Any:
    """The loss ``compile`` made (None: none, or not compiled)."""
    return getattr(model, "_compile_loss", None)


def compiled_metrics(model: Any) -> Any:
    """The metrics ``compile`` made (None: none, or not compiled)."""
    return getattr(model, "_compile_metrics", None)


def make_train_function(model: Any) -> Callable[..., Any]:
    """``model.make_train_function`` as bound now."""
    return _get(model, "make_train_function", "keras.Model.make_train_function")


def set_make_train_function(model: Any, fn: Callable[..., Any]) -> None:
    """Installs ``fn`` as ``model.make_train_function`` (on the instance)."""
    model.make_train_function = fn


def state_sharding_spec(model: Any) -> Callable[..., Any]:
    """JAX: ``model._get_state_sharding_spec`` as bound now."""
    return _get(model, "_get_state_sharding_spec", "keras.Model._get_state_sharding_spec")


def set_state_sharding_spec(model: Any, fn: Callable[..., Any]) -> None:
    """JAX: installs ``fn`` as ``model._get_state_sharding_spec``."""
    model._get_state_sharding_spec = fn


def nnx_enabled() -> bool:
    """JAX: whether flax NNX is enabled (False on a Keras without NNX)."""
    try:
        module = importlib.import_module("keras.src.backend.config")
    except ImportError:
        return False
    enabled = getattr(module, "is_nnx_enabled", None)
    return bool(enabled()) if enabled is not None else False


def state_sync(model: Any) -> None:
    """JAX: puts ``fit``'s state back into the variables (``jax_state_sync``;
    nothing on the other backends, whose variables hold the state)."""
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()
