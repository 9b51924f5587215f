"""The framework's words in the findings: a PyTorch run is told about
``model.eval()``, ``momentum=0.01`` and ``requires_grad``; a Keras run about
``training=False``, ``momentum=0.99`` and ``trainable``; a TensorFlow
1-style graph about ``UPDATE_OPS`` and ``is_training``.

:class:`Words` is what every framework's words provide, with the log
format's own wording: the fixes of :data:`tb_bnstats.diagnosis.codes.CODES`
and the format's terms (momentum as the weight kept on the old average,
``trainable``: :class:`tb_bnstats.format.metadata.LayerInfo`), which are
Keras' (layers logged by :class:`tb_bnstats.Writer` get these). Each framework folder
subclasses it in its ``words.py`` (:mod:`tb_bnstats.frameworks`); the
functions below pick the words of a layer's ``LayerInfo.framework`` through
the registry, the generic ones for a framework this version does not know.
"""

import re
from collections.abc import Mapping

from tb_bnstats import frameworks
from tb_bnstats.diagnosis.codes import CODES
from tb_bnstats.format.metadata import LayerInfo

# How to recalibrate by hand, for frameworks whose models tb_bnstats.recalibrate does not take.
REESTIMATE = ("re-estimate the moving statistics (assign each moving_mean / moving_variance the mean batch moments "
              "of a few hundred batches: PreciseBN)")
_RECALIBRATE_CALL = re.compile(r"(call )?tb_bnstats\.recalibrate\(model, [^)]*\)")


class Words:
    """How findings speak of one framework's layers. Subclasses override
    what their framework says differently.

    Attributes:
        fixes: fixes in the framework's words, by code, where they differ
            from :data:`CODES`'.
        recalibrates: whether :func:`tb_bnstats.recalibrate` takes the
            framework's models; where not, the fixes say how to re-estimate
            the statistics by hand (:data:`REESTIMATE`).
        data_name: what the training data is called in a suggested call.
        momentum_convention: what a momentum means in the framework (the tab
            shows it beside the momentum).
    """

    fixes: Mapping[str, str] = {}
    recalibrates = True
    data_name = "data"
    # The log format keeps momentum as Keras does, and its layer fields (trainable) are Keras' terms.
    momentum_convention = "Keras: the weight kept on the old average"

    def fix(self, code: str, info: LayerInfo | None = None) -> str:
        """The fix of ``code``; ``info``, the layer's, where the fix depends
        on what went wrong."""
        if code in self.fixes:
            return self.fixes[code]
        if not self.recalibrates:
            return _RECALIBRATE_CALL.sub(REESTIMATE, CODES[code].fix)
        return CODES[code].fix

    def recalibrate_text(self) -> str:
        """How to recalibrate a model, as a verb phrase ("call
        tb_bnstats.recalibrate(model, data)")."""
        return f"call tb_bnstats.recalibrate(model, {self.data_name})" if self.recalibrates else REESTIMATE

    def momentum_text(self, momentum: float) -> str:
        """A momentum (as logged: the weight kept on the old average) in the
        framework's convention, naming the convention where it differs."""
        return f"momentum {momentum:g}"

    def momentum_setting(self, momentum: float) -> str:
        """The constructor argument that sets a momentum (as logged)."""
        return f"momentum={momentum:g}"

    def not_updating(self, info: LayerInfo) -> str:
        """Why a layer's moving statistics did not update during training."""
        return "trainable=False" if not info.trainable else "called with training=False during training"

    def frozen_how(self, info: LayerInfo) -> str:
        """How a layer frozen on purpose was frozen."""
        return "trainable=False"

    def frozen(self, info: LayerInfo) -> str:
        """A frozen layer, described."""
        return "frozen (trainable=False): moving averages not updated"

    def affine_frozen(self, info: LayerInfo) -> str:
        """A layer whose scale and offset are not trained while it updates
        its moving statistics (``LayerInfo.affine_frozen``), described."""
        return "its scale and offset are not trained"


GENERIC = Words()


def words_of(framework: str | None) -> Words:
    """The words of layers logged with ``LayerInfo.framework ==
    framework``: the registered framework's, else :data:`GENERIC`."""
    found = frameworks.words_for(framework)
    return found if isinstance(found, Words) else GENERIC


def fix(code: str, framework: str | None = None, info: LayerInfo | None = None) -> str:
    """The fix of ``code`` in ``framework``'s words (``info.framework``
    when ``framework`` is None); ``info``, the layer's LayerInfo, where the
    fix depends on what went wrong (BN002 in a TF1 graph)."""
    if framework is None and info is not None:
        framework = info.framework
    return words_of(framework).fix(code, info)


def recalibrate_text(info: LayerInfo) -> str:
    """How to recalibrate the layer's model, in its framework's words (a
    verb phrase: "call tb_bnstats.recalibrate(model, data)")."""
    return words_of(info.framework).recalibrate_text()


def momentum_text(momentum: float | None, info: LayerInfo | None = None) -> str:
    """A momentum (the log's convention) in the layer's convention:
    ``"momentum 0.99"`` for Keras, ``"momentum=0.01 (PyTorch's weight of the
    new batch; Keras' 0.99)"`` for PyTorch, ``"momentum=None (a cumulative
    average)"``."""
    if momentum is None:
        return "momentum=None (a cumulative average of every batch)"
    return words_of(info.framework if info is not None else None).momentum_text(momentum)


def momentum_setting(momentum: float | None, info: LayerInfo | None = None) -> str:
    """The constructor argument that sets a momentum (the log's convention)
    in the layer's framework: ``"momentum=0.95"`` (Keras), ``"momentum=0.05"``
    (PyTorch)."""
    if momentum is None:
        return "momentum=None"
    return words_of(info.framework if info is not None else None).momentum_setting(momentum)


def momentum_convention(info: LayerInfo) -> str:
    """What a momentum means in the layer's framework ("PyTorch: the weight
    of the new batch")."""
    return words_of(info.framework).momentum_convention


def not_updating(info: LayerInfo) -> str:
    """Why a layer's moving statistics did not update during training."""
    return words_of(info.framework).not_updating(info)


def frozen_how(info: LayerInfo) -> str:
    """How a layer frozen on purpose was frozen, in its framework's words."""
    return words_of(info.framework).frozen_how(info)


def frozen(info: LayerInfo) -> str:
    """A frozen layer, in its framework's words."""
    return words_of(info.framework).frozen(info)


def affine_frozen(info: LayerInfo) -> str:
    """A layer whose scale and offset are not trained while its moving
    statistics update, in its framework's words."""
    return words_of(info.framework).affine_frozen(info)
