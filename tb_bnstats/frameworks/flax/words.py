"""How findings speak of Flax BatchNorm layers: ``use_running_average``,
``momentum`` (Flax's is the weight kept on the old average, as the log's),
``batch_stats`` and the train state; :func:`tb_bnstats.recalibrate` takes an
``nnx.Module`` or a Linen ``(module, variables)`` pair."""

from tb_bnstats.diagnosis.words import Words
from tb_bnstats.format.metadata import LayerInfo
from tb_bnstats.frameworks.flax import FLAX

# Recalibration, as the fixes say it (Linen: the model is the (module, variables) pair).
RECALIBRATE = "call tb_bnstats.recalibrate(model, batches) (Linen: model = (module, variables))"
# The fixes in Flax's words, where they differ from the codes' own.
FLAX_FIXES = {
    "BN001": "lower the momentum (nnx.BatchNorm(..., momentum=0.9) / nn.BatchNorm(momentum=0.9): Flax's default "
             f"0.99 needs ~300 steps to forget its initial 0 / 1), train longer, or {RECALIBRATE} after training",
    "BN003": "use momentum=0.9-0.99 (Flax's momentum is the weight kept on the old average: "
             "ra = momentum * ra + (1 - momentum) * batch)",
    "BN004": "move nnx.Dropout / nn.Dropout after the BN layers (or before the last layer only), or "
             f"{RECALIBRATE} with dropout off after training",
    "BN005": "use batches of 16+ samples per device (or GroupNorm, or axis_name= to average the statistics over "
             f"devices), then {RECALIBRATE}",
    "BN006": f"shuffle the training data, then {RECALIBRATE}",
    "BN013": "give the BatchNorm axis_name= (the mapped axis of pmap / shard_map) so that each device normalizes with "
             f"the global batch's statistics, or use 16+ samples per device; then {RECALIBRATE}",
    "BN014": "give the BatchNorm axis_name= (the mapped axis) so that the running variance averages the global batch's "
             f"variance, or {RECALIBRATE} on global-size batches after training",
    "BN015": "average batch_stats over the devices (jax.lax.pmean(batch_stats, axis_name) in the step) before "
             "evaluating and saving, or give the BatchNorm axis_name=",
    "BN008": "save and restore batch_stats with the params (nnx.state(model) / the whole TrainState in the "
             f"checkpoint, not nnx.state(model, nnx.Param) or state.params alone), or {RECALIBRATE} after restoring",
}

# BN002's fixes: the step computed the update but did not store it; or the layer ran with running averages.
NOT_STORED_FIX = ("store the updated statistics: with Linen, return them from the step -- logits, updates = "
                  "state.apply_fn(..., mutable=['batch_stats']) and state = state.replace("
                  "batch_stats=updates['batch_stats']) after apply_gradients; with NNX, keep the model's "
                  "BatchStat state (nnx.jit does; a jax.jit step over nnx.split must return nnx.state(model), "
                  "not only the params)")
RUNNING_AVERAGE_FIX = ("call the BatchNorm with use_running_average=False in the training step (train=True in the "
                       "model's __call__, or nnx.view(model, use_running_average=False) / model.train()) and "
                       "True only for evaluation; to freeze it on purpose, also leave its scale and bias out of "
                       "the optimizer")


class FlaxWords(Words):
    """Flax's words (NNX and Linen)."""

    fixes = FLAX_FIXES
    data_name = "batches"
    momentum_convention = "Flax: the weight kept on the old average"

    def fix(self, code: str, info: LayerInfo | None = None) -> str:
        if code == "BN002":
            return NOT_STORED_FIX if info is None or info.trainable else RUNNING_AVERAGE_FIX
        return super().fix(code, info)

    def momentum_text(self, momentum: float) -> str:
        return f"momentum={momentum:g}"

    def momentum_setting(self, momentum: float) -> str:
        return f"momentum={momentum:.4g}"  # as nnx.BatchNorm(..., momentum=...) / nn.BatchNorm(momentum=...) take it

    def not_updating(self, info: LayerInfo) -> str:
        if info.trainable:
            return ("the train step computed the update but did not store it: batch_stats was not returned or "
                    "not written back into the train state")
        return "called with use_running_average=True during training"

    def frozen_how(self, info: LayerInfo) -> str:
        return "use_running_average=True"

    def frozen(self, info: LayerInfo) -> str:
        return "use_running_average=True during training: running statistics not updated"


WORDS = {FLAX: FlaxWords()}
