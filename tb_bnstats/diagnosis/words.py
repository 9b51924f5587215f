"""The framework's words in the findings: a PyTorch run is told about
``model.eval()``, ``momentum=0.01`` and ``requires_grad``; a Keras run about
``training=False``, ``momentum=0.99`` and ``trainable``; a TensorFlow
1-style graph (:mod:`tb_bnstats.compat.v1`) about ``UPDATE_OPS`` and
``is_training``.

The log stores momentum in Keras' convention (the weight kept on the old
average, :class:`tb_bnstats.format.metadata.LayerInfo`); PyTorch's is the
weight of the new batch, ``1 - m``. :func:`momentum_text` says a momentum in
the layer's own convention, and names the convention.
"""

import re

from tb_bnstats.diagnosis.codes import CODES
from tb_bnstats.format.metadata import PYTORCH, TF1, TF_KERAS, LayerInfo

# The fixes in PyTorch's words, where they differ from CODES' (Keras').
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
    "BN008": "save and load the whole model.state_dict() (running_mean, running_var and num_batches_tracked are "
             "buffers in it; load_state_dict(strict=True) names any that are missing), or call "
             "tb_bnstats.recalibrate(model, loader) after restoring",
}

# The frameworks whose models tb_bnstats.recalibrate does not take: their fixes say how to do it by hand.
REESTIMATE = ("re-estimate the moving statistics (assign each moving_mean / moving_variance the mean batch moments "
              "of a few hundred batches: PreciseBN)")
_NO_RECALIBRATE = (TF1, TF_KERAS)
_RECALIBRATE_CALL = re.compile(r"(call )?tb_bnstats\.recalibrate\(model, [^)]*\)")

# The fixes in TensorFlow 1-style graph code's words (tb_bnstats.compat.v1), where they differ from Keras'.
TF1_FIXES = {
    "BN001": "lower the momentum (tf.compat.v1.layers.batch_normalization(momentum=0.9), the decay of a hand-written "
             f"average) for runs of a few hundred steps, train longer, or {REESTIMATE} after training",
    "BN002": "run the update ops with the train op: with tf.control_dependencies(tf.compat.v1.get_collection("
             "tf.compat.v1.GraphKeys.UPDATE_OPS)): train_op = optimizer.minimize(loss) (a tf.keras layer in a "
             "graph lists its update ops in layer.updates)",
    "BN003": "use momentum (TF1's decay) 0.9-0.99: moving = decay * moving + (1 - decay) * batch",
    "BN004": "move the dropout after the BN layers (or before the last layer only), or, with dropout off, "
             f"{REESTIMATE} after training",
    "BN008": "save and restore every global variable (tf.compat.v1.train.Saver() with its default var_list; "
             "var_list=tf.compat.v1.trainable_variables() leaves out moving_mean and moving_variance), "
             f"or {REESTIMATE} after restoring",
}

# BN002 when the train calls feed the layer's training tensor False (the update ops did run).
TF1_TRAINING_FALSE_FIX = ("feed is_training=True in the train calls (training=is_training in "
                          "tf.compat.v1.layers.batch_normalization) and False only for evaluation")


def speaks_pytorch(info: LayerInfo) -> bool:
    """Whether a layer (a LayerInfo) comes from PyTorch."""
    return getattr(info, "framework", None) == PYTORCH


def fix(code: str, framework: str | None = None, info: LayerInfo | None = None) -> str:
    """The fix of ``code`` in ``framework``'s words (``info.framework``;
    Keras' by default); ``info``, the layer's LayerInfo, where the fix
    depends on what went wrong (BN002 in a TF1 graph)."""
    if framework == PYTORCH and code in PYTORCH_FIXES:
        return PYTORCH_FIXES[code]
    if framework == TF1 and code in TF1_FIXES:
        if code == "BN002" and info is not None and not info.update_ops_left_out:
            return TF1_TRAINING_FALSE_FIX
        return TF1_FIXES[code]
    if framework in _NO_RECALIBRATE:
        return _RECALIBRATE_CALL.sub(REESTIMATE, CODES[code].fix)
    return CODES[code].fix


def recalibrate_text(info: LayerInfo) -> str:
    """How to recalibrate the layer's model, in its framework's words (a
    verb phrase: "call tb_bnstats.recalibrate(model, data)")."""
    if getattr(info, "framework", None) in _NO_RECALIBRATE:
        return REESTIMATE
    return f"call tb_bnstats.recalibrate(model, {data_name(info)})"


def data_name(info: LayerInfo) -> str:
    """What the training data is called in a call the message suggests."""
    return "loader" if speaks_pytorch(info) else "data"


def momentum_text(momentum: float | None, info: LayerInfo | None = None) -> str:
    """A momentum (Keras' convention, as logged) in the layer's convention:
    ``"momentum 0.99"`` for Keras, ``"momentum=0.01 (PyTorch's weight of the
    new batch; Keras' 0.99)"`` for PyTorch, ``"momentum=None (a cumulative
    average)"``."""
    if momentum is None:
        return "momentum=None (a cumulative average of every batch)"
    if info is not None and speaks_pytorch(info):
        return f"momentum={1.0 - momentum:.4g} (PyTorch's weight of the new batch; Keras' {momentum:.4g})"
    return f"momentum {momentum:g}"


def momentum_setting(momentum: float | None, info: LayerInfo | None = None) -> str:
    """The constructor argument that sets a momentum (Keras' convention) in
    the layer's framework: ``"momentum=0.95"`` (Keras), ``"momentum=0.05"``
    (PyTorch)."""
    if momentum is None:
        return "momentum=None"
    return f"momentum={1.0 - momentum:.4g}" if info is not None and speaks_pytorch(info) else f"momentum={momentum:g}"


def not_updating(info: LayerInfo) -> str:
    """Why a layer's moving statistics did not update during training."""
    if speaks_pytorch(info):
        return "the module was in eval() mode during training"
    if getattr(info, "framework", None) == TF1:
        if info.update_ops_left_out:
            return ("its update ops did not run with the train op: the train op does not depend on "
                    "tf.compat.v1.GraphKeys.UPDATE_OPS")
        return "its training tensor (is_training) was False in the train calls"
    return "trainable=False" if not info.trainable else "called with training=False during training"


def frozen_how(info: LayerInfo) -> str:
    """How a layer frozen on purpose was frozen, in its framework's words."""
    if speaks_pytorch(info):
        return "in eval() with requires_grad=False"
    return "trainable=False"


def frozen(info: LayerInfo) -> str:
    """A frozen layer, in its framework's words."""
    if speaks_pytorch(info):
        return "in eval() during training: running statistics not updated"
    return "frozen (trainable=False): moving averages not updated"
