"""Demo runs of TensorFlow 1-style graph code: a conv net on digits built
with ``tf.compat.v1.layers.batch_normalization`` and an ``is_training``
placeholder, trained with a plain ``tf.compat.v1.Session`` loop and logged
with ``tb_bnstats.compat.v1.BNStatsFetches`` (needs the ``tf-keras``
package; nothing is downloaded).

    python demo/train_tf1.py --logdir demo/logs      # skips runs already written

Runs:
  tf1_update_ops_forgotten   the train op built without tf.control_dependencies(UPDATE_OPS):
                             the moving statistics are never updated (BN002)
  tf1_momentum_0.99          the update ops run, momentum 0.99 for 100 steps, digits on a bright
                             background (pixels + 30): 63% converged, inference mode far below
                             training mode (BN001)
"""

import argparse
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.compat.v1.layers needs tf_keras, chosen before TensorFlow loads
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo_runs import train_missing  # noqa: E402
from tb_bnstats.compat.v1 import BNStatsFetches  # noqa: E402
from tf1_runs import RUNS  # noqa: E402

v1 = tf.compat.v1


def build(momentum, with_update_ops):
    """conv(16) -> BN -> relu -> conv(32) -> BN -> relu -> dense(10), Adam, as TF1 code wrote it."""
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        x = v1.placeholder(tf.float32, [None, 8, 8, 1], name="x")
        y = v1.placeholder(tf.int64, [None], name="y")
        is_training = v1.placeholder_with_default(False, [], name="is_training")
        h = x
        for i, width in enumerate((16, 32)):
            with v1.variable_scope(f"conv{i + 1}"):
                h = v1.layers.conv2d(h, width, 3, padding="same", use_bias=False)
                h = tf.nn.relu(v1.layers.batch_normalization(h, momentum=momentum, training=is_training))
        logits = v1.layers.dense(v1.layers.flatten(h), 10)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), y), tf.float32))
        optimizer = v1.train.AdamOptimizer(3e-3)
        if with_update_ops:
            with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
                train_op = optimizer.minimize(loss)
        else:
            train_op = optimizer.minimize(loss)  # the bug: the moving averages' update ops never run
    return graph, x, y, is_training, loss, accuracy, train_op


def train(name, run_dir, steps=100, batch=32):
    momentum, with_update_ops, offset = RUNS[name]
    data = load_digits()
    x_all = (data.images / 16.0).astype("float32")[..., None] * 4.0 + 1.0 + offset
    y_all = data.target
    graph, x, y, is_training, loss, accuracy, train_op = build(momentum, with_update_ops)
    rng = np.random.default_rng(0)
    with graph.as_default(), v1.Session(graph=graph) as sess:
        monitor = BNStatsFetches(run_dir, train_op, metrics={"loss": loss, "accuracy": accuracy},
                                 snapshot_every_n_steps=20)
        sess.run(v1.global_variables_initializer())
        for step in range(1, steps + 1):
            idx = rng.choice(1400, batch, replace=False)
            _, got = sess.run([train_op, monitor.fetches], {x: x_all[idx], y: y_all[idx], is_training: True})
            monitor.log(got, step)
        held_out = {x: x_all[1400:], y: y_all[1400:]}
        acc = {mode: sess.run(accuracy, {**held_out, is_training: mode}) for mode in (True, False)}
        monitor.close()
    codes = ", ".join(sorted({f.code for f in monitor.findings or []})) or "none"
    return (f"{name:26s} findings: {codes:12s} (held-out accuracy: training mode {acc[True]:.0%}, "
            f"inference mode {acc[False]:.0%})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="demo/logs")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), metavar="RUN")
    args = parser.parse_args()
    train_missing(args.logdir, args.runs, train, title="TensorFlow 1-style demo runs")


if __name__ == "__main__":
    main()
