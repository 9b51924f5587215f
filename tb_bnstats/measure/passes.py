"""Which framework's forward passes measure a model.

Every measurement (:mod:`.population`, :mod:`.gap`) is written once over
what a framework module provides; :func:`for_model` picks the module:

* :mod:`tb_bnstats.measure.keras_passes` for a Keras 3 model (any backend;
  a Keras model is also a ``torch.nn.Module`` under the torch backend, so
  Keras is asked first);
* :mod:`tb_bnstats.measure.torch_passes` for a ``torch.nn.Module``.

Each provides ``bn_layers(model)``, ``is_frozen(layer)``,
``moving_statistics(layer)``, ``moment_passes(model, named, training, frozen_batch_mode)``,
``write_population(layer, pop)`` and ``GapProbe``. Neither framework is
imported unless the model comes from it.
"""

import importlib
import sys


def framework_of(model):
    """``"keras"`` or ``"pytorch"``.

    Raises:
        ValueError: ``model`` is neither a Keras model nor a ``torch.nn.Module``.
    """
    keras = sys.modules.get("keras")
    if keras is not None and isinstance(model, keras.layers.Layer):
        return "keras"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return "pytorch"
    raise ValueError(f"tb_bnstats measures Keras 3 models and torch.nn.Module; got {type(model).__name__}")


def for_model(model):
    """The measurement module of ``model``'s framework (module docstring).

    Raises:
        ValueError: as :func:`framework_of`.
    """
    name = {"keras": "keras_passes", "pytorch": "torch_passes"}[framework_of(model)]
    return importlib.import_module(f"tb_bnstats.measure.{name}")


def gap_probe(model, x=None, y=None, named_layers=None, loss_fn=None):
    """A ``GapProbe`` of ``model`` (its framework's), measuring ``named_layers``
    (default: none, the model's outputs only).

    Args:
        loss_fn: PyTorch only: ``loss_fn(output, y)`` (Keras uses the
            compiled loss).

    Raises:
        ValueError: as :func:`framework_of`, or ``loss_fn`` for a Keras model.
    """
    module = for_model(model)
    named = list(named_layers or ())
    if framework_of(model) == "pytorch":
        return module.GapProbe(model, x, y, named, loss_fn=loss_fn)
    if loss_fn is not None:
        raise ValueError("loss_fn is for PyTorch models; a Keras model's probe uses its compiled loss")
    return module.GapProbe(model, x, y, named)
