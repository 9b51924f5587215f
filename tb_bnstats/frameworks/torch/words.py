"""How findings speak of PyTorch modules: ``model.eval()``,
``requires_grad``, ``momentum=0.01`` (PyTorch's momentum is the weight of the
new batch, ``1 - m`` of the log's convention, and messages say both),
``loader``."""

from tb_bnstats.diagnosis.words import Words
from tb_bnstats.format.metadata import LayerInfo
from tb_bnstats.frameworks.torch import PYTORCH

# The fixes in PyTorch's words, where they differ from the codes' own.
PYTORCH_FIXES = {
    "BN001": "raise the momentum (PyTorch's momentum=0.1, the default, for runs of a few hundred steps), train "
             "longer, or call tb_bnstats.recalibrate(model, loader) after training",
    "BN002": "keep the BN modules in train() mode while training (call model.train() after any model.eval(), and "
             "do not call .eval() on BN modules inside the loop); to freeze them on purpose, also set "
             "requires_grad_(False) on their parameters",
    "BN003": "use momentum=0.01-0.1 (PyTorch's momentum is the weight of the new batch: its 0.1 is Keras' 0.9); "
             "momentum=None averages every batch",
    "BN004": "move nn.Dropout after the BN modules (or before the last layer only), or "
             "tb_bnstats.recalibrate(model, loader) (other modules in eval mode)",
    "BN005": "use batches of 16+ samples per GPU (or nn.GroupNorm, or nn.SyncBatchNorm across GPUs), then "
             "tb_bnstats.recalibrate(model, loader)",
    "BN006": "shuffle the training data (DataLoader(..., shuffle=True)), then tb_bnstats.recalibrate(model, loader)",
    "BN010": "recalibrate the running statistics on the new data -- tb_bnstats.recalibrate(model, loader, "
             "include_frozen=True) for frozen modules -- before training the new head or fine-tuning, then train "
             "on; or keep the BN modules in train() so that they follow the new data",
    "BN012": "recalibrate after training: tb_bnstats.recalibrate(model, loader) (the running averages lag "
             "weights that still change; a lower final learning rate helps too)",
    "BN013": "use nn.SyncBatchNorm.convert_sync_batchnorm(model) before wrapping in DDP (GPU processes only: it "
             "does not run on CPU), or 16+ samples per rank; then tb_bnstats.recalibrate(model, loader)",
    "BN014": "use nn.SyncBatchNorm (GPUs), or recalibrate on global-size batches after training: "
             "tb_bnstats.recalibrate(model, loader) on rank 0",
    "BN015": "keep DDP's buffer sync on (forward_sync_buffers=True, formerly broadcast_buffers=True: rank 0's "
             "buffers copied to every rank at each forward), or average "
             "running_mean / running_var with torch.distributed.all_reduce (divided by the world size) before "
             "evaluating and saving; or tb_bnstats.recalibrate(model, loader): rank 0's are what gets saved",
    "BN016": "put the BN modules in eval() after every model.train() (or override the model's train() to do "
             "it), or replace them with torchvision.ops.misc.FrozenBatchNorm2d (statistics fixed by "
             "construction); requires_grad_(False) alone freezes the scale and offset, not the running "
             "statistics. Nothing to do if they were meant to follow the new data",
    "BN017": "torch.optim.swa_utils.update_bn(loader, averaged_model) after the last update_parameters, or "
             "AveragedModel(model, use_buffers=True) (the buffers averaged with the weights), or "
             "tb_bnstats.recalibrate(averaged_model, loader); an EMA copy needs the same before it is "
             "evaluated",
    "BN008": "save and load the whole model.state_dict() (running_mean, running_var and num_batches_tracked are "
             "buffers in it; load_state_dict(strict=True) names any that are missing), or call "
             "tb_bnstats.recalibrate(model, loader) after restoring",
}


# PyTorch's own BN classes: a frozen layer of another class without a momentum is frozen by construction
# (torchvision's FrozenBatchNorm2d, tb_bnstats.frameworks.torch.capture.modules.is_frozen_batchnorm).
TORCH_BN_CLASSES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LazyBatchNorm1d",
                    "LazyBatchNorm2d", "LazyBatchNorm3d")


def by_construction(info: LayerInfo) -> bool:
    """Whether a frozen layer is frozen by construction (no momentum, not one of PyTorch's BN classes)."""
    return info.frozen and info.momentum is None and info.layer_class not in TORCH_BN_CLASSES


class PyTorchWords(Words):
    """PyTorch's words."""

    fixes = PYTORCH_FIXES
    data_name = "loader"
    momentum_convention = "PyTorch: the weight of the new batch"

    def momentum_text(self, momentum: float) -> str:
        return f"momentum={1.0 - momentum:.4g} (PyTorch's weight of the new batch; Keras' {momentum:.4g})"

    def momentum_setting(self, momentum: float) -> str:
        return f"momentum={1.0 - momentum:.4g}"

    def not_updating(self, info: LayerInfo) -> str:
        return "the module was in eval() mode during training"

    def frozen_how(self, info: LayerInfo) -> str:
        if by_construction(info):
            return f"a {info.layer_class}: fixed statistics, never updated"
        return "in eval() with requires_grad=False"

    def affine_frozen(self, info: LayerInfo) -> str:
        return "requires_grad=False on its weight and bias, but the module was left in train()"

    def frozen(self, info: LayerInfo) -> str:
        return "in eval() during training: running statistics not updated"


WORDS = {PYTORCH: PyTorchWords()}
