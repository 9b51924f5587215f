"""Overhead of BNStatsCallback logging every step, against no callback and
against Keras' own TensorBoard callback.

For each model and each XLA setting, three copies of the model are trained
on the same random data in this one process: with no callback (the
baseline), with ``keras.callbacks.TensorBoard(histogram_freq=1,
update_freq="batch")``, and with ``BNStatsCallback`` logging every step.
After a warm-up epoch each (tracing, compiling), they train alternately, one
epoch each, ``--rounds`` times, so that machine noise hits all alike. Each
step's wall-clock and process CPU time (``time.process_time``: every thread
of the process, the callback's background writer included) is taken between
consecutive ``on_train_batch_begin`` calls; each epoch's totals too (they
include the epoch-end work: the ring's drain, Keras' histograms).

``--backend jax|torch|tensorflow`` picks Keras' backend (set before Keras
is imported); Keras' TensorBoard callback writes with TensorFlow, so it is
measured with the TensorFlow backend only. ``--xla on`` is ``jit_compile=True``:
XLA with TensorFlow and JAX (JAX's default), ``torch.compile`` with torch.

Printed per model and XLA setting: median step times and their ratios to
the baseline, the ratios of the epoch totals, the ratios of whole ``fit``
calls (from ``fit``'s call to its return: the work at train begin and end,
the probe and the checks on the model included; the median of the rounds'
ratios and the ratio of the totals), tb_bnstats' event-file bytes per layer
per step and its device-to-host reads per 100 steps. Not a pass/fail test:
the figures go into docs/performance.md.

``--epochs-per-fit 1`` (default) is a user who calls ``fit`` once per epoch
in a loop: every round is one ``fit`` call of one epoch; ``--epochs-per-fit
5`` makes each round one ``fit`` of 5 epochs. ``--variants`` picks the
variants (``tb_bnstats_no_probe``: ``probe_data=False``).

    python bench/overhead.py [--models convnet,mobilenetv2] [--xla off,on] [--rounds 3] [--steps 100]
    python bench/overhead.py --models resnet50 --batch 64 --xla on     # on a GPU
    python bench/overhead.py --backend jax --xla on                     # Keras on JAX
    python bench/overhead.py --framework torch [--compile off,on]       # PyTorch: bench/overhead_torch.py
    python bench/overhead.py --framework flax                           # Flax NNX: bench/overhead_flax.py
    python bench/overhead.py --models convnet --xla on --steps 80 --rounds 7 --variants none,tb_bnstats  # 80-step fits
"""

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

BACKENDS = ("tensorflow", "jax", "torch")


def _backend_argument(argv):
    """``--backend`` as given, before Keras is imported (it picks its backend once)."""
    for i, arg in enumerate(argv):
        if arg == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    return None


if "--framework" in sys.argv and sys.argv[sys.argv.index("--framework") + 1:][:1] == ["torch"] or (
        "--framework=torch" in sys.argv):
    # A plain PyTorch loop: measured without importing Keras or TensorFlow.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import overhead_torch

    overhead_torch.main(sys.argv[1:])
    sys.exit(0)
if "--framework" in sys.argv and sys.argv[sys.argv.index("--framework") + 1:][:1] == ["flax"] or (
        "--framework=flax" in sys.argv):
    # An NNX nnx.jit loop: measured without importing Keras, TensorFlow or PyTorch.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import overhead_flax

    overhead_flax.main(sys.argv[1:])
    sys.exit(0)

os.environ["KERAS_BACKEND"] = _backend_argument(sys.argv) or os.environ.get("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tb_bnstats  # noqa: E402

VARIANTS = ("none", "keras_tensorboard", "tb_bnstats") if keras.backend.backend() == "tensorflow" else (
    "none", "tb_bnstats")
ALL_VARIANTS = ("none", "keras_tensorboard", "tb_bnstats", "tb_bnstats_no_probe")


def conv_net(n_blocks=8, width=16):
    """The 8-BN conv net on 32x32x3."""
    inp = keras.Input((32, 32, 3))
    x = inp
    for i in range(n_blocks):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU()(x)
        if i % 3 == 2:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(10)(x)), (32, 32, 3)


def mobilenet_v2():
    """MobileNetV2, alpha 0.35, at 64x64 (52 BN layers, long layer names)."""
    return keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35, weights=None, classes=10), (64, 64, 3)


def resnet50():
    """ResNet-50 at 224x224 (53 BN layers), for a GPU."""
    return keras.applications.ResNet50(weights=None, classes=10), (224, 224, 3)


MODELS = {"convnet": conv_net, "mobilenetv2": mobilenet_v2, "resnet50": resnet50}


class StepTimer(keras.callbacks.Callback):
    """Wall and CPU time per step (between consecutive batch starts) and per
    epoch. Defines no ``on_train_batch_end``, so it adds no per-step sync."""

    def __init__(self):
        super().__init__()
        self.step_wall, self.step_cpu, self.epoch_wall, self.epoch_cpu = [], [], [], []
        self._last = self._epoch = None

    @staticmethod
    def _now():
        return time.perf_counter(), time.process_time()

    def on_epoch_begin(self, epoch, logs=None):
        self._last, self._epoch = None, self._now()

    def on_train_batch_begin(self, batch, logs=None):
        now = self._now()
        if self._last is not None:
            self.step_wall.append(now[0] - self._last[0])
            self.step_cpu.append(now[1] - self._last[1])
        self._last = now

    def on_epoch_end(self, epoch, logs=None):
        now = self._now()
        self.epoch_wall.append(now[0] - self._epoch[0])
        self.epoch_cpu.append(now[1] - self._epoch[1])

    def clear(self):
        for values in (self.step_wall, self.step_cpu, self.epoch_wall, self.epoch_cpu):
            values.clear()


def bench(model_name, jit, args, root):
    """Trains the variants alternately and prints their figures."""
    builders, runs = MODELS[model_name], {}
    rng = np.random.default_rng(0)
    variants = args.variants
    for variant in variants:
        keras.utils.set_random_seed(0)
        model, shape = builders()
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
        timer = StepTimer()
        callbacks = [timer]
        if variant == "keras_tensorboard":
            callbacks.insert(0, keras.callbacks.TensorBoard(str(root / f"{model_name}-{jit}-keras"), histogram_freq=1,
                                                            update_freq="batch"))
        elif variant == "tb_bnstats":
            callbacks.insert(0, tb_bnstats.BNStatsCallback(root / f"{model_name}-{jit}-bnstats", verbose=0))
        elif variant == "tb_bnstats_no_probe":
            callbacks.insert(0, tb_bnstats.BNStatsCallback(root / f"{model_name}-{jit}-noprobe", verbose=0,
                                                           probe_data=False))
        runs[variant] = (model, callbacks, timer)
    n = args.steps * args.batch
    x = rng.normal(size=(n, *shape)).astype("float32")
    y = rng.integers(0, 10, n)
    for model, callbacks, timer in runs.values():  # warm-up: trace and compile
        model.fit(x[: 4 * args.batch], y[: 4 * args.batch], batch_size=args.batch, epochs=1, verbose=0,
                  callbacks=callbacks)
        timer.clear()
    fit_wall = {v: [] for v in variants}
    fit_cpu = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant, (model, callbacks, _) in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            model.fit(x, y, batch_size=args.batch, epochs=args.epochs_per_fit, verbose=0, shuffle=False,
                      callbacks=callbacks)
            fit_wall[variant].append(time.perf_counter() - wall)
            fit_cpu[variant].append(time.process_time() - cpu)
    timers = {v: runs[v][2] for v in variants}
    base = timers["none"]
    monitored, cb = runs["tb_bnstats"][0], runs["tb_bnstats"][1][0]
    layers = len(cb._recorder.layer_infos)
    steps_logged = int(monitored.optimizer.iterations.numpy())
    event_bytes = sum(p.stat().st_size for p in (root / f"{model_name}-{jit}-bnstats").glob("events.out.tfevents.*"))
    reads = cb._recorder.capture.reads
    print(f"\n{model_name} on {keras.backend.backend()}: {layers} BN layers, batch {args.batch}, jit_compile={jit}, "
          f"{args.rounds} alternated rounds x {args.epochs_per_fit} epoch(s) of {args.steps} steps per fit call")
    print(f"  {'variant':18s} {'median step':>22s} {'ratio (median step)':>22s} {'ratio (epoch total)':>22s}")
    print(f"  {'':18s} {'wall ms':>10s} {'cpu ms':>11s} {'wall':>10s} {'cpu':>11s} {'wall':>10s} {'cpu':>11s}")
    for variant, t in timers.items():
        wall, cpu = statistics.median(t.step_wall), statistics.median(t.step_cpu)
        print(f"  {variant:18s} {wall * 1e3:10.2f} {cpu * 1e3:11.2f} "
              f"{wall / statistics.median(base.step_wall):10.3f} {cpu / statistics.median(base.step_cpu):11.3f} "
              f"{sum(t.epoch_wall) / sum(base.epoch_wall):10.3f} {sum(t.epoch_cpu) / sum(base.epoch_cpu):11.3f}")
    print(f"  {'whole fit calls':18s} {'median of rounds':>22s} {'ratio of totals':>22s}")
    print(f"  {'':18s} {'wall':>10s} {'cpu':>11s} {'wall':>10s} {'cpu':>11s}")
    for variant in variants:
        rounds_wall = [a / b for a, b in zip(fit_wall[variant], fit_wall["none"])]
        rounds_cpu = [a / b for a, b in zip(fit_cpu[variant], fit_cpu["none"])]
        print(f"  {variant:18s} {statistics.median(rounds_wall):10.3f} {statistics.median(rounds_cpu):11.3f} "
              f"{sum(fit_wall[variant]) / sum(fit_wall['none']):10.3f} "
              f"{sum(fit_cpu[variant]) / sum(fit_cpu['none']):11.3f}")
    print(f"  tb_bnstats: {event_bytes / (steps_logged * layers):.0f} event bytes per layer per step "
          f"({event_bytes} bytes, {steps_logged} steps x {layers} layers, snapshots and metrics included); "
          f"{100.0 * reads / steps_logged:.2f} device-to-host reads per 100 steps "
          f"({reads} reads, ring of {cb._recorder.capture.drain_every} steps)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=["keras", "torch", "flax"], default="keras",
                        help="keras (this file), torch (bench/overhead_torch.py) or flax (bench/overhead_flax.py)")
    parser.add_argument("--backend", choices=BACKENDS, default=os.environ["KERAS_BACKEND"],
                        help="Keras' backend (default: KERAS_BACKEND, else tensorflow)")
    parser.add_argument("--models", default="convnet,mobilenetv2", help=f"comma-separated, of {sorted(MODELS)}")
    parser.add_argument("--xla", default="off,on", help="off, on or off,on")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="steps per epoch")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs-per-fit", type=int, default=1,
                        help="epochs per fit call (1: fit once per epoch, in a loop)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {list(ALL_VARIANTS)} (none and tb_bnstats always)")
    args = parser.parse_args()
    asked = args.variants.split(",")
    unknown = sorted(set(asked) - set(ALL_VARIANTS))
    if unknown or ("keras_tensorboard" in asked and keras.backend.backend() != "tensorflow"):
        parser.error(f"--variants: {unknown or 'keras_tensorboard'} not measurable here; of {list(VARIANTS)} "
                     "and tb_bnstats_no_probe")
    args.variants = ["none", "tb_bnstats"] + [v for v in ALL_VARIANTS if v in asked and v not in ("none", "tb_bnstats")]
    root = pathlib.Path(tempfile.mkdtemp(prefix="tb_bnstats_bench_"))
    for model_name in args.models.split(","):
        for xla in args.xla.split(","):
            bench(model_name, {"off": False, "on": True}[xla], args, root)


if __name__ == "__main__":
    main()
