"""Run by test_graph_mode.py in a process of its own: the old code's own
switch, ``tf.compat.v1.disable_v2_behavior()`` (graph mode, ref variables,
control flow v1 with Switch/Merge), which cannot be undone in a process.
Trains a conv (fused) + dense (non-fused) BN net with the update ops and
without, and prints what the logs say as JSON."""

import json
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.compat.v1.disable_v2_behavior()

import tb_bnstats  # noqa: E402
from tb_bnstats.compat.v1 import BNStatsFetches  # noqa: E402

v1 = tf.compat.v1


def run(log_dir, with_update_ops):
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        x = v1.placeholder(tf.float32, [None, 6, 6, 2])
        is_training = v1.placeholder(tf.bool, [])
        h = v1.layers.batch_normalization(v1.layers.conv2d(x, 4, 3), momentum=0.9, training=is_training)
        h = v1.layers.dense(v1.layers.flatten(h), 5)
        h = v1.layers.batch_normalization(h, momentum=0.8, training=is_training)
        loss = tf.reduce_mean(tf.square(h - 1.0))
        deps = v1.get_collection(v1.GraphKeys.UPDATE_OPS) if with_update_ops else []
        with tf.control_dependencies(deps):
            train_op = v1.train.GradientDescentOptimizer(0.1).minimize(loss)
        monitor = BNStatsFetches(log_dir, train_op, verbose=0, snapshot_every_n_steps=1)
        rng = np.random.default_rng(0)
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            for step in range(1, 21):
                feed = {x: rng.random((32, 6, 6, 2)).astype("float32") * 3 + 2, is_training: True}
                monitor.log(sess.run([train_op, monitor.fetches], feed)[1], step)
        monitor.close()
    layers = tb_bnstats.load(os.path.dirname(log_dir))[os.path.basename(log_dir)].layers
    return {"findings": sorted({f.code for f in monitor.findings if f.severity != "info"}),
            "layers": {name: {"momentum": layer.info.momentum, "updates": layer.series["updates"].tolist(),
                              "first_moving_mean": layer.snapshots["moving_mean"][0].tolist(),
                              "first_batch_mean": layer.snapshots["batch_mean"][0].tolist()}
                       for name, layer in layers.items()}}


if __name__ == "__main__":
    out = {mode: run(os.path.join(sys.argv[1], mode), mode == "with_updates")
           for mode in ("with_updates", "without")}
    print("RESULT " + json.dumps(out))
