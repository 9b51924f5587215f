"""The frameworks tb_bnstats monitors, one folder each, and the registry
the neutral core asks about them.

A folder ``tb_bnstats/frameworks/<name>/`` holds everything of one
framework:

* its adapter, what the user adds to training (Keras' ``callback.py``,
  PyTorch's and TensorFlow 1's ``monitor.py``): it makes the capture and hands
  the training steps to :class:`tb_bnstats.recorder.Recorder`;
* its capture (``capture``), a :class:`tb_bnstats.capture.Capture`;
* its measurement passes (``passes.py``), a
  :class:`tb_bnstats.measure.passes.Passes`, where
  :func:`tb_bnstats.recalibrate` and the other measurements take its models;
* its words (``words.py``), a :class:`tb_bnstats.diagnosis.words.Words` per
  value of :attr:`tb_bnstats.format.metadata.LayerInfo.framework` its layers
  are logged with.

Its ``__init__`` defines ``FRAMEWORK``, a :class:`Framework`, and imports
neither the framework nor the rest of its folder, so that the CLI and the
TensorBoard plugin speak any framework's words in a process that has none of
them installed.

The core (format, quantities, write, read, diagnosis, plugin, recorder,
capture, measure) imports no framework folder, and no folder imports another
(``tests/test_architecture.py``); the core asks :func:`for_model` and
:func:`words_for`. Adding a framework is one folder and one line of
:data:`REGISTRY` (docs/adding-a-framework.md).
"""

import dataclasses
import functools
import importlib
from collections.abc import Callable
from typing import Any

# The framework folders, in the order a model is offered to them (a Keras model under the torch
# backend is also a torch.nn.Module: Keras is asked first).
REGISTRY = (
    "tb_bnstats.frameworks.keras",
    "tb_bnstats.frameworks.torch",
    "tb_bnstats.frameworks.tf1",
    "tb_bnstats.frameworks.flax",
)


@dataclasses.dataclass(frozen=True)
class Framework:
    """One framework's entry in the registry.

    Attributes:
        name: how messages name it ("Keras 3", "PyTorch").
        layer_frameworks: the values of ``LayerInfo.framework`` its layers
            are logged with (Keras' folder logs Keras 3 and tf_keras layers).
        words: the module holding ``WORDS``, ``{layer framework: Words}``
            for each of ``layer_frameworks`` (imported when a finding is
            worded; it must import no framework).
        owns: whether a model is one of this framework's; it must not
            import the framework (look in ``sys.modules``: a model of a
            framework not imported yet is not that framework's). None: no
            model of it is measured live.
        passes: the module of its :class:`tb_bnstats.measure.passes.Passes`
            (imported with the framework when a model of it is measured);
            None where the measurements do not take its models.
    """

    name: str
    layer_frameworks: tuple[str, ...]
    words: str
    owns: Callable[[Any], bool] | None = None
    passes: str | None = None


@functools.cache
def registered() -> tuple[Framework, ...]:
    """Every registered framework's :class:`Framework`, in :data:`REGISTRY` order."""
    return tuple(importlib.import_module(module).FRAMEWORK for module in REGISTRY)


def for_model(model: Any) -> Framework:
    """The framework ``model`` comes from, among those whose models are measured.

    Raises:
        ValueError: no registered framework owns ``model``.
    """
    for framework in registered():
        if framework.owns is not None and framework.passes is not None and framework.owns(model):
            return framework
    names = " and ".join(f.name for f in registered() if f.passes is not None)
    raise ValueError(f"tb_bnstats measures models of {names}; got {type(model).__name__}")


def passes_for(model: Any) -> Any:
    """The measurement passes module of ``model``'s framework
    (:class:`tb_bnstats.measure.passes.Passes`).

    Raises:
        ValueError: as :func:`for_model`.
    """
    return importlib.import_module(for_model(model).passes)  # type: ignore[arg-type]


@functools.cache
def _words() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for framework in registered():
        out.update(importlib.import_module(framework.words).WORDS)
    return out


def words_for(layer_framework: str | None) -> Any:
    """The :class:`tb_bnstats.diagnosis.words.Words` of layers logged with
    ``LayerInfo.framework == layer_framework``; None when no registered
    framework logs such layers (a log of a framework this version lacks)."""
    return _words().get(layer_framework) if layer_framework is not None else None
