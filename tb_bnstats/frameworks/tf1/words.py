"""How findings speak of TensorFlow 1-style graph code: the update ops and
``UPDATE_OPS``, ``is_training``, ``Saver``; and, since
:func:`tb_bnstats.recalibrate` does not take graphs, how to re-estimate the
statistics by hand."""

from tb_bnstats.diagnosis.words import REESTIMATE, Words
from tb_bnstats.format.metadata import LayerInfo
from tb_bnstats.frameworks.tf1 import TF1

# The fixes in graph code's words, where they differ from the codes' own.
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

TF1_TRAINING_FALSE_FIX = ("feed is_training=True in the train calls (training=is_training in "
                          "tf.compat.v1.layers.batch_normalization) and False only for evaluation")


class GraphWords(Words):
    """TensorFlow 1-style graph code's words."""

    fixes = TF1_FIXES
    recalibrates = False

    def fix(self, code: str, info: LayerInfo | None = None) -> str:
        if code == "BN002" and info is not None and not info.update_ops_left_out:
            return TF1_TRAINING_FALSE_FIX  # the update ops ran, with the training tensor False
        return super().fix(code, info)

    def not_updating(self, info: LayerInfo) -> str:
        if info.update_ops_left_out:
            return ("its update ops did not run with the train op: the train op does not depend on "
                    "tf.compat.v1.GraphKeys.UPDATE_OPS")
        return "its training tensor (is_training) was False in the train calls"


WORDS = {TF1: GraphWords()}
