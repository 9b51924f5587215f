"""Keras on JAX across 2 processes (``jax.distributed`` over gloo on CPU),
``keras.distribution.DataParallel`` over one device each, the callback made
in both with the same log directory.

    python jax_processes.py OUT        # starts the 2 processes and waits for them

Each process passes its own half of every global batch of 32 (Keras builds
the global batch from the processes' local data: ``auto_shard_dataset=False``)
and saves ``OUT/process<i>.npz``: the data, the losses, BN's moving
statistics at the end. Process 0 alone must write ``OUT/logs``.
"""

import os
import socket
import subprocess
import sys

PROCESSES, GLOBAL_BATCH = 2, 32


def worker(out, index, port):
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    import jax

    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=PROCESSES, process_id=index)
    import keras
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    import tb_bnstats

    keras.utils.set_random_seed(0)
    keras.distribution.set_distribution(keras.distribution.DataParallel(
        devices=keras.distribution.list_devices(), auto_shard_dataset=False))
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(128, 4)) + np.linspace(0, 3, 128)[:, None] * [1, -1, 0.5, 2]).astype("float32")
    y = rng.normal(size=(128, 1)).astype("float32")
    local = GLOBAL_BATCH // PROCESSES
    mine = np.concatenate([np.arange(k, k + local) + index * local for k in range(0, len(x), GLOBAL_BATCH)])
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(momentum=0.5, name="bn"),
                              keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    callback = tb_bnstats.BNStatsCallback(os.path.join(out, "logs"), snapshot_every_n_steps=1, verbose=0)
    history = model.fit(x[mine], y[mine], batch_size=local, epochs=2, shuffle=False, verbose=0, callbacks=[callback])
    bn = model.layers[0]
    np.savez(os.path.join(out, f"process{index}.npz"), x=x, batch=GLOBAL_BATCH, replicas=PROCESSES,
             loss=np.asarray(history.history["loss"]), moving_mean=np.asarray(bn.moving_mean)[None],
             moving_var=np.asarray(bn.moving_variance)[None])


def main():
    out = sys.argv[1]
    if len(sys.argv) > 2:
        worker(out, int(sys.argv[2]), int(sys.argv[3]))
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, __file__, out, str(i), str(port)]) for i in range(PROCESSES)]
    codes = [p.wait(timeout=300) for p in procs]
    sys.exit(max(codes))


if __name__ == "__main__":
    main()
