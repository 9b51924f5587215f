"""The forward passes a measurement needs, as each framework provides them.

Every measurement (:mod:`.population`, :mod:`.gap`) is written once over
:class:`Passes`; each framework folder whose models are measured implements
it in its ``passes.py`` (:mod:`tb_bnstats.frameworks`), and :func:`for_model`
picks the one of a model's framework through the registry. No framework is
imported unless the model comes from it.
"""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np

from tb_bnstats import frameworks

# What one pass over a batch measured, per BN layer: (mean [C], var [C], values per channel), float64.
LayerMoments = dict[str, tuple[np.ndarray, np.ndarray, float]]


class Passes(Protocol):
    """What a framework's ``passes.py`` module provides (a module is checked
    against it attribute by attribute: ``tests/test_architecture.py``)."""

    def bn_layers(self, model: Any) -> list[tuple[str, Any]]:
        """``[(name, layer)]``: every BN layer of ``model``, named as its
        capture names it."""

    def is_frozen(self, layer: Any) -> bool:
        """Whether the layer normalizes with its moving statistics in training."""

    def moving_statistics(self, layer: Any) -> tuple[np.ndarray, np.ndarray, float]:
        """``(moving_mean, moving_var, epsilon)`` of a BN layer, float64."""

    def moment_passes(self, model: Any, named: list[tuple[str, Any]], training: bool,
                      frozen_batch_mode: bool = False) -> AbstractContextManager[Callable[[Any], LayerMoments]]:
        """A context yielding ``run(x) -> {name: (mean, var, n)}``: the
        ``named`` BN layers' input moments on batch ``x`` (frozen ones too
        with ``frozen_batch_mode``), the other layers in ``training`` mode,
        changing no state."""

    def write_population(self, layer: Any, pop: Any) -> Callable[[], None]:
        """Writes population statistics (``pop.mean``, ``pop.var``) into the
        layer's moving statistics; returns ``undo()``."""

    # Optional: averaged_model(model) -> dict | None, what the framework knows of ``model`` as an averaged
    # copy of another (SWA's AveragedModel): {"kind", "why", ...}; tb_bnstats.diagnose_model reads it.
    # GapProbe(model, x=None, y=None, named_layers=(), loss_fn=None): the
    # train/inference probe (tb_bnstats.measure.gap), a class.
    GapProbe: type


def framework_of(model: Any) -> str:
    """The ``LayerInfo.framework`` of ``model``'s layers (``"keras"``, ``"pytorch"``).

    Raises:
        ValueError: no registered framework measures ``model``.
    """
    return frameworks.for_model(model).layer_frameworks[0]


def for_model(model: Any) -> Any:
    """The :class:`Passes` module of ``model``'s framework.

    Raises:
        ValueError: no registered framework measures ``model``.
    """
    return frameworks.passes_for(model)


def gap_probe(model: Any, x: Any = None, y: Any = None, named_layers: Iterator[tuple[str, Any]] | None = None,
              loss_fn: Callable[[Any, Any], Any] | None = None) -> Any:
    """A ``GapProbe`` of ``model`` (its framework's), measuring ``named_layers``
    (default: none, the model's outputs only).

    Args:
        loss_fn: ``loss_fn(output, y)``, for frameworks whose models carry
            no loss (PyTorch); Keras uses the compiled loss.

    Raises:
        ValueError: as :func:`for_model`, or a ``loss_fn`` the framework
            does not take.
    """
    return for_model(model).GapProbe(model, x, y, list(named_layers or ()), loss_fn=loss_fn)
