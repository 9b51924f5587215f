"""Demo runs over several devices: the demo's conv net on digits under
``tf.distribute.MirroredStrategy`` over 4 logical CPU devices, one
TensorBoard run each (nothing is downloaded; no GPU needed).

    python demo/train_replicas.py --logdir demo/logs      # skips runs already written

Runs:
  mirrored_4x4          a global batch of 16 over 4 replicas, BN not synchronized: each replica
                        normalizes with its own 4 samples, and keeps its own moving statistics
  mirrored_4x4_synced   the same with BatchNormalization(synchronized=True): every replica
                        normalizes with, and averages, the global batch's moments

The logical devices must be made before TensorFlow runs anything, so this is
a script of its own (``demo/train.py`` trains the one-device runs), and each
run trains in a process of its own: in TensorFlow 2.21 a second
``MirroredStrategy`` training in one process with ``synchronized=True`` BN
fails ("Shape mismatch in the collective instance"), with or without
tb_bnstats (measured).
"""

import argparse
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

REPLICAS = 4
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)

import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tb_bnstats  # noqa: E402
from demo_runs import train_missing  # noqa: E402
from replica_runs import RUNS  # noqa: E402 - the runs (and their findings, for the tests)
from train import digits  # noqa: E402 - the demo's data


def make_model(synchronized):
    """The demo's conv net (demo/train.py), its BN layers synchronized or not."""
    bn = lambda name: keras.layers.BatchNormalization(momentum=0.9, synchronized=synchronized, name=name)  # noqa: E731
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    h = keras.layers.Activation("relu")(bn("conv1_bn")(h))
    h = keras.layers.Conv2D(32, 3, padding="same", use_bias=False)(h)
    h = keras.layers.Activation("relu")(bn("conv2_bn")(h))
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(64, use_bias=False)(h)
    h = keras.layers.Activation("relu")(bn("dense_bn")(h))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h))
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def train(name, run_dir, data, epochs):
    (x, y), (x_val, y_val) = data
    x, y = x[:1392], y[:1392]  # whole global batches: a last batch smaller than 4 leaves replicas empty
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)])
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = make_model(RUNS[name])
    callback = tb_bnstats.BNStatsCallback(run_dir, snapshot_every_n_steps=20, probe_data=(x_val, y_val),
                                          # every probe when due: findings independent of this machine's speed
                                          measure_budget=None,
                                          probe_every_n_steps=20)
    model.fit(x, y, batch_size=16, epochs=epochs, validation_data=(x_val, y_val), verbose=1, callbacks=[callback])
    codes = ", ".join(sorted({f.code for f in callback.findings or []})) or "none"
    return f"{name:20s} findings: {codes:12s} ({REPLICAS} replicas, synchronized={RUNS[name]})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="demo/logs")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), metavar="RUN")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # train the one run given, here
    args = parser.parse_args()
    if args.one:
        (name,) = args.runs
        print(train(name, pathlib.Path(args.logdir) / name, digits(), args.epochs))
        return
    def in_a_process_of_its_own(name, run_dir):
        done = subprocess.run([sys.executable, __file__, "--logdir", args.logdir, "--epochs", str(args.epochs),
                               "--runs", name, "--one"], stdout=subprocess.PIPE, text=True, check=True)
        return done.stdout.strip().splitlines()[-1]

    train_missing(args.logdir, args.runs, in_a_process_of_its_own)


if __name__ == "__main__":
    main()
