"""How findings speak of Toy's layers."""

from tb_bnstats.diagnosis.words import Words
from toyfw import TOY


class ToyWords(Words):
    fixes = {"BN001": "call toy.keep_less(0.9) before training, or recalibrate"}
    data_name = "toy_batches"
    momentum_convention = "Toy: keep, the weight of the old average"

    def momentum_text(self, momentum):
        return f"keep={momentum:g} (Toy's momentum)"


WORDS = {TOY: ToyWords()}
