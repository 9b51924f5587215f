"""Overhead of tb_bnstats on TensorFlow 1-style code and tf_keras (Keras 2).

* Graph mode (``tb_bnstats.compat.v1.BNStatsFetches``): a small conv net (4
  ``tf.compat.v1.layers.batch_normalization`` layers, an ``is_training``
  placeholder, update ops under ``control_dependencies``) trained with plain
  ``sess.run`` calls, with and without the monitor's fetches, alternately,
  ``--steps`` steps each, ``--rounds`` times, in one graph and session. The
  monitor adds per layer one ``tf.nn.moments`` of its input and the moving
  statistics' reads to each call (4 C floats back to the host) and hands
  them to the background writer.
* tf_keras ``fit`` (``BNStatsCallback``): the same net as a ``tf.keras``
  model, two copies, one epoch of ``--steps`` steps each alternately, with
  and without the callback (the capture inside the train step, the ring on
  the device).

Printed: median step times (graph), epoch totals (fit), their ratios to the
baseline, wall clock and process CPU time (every thread: the writer's
counts). Not a pass/fail test: the figures go into docs/performance.md.

    python bench/overhead_tf1.py [--rounds 5] [--steps 100] [--batch 64]
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
    print(f"graph: median step baseline {base * 1e3:.2f} ms, monitored {mon * 1e3:.2f} ms, ratio {mon / base:.3f}; "
          f"round totals ratio {sum(totals['monitored']) / sum(totals['baseline']):.3f}; "
          f"process CPU time ratio {sum(cpu['monitored']) / sum(cpu['baseline']):.3f}")
    fit_overhead(args, feed[x], feed[y])


def fit_overhead(args, x, y):
    """tf_keras fit, with and without BNStatsCallback (module docstring)."""
    import numpy as np
    import tensorflow as tf

    import tb_bnstats

    keras2 = tf.keras
    assert keras2.__name__.startswith("tf_keras"), "TF_USE_LEGACY_KERAS=1 must be set before TensorFlow loads"

    def model():
        keras2.utils.set_random_seed(0)
        inputs = keras2.Input(x.shape[1:])
        h = inputs
        for width in (16, 32, 32, 64):
            h = keras2.layers.Conv2D(width, 3, padding="same", use_bias=False)(h)
            h = keras2.layers.ReLU()(keras2.layers.BatchNormalization()(h))
        out = keras2.layers.Dense(10)(keras2.layers.GlobalAveragePooling2D()(h))
        m = keras2.Model(inputs, out)
        m.compile(keras2.optimizers.SGD(0.01), keras2.losses.SparseCategoricalCrossentropy(from_logits=True))
        return m

    xs, ys = np.repeat(x, args.steps, axis=0), np.repeat(y, args.steps, axis=0)  # --steps batches per epoch
    models = {"baseline": (model(), []),
              "monitored": (model(), [tb_bnstats.BNStatsCallback(os.path.join(tempfile.mkdtemp(), "run"),
                                                                 verbose=0, probe_data=False)])}
    for m, callbacks in models.values():  # warm-up: traced once
        m.fit(xs[:len(x) * 5], ys[:len(x) * 5], batch_size=len(x), epochs=1, verbose=0, callbacks=callbacks)
    wall = {name: 0.0 for name in models}
    cpu = {name: 0.0 for name in models}
    for _ in range(args.rounds):
        for name, (m, callbacks) in models.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            m.fit(xs, ys, batch_size=len(x), epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
            wall[name] += time.perf_counter() - start
            cpu[name] += time.process_time() - start_cpu
    steps = args.rounds * args.steps
    print(f"tf_keras fit: epoch step baseline {wall['baseline'] / steps * 1e3:.2f} ms wall / "
          f"{cpu['baseline'] / steps * 1e3:.2f} ms CPU; ratio wall {wall['monitored'] / wall['baseline']:.3f}, "
          f"CPU {cpu['monitored'] / cpu['baseline']:.3f}")


if __name__ == "__main__":
    main()
