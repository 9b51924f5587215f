"""How findings speak of Keras layers: ``trainable=False``,
``training=False``, ``momentum=0.99``. tf_keras (Keras 2) layers are told
the same, except that :func:`tb_bnstats.recalibrate` does not take their
models: their fixes say how to re-estimate the statistics by hand."""

from tb_bnstats.diagnosis.words import Words
from tb_bnstats.frameworks.keras import KERAS, TF_KERAS


class KerasWords(Words):
    """Keras 3's words: the log format's own (its terms are Keras')."""


class TfKerasWords(KerasWords):
    """tf_keras' words: Keras' without :func:`tb_bnstats.recalibrate`."""

    recalibrates = False


WORDS = {KERAS: KerasWords(), TF_KERAS: TfKerasWords()}
