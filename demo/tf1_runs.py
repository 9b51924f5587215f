"""The runs of ``demo/train_tf1.py`` and the findings each must show, apart
from the script (which sets ``TF_USE_LEGACY_KERAS=1`` before importing
TensorFlow), so that tests/test_demo.py reads them without importing it."""

# name -> (momentum, update ops run with the train op, pixel offset of the digits)
RUNS = {"tf1_update_ops_forgotten": (0.9, False, 0.0), "tf1_momentum_0.99": (0.99, True, 30.0)}
# name -> the finding codes the tab must show for it (tests/test_demo.py checks this in a browser).
EXPECTED = {
    # The train op built without tf.control_dependencies(UPDATE_OPS): the moving statistics never move.
    "tf1_update_ops_forgotten": {"BN002"},
    # 100 steps at momentum 0.99 on digits on a bright background: 63% converged, inference mode ruined.
    "tf1_momentum_0.99": {"BN001"},
}
