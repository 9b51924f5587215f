"""Overhead of tb_bnstats.compat.v1.BNStatsFetches on a TensorFlow 1-style
graph: a small conv net (4 ``tf.compat.v1.layers.batch_normalization``
layers, an ``is_training`` placeholder, update ops under
``control_dependencies``) trained with plain ``sess.run`` calls, with and
without the monitor's fetches, alternately, ``--steps`` steps each,
``--rounds`` times, in one graph and session, so that machine noise hits both
alike. The monitor adds per layer one ``tf.nn.moments`` of its input and the
moving statistics' reads to each call (4 C floats back to the host) and
hands them to the background writer.

Printed: the median step time of each, their ratio, the ratio of the round
totals, and the same in process CPU time. Not a pass/fail test: the figures
go into the README.

    TF_USE_LEGACY_KERAS=1 python bench/overhead_graph.py [--rounds 5] [--steps 100] [--batch 64]
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    from tb_bnstats.compat.v1 import BNStatsFetches

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 16, 16, 3])
        y = v1.placeholder(tf.int64, [None])
        is_training = v1.placeholder_with_default(False, [])
        h = x
        for width in (16, 32, 32, 64):
            h = v1.layers.conv2d(h, width, 3, padding="same", use_bias=False)
            h = tf.nn.relu(v1.layers.batch_normalization(h, training=is_training))
        logits = v1.layers.dense(tf.reduce_mean(h, [1, 2]), 10)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
            train_op = v1.train.GradientDescentOptimizer(0.01).minimize(loss)
        monitor = BNStatsFetches(os.path.join(tempfile.mkdtemp(), "run"), train_op, metrics={"loss": loss},
                                 verbose=0)
        fetches = monitor.fetches
    rng = np.random.default_rng(0)
    feed = {x: rng.normal(size=(args.batch, 16, 16, 3)).astype("float32"),
            y: rng.integers(0, 10, args.batch), is_training: True}
    wall = {"baseline": [], "monitored": []}
    cpu = {"baseline": [], "monitored": []}
    totals = {"baseline": [], "monitored": []}
    step = 0
    with v1.Session(graph=graph) as sess:
        sess.run(v1.global_variables_initializer())
        for _ in range(10):  # warm-up of both calls
            sess.run(train_op, feed)
            step += 1
            monitor.log(sess.run([train_op, fetches], feed)[1], step)
        for _ in range(args.rounds):
            for name in ("baseline", "monitored"):
                start, start_cpu = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    t = time.perf_counter()
                    if name == "monitored":
                        step += 1
                        monitor.log(sess.run([train_op, fetches], feed)[1], step)
                    else:
                        sess.run(train_op, feed)
                    wall[name].append(time.perf_counter() - t)
                totals[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    monitor.close()
    base, mon = statistics.median(wall["baseline"]), statistics.median(wall["monitored"])
    print(f"median step: baseline {base * 1e3:.2f} ms, monitored {mon * 1e3:.2f} ms, ratio {mon / base:.2f}")
    print(f"round totals ratio {sum(totals['monitored']) / sum(totals['baseline']):.2f}; "
          f"process CPU time ratio {sum(cpu['monitored']) / sum(cpu['baseline']):.2f}")


if __name__ == "__main__":
    main()
