"""A Keras training run over several CPU devices, in a process of its own:
logical CPU devices under ``tf.distribute.MirroredStrategy`` (TensorFlow
backend) or forced host devices under ``keras.distribution.DataParallel``
(JAX backend). Both must be set up before the framework runs anything, so
the tests start this script with ``subprocess``.

    python keras_replicas.py OUT --replicas 2 [--monitor] [--sync] [--model toy|dense] [--samples N]

Writes ``OUT/result.npz``: the losses per epoch, the BN input of every
training step (``toy``: BN is the first layer, so the data itself),
each replica's moving statistics at the end, and, with ``--monitor``, the
run's logs under ``OUT/logs``.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--monitor", action="store_true")
    parser.add_argument("--sync", action="store_true")
    parser.add_argument("--model", choices=("toy", "dense"), default="toy")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=None, help="train on the first this many")
    parser.add_argument("--steps-per-execution", type=int, default=1)
    args = parser.parse_args()
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "jax":
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.replicas}"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    scope = _devices(backend, args.replicas)
    import keras

    sys.path.insert(0, os.path.dirname(HERE))
    import tb_bnstats

    keras.utils.set_random_seed(0)
    if args.model == "toy":  # BN first: its input is the data; slices of the batch differ on purpose
        rng = np.random.default_rng(0)
        x = (rng.normal(size=(128, 4)) + np.linspace(0, 3, 128)[:, None] * [1, -1, 0.5, 2]).astype("float32")
        y = rng.normal(size=(128, 1)).astype("float32")
        loss = "mse"
    else:
        from scenarios_common import digits

        x, y = digits()
        loss = "sparse_categorical_crossentropy"
    x, y = x[:args.samples], y[:args.samples]
    with scope:
        inputs = keras.Input(x.shape[1:])
        bn_kwargs = {"synchronized": True} if args.sync else {}
        if args.model == "toy":
            h = keras.layers.BatchNormalization(momentum=0.5, name="bn", **bn_kwargs)(inputs)
            outputs = keras.layers.Dense(1)(h)
        else:
            h = keras.layers.Dense(32, use_bias=False)(inputs)
            h = keras.layers.BatchNormalization(name="dense_bn", **bn_kwargs)(h)
            outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Activation("relu")(h))
        model = keras.Model(inputs, outputs)
        model.compile(keras.optimizers.SGD(0.05), loss, steps_per_execution=args.steps_per_execution)
    callbacks = []
    if args.monitor:
        callbacks.append(tb_bnstats.BNStatsCallback(os.path.join(args.out, "logs"), snapshot_every_n_steps=1,
                                                    probe_data=False, verbose=0))
    history = model.fit(x, y, batch_size=args.batch, epochs=args.epochs, shuffle=False, callbacks=callbacks,
                        verbose=0)
    bn = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)][0]
    moving_mean, moving_var = _per_replica(backend, bn)
    np.savez(os.path.join(args.out, "result.npz"), loss=np.asarray(history.history["loss"]), x=x,
             batch=args.batch, replicas=args.replicas, moving_mean=moving_mean, moving_var=moving_var)


def _devices(backend, replicas):
    """The context to build the model in, over ``replicas`` CPU devices."""
    import contextlib

    if backend == "jax":
        import keras

        devices = keras.distribution.list_devices("cpu")
        assert len(devices) == replicas, devices
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return contextlib.nullcontext()
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)]).scope()


def _per_replica(backend, bn):
    """Each replica's moving statistics, [R, C] (one row when shared)."""
    import numpy as np

    if backend == "tensorflow":
        values = lambda v: [np.asarray(c.numpy()) for c in v.value.values]  # noqa: E731 - a MirroredVariable
        return np.stack(values(bn.moving_mean)), np.stack(values(bn.moving_variance))
    return np.asarray(bn.moving_mean.numpy())[None], np.asarray(bn.moving_variance.numpy())[None]


if __name__ == "__main__":
    main()
