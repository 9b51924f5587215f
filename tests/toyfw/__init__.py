"""Toy: a made-up framework, added as docs/adding-a-framework.md says: this
folder and one line of the registry (tests/test_add_a_framework.py adds it).
Its "networks" are numpy layers; :class:`ToyBatchNorm` is its BN.

Like a real folder's, this ``__init__`` imports nothing heavy: the words of
its layers are read by processes that have no Toy installed."""

from tb_bnstats.frameworks import Framework

# LayerInfo.framework of Toy's layers.
TOY = "toy"

FRAMEWORK = Framework(name="Toy", layer_frameworks=(TOY,), words="toyfw.words")
