"""Overhead of BNStatsCallback logging every step, against no callback.

A convolutional net with 8 BatchNormalization layers is trained on random
data. Two copies of it (one with the callback, one without) are warmed up,
then trained alternately, one epoch each, ROUNDS times, in this one process,
so that machine noise hits both alike. Each step's wall-clock and process
CPU time (``time.process_time``) is taken between consecutive
``on_train_batch_begin`` calls, so it includes the train step and every
callback's end-of-batch work. Prints median ratios (callback / baseline) and
the event-file bytes per layer per logged step. Not a pass/fail test.

    python bench/overhead.py [--rounds 6] [--steps 40] [--jit]
"""

import argparse
import os
import pathlib
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tb_bnstats  # noqa: E402


def conv_net(n_blocks=8, width=16, jit_compile=False):
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = inp
    for i in range(n_blocks):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU()(x)
        if i % 3 == 2:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(10)(x))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit_compile)
    return model


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.wall, self.cpu, self._last = [], [], None

    def on_epoch_begin(self, epoch, logs=None):
        self._last = None

    def on_train_batch_begin(self, batch, logs=None):
        now = (time.perf_counter(), time.process_time())
        if self._last is not None:
            self.wall.append(now[0] - self._last[0])
            self.cpu.append(now[1] - self._last[1])
        self._last = now

    def on_epoch_end(self, epoch, logs=None):
        self._last = None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=40, help="steps per epoch")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--jit", action="store_true", help="jit_compile=True (XLA)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    n = args.steps * args.batch
    x = rng.normal(size=(n, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, n)
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="tb_bnstats_bench_"))

    baseline, monitored = conv_net(jit_compile=args.jit), conv_net(jit_compile=args.jit)
    callback = tb_bnstats.BNStatsCallback(log_dir / "run", verbose=0)
    timers = {"baseline": StepTimer(), "callback": StepTimer()}
    runs = {"baseline": (baseline, [timers["baseline"]]), "callback": (monitored, [callback, timers["callback"]])}

    # Warm-up: trace both train functions, then forget their timings.
    for name, (model, cbs) in runs.items():
        model.fit(x[: 4 * args.batch], y[: 4 * args.batch], batch_size=args.batch, epochs=1, verbose=0, callbacks=cbs)
        timers[name].wall.clear()
        timers[name].cpu.clear()
    for _ in range(args.rounds):
        for name, (model, cbs) in runs.items():
            model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0, callbacks=cbs)

    med = {name: (statistics.median(t.wall), statistics.median(t.cpu)) for name, t in timers.items()}
    layers = 8
    logged_steps = int(monitored.optimizer.iterations.numpy())
    event_bytes = sum(p.stat().st_size for p in (log_dir / "run").glob("events.out.tfevents.*"))
    print(f"conv net, 8 BN layers, batch {args.batch}, {args.rounds} alternated rounds x {args.steps} steps, "
          f"jit_compile={args.jit}")
    for name, (wall, cpu) in med.items():
        print(f"  {name:9s} median step: wall {wall * 1e3:7.2f} ms   cpu {cpu * 1e3:7.2f} ms")
    print(f"  ratio callback/baseline: wall {med['callback'][0] / med['baseline'][0]:.3f}   "
          f"cpu {med['callback'][1] / med['baseline'][1]:.3f}   (target <= 1.05)")
    print(f"  event file: {event_bytes} bytes for {logged_steps} steps x {layers} layers = "
          f"{event_bytes / (logged_steps * layers):.0f} bytes per layer per step")


if __name__ == "__main__":
    main()
