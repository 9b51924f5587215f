"""Overhead of tb_bnstats.flax.BNStatsMonitor logging every step of an NNX
``nnx.jit`` loop, against the same loop without it. Imports neither
TensorFlow, Keras nor PyTorch.

Two copies of a small conv net (six conv + ``nnx.BatchNorm`` pairs, 32x32x3
input) train on the same random data in this one process, one with the
monitor and one without (the baseline). After a warm-up (compilation), they
train alternately, ``--steps`` steps each, ``--rounds`` times, so that
machine noise hits both alike. Each round's wall-clock and process CPU time
(``time.process_time``: every thread, the monitor's writer included) is
taken around the whole loop, ``monitor.step`` and its drains included, with
the last loss read at the end of each round (the device finished).

Printed: the ratios of the round totals to the baseline's (median over
rounds), the event-file bytes per layer per step and the device-to-host
reads per 100 steps. Not a pass/fail test.

    python bench/overhead.py --framework flax [--rounds 5] [--steps 100] [--batch 32]   # or this file directly
"""

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
import optax

from flax import nnx
from tb_bnstats.flax import BNStatsMonitor

# The tests' jitted NNX train step (softmax cross-entropy, optimizer update), the loop's under both copies.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "flax"))
from flax_models import nnx_step as train_step  # noqa: E402


class Net(nnx.Module):
    def __init__(self, seed, widths=(16, 16, 32, 32, 64, 64)):
        rngs = nnx.Rngs(seed)
        self.convs, self.bns = nnx.List(), nnx.List()
        cin = 3
        for w in widths:
            self.convs.append(nnx.Conv(cin, w, (3, 3), rngs=rngs))
            self.bns.append(nnx.BatchNorm(w, rngs=rngs))
            cin = w
        self.head = nnx.Linear(cin, 10, rngs=rngs)

    def __call__(self, x):
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            x = jax.nn.relu(bn(conv(x)))
            if i % 2 == 1:
                x = x[:, ::2, ::2]
        return self.head(x.mean((1, 2)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--framework", choices=["flax"], default="flax")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(8, args.batch, 32, 32, 3)).astype(np.float32)
    ys = rng.integers(0, 10, (8, args.batch)).astype(np.int32)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for name in ("baseline", "monitored"):
            model = Net(0)
            runs[name] = [model, nnx.Optimizer(model, optax.sgd(0.01), wrt=nnx.Param), None]
        monitor = BNStatsMonitor(runs["monitored"][0], pathlib.Path(tmp) / "run", verbose=0)
        runs["monitored"][2] = monitor
        totals = {name: {"wall": [], "cpu": []} for name in runs}
        for round_ in range(args.rounds + 1):  # round 0: the warm-up (compilation)
            for name, (model, optimizer, mon) in runs.items():
                wall, cpu = time.perf_counter(), time.process_time()
                for i in range(args.steps):
                    loss = train_step(model, optimizer, xs[i % 8], ys[i % 8])
                    if mon is not None:
                        mon.step(loss=loss)
                jax.block_until_ready(loss)
                if round_:
                    totals[name]["wall"].append(time.perf_counter() - wall)
                    totals[name]["cpu"].append(time.process_time() - cpu)
        steps = monitor._step
        monitor.close()
        size = sum(p.stat().st_size for p in (pathlib.Path(tmp) / "run").rglob("*") if p.is_file())
        layers = len(monitor.capture.names)
        reads = monitor.capture.reads
    base = totals["baseline"]
    print(f"Flax NNX, {len(runs['baseline'][0].bns)} BN layers, batch {args.batch}, {args.rounds} rounds of "
          f"{args.steps} steps (jax {jax.__version__}, {jax.default_backend()})")
    for kind in ("wall", "cpu"):
        ratios = [m / b for m, b in zip(totals["monitored"][kind], base[kind])]
        print(f"  {kind:4s}: baseline {statistics.median(base[kind]) / args.steps * 1e3:.3f} ms/step, "
              f"ratio monitored/baseline median {statistics.median(ratios):.3f} (rounds: "
              f"{', '.join(f'{r:.3f}' for r in ratios)})")
    print(f"  event files: {size / max(layers, 1) / max(steps, 1):.0f} bytes per layer per step "
          f"({size} bytes, {steps} steps, {layers} layers)")
    print(f"  device-to-host reads: {reads / max(steps, 1) * 100:.2f} per 100 steps ({reads} in {steps} steps)")


if __name__ == "__main__":
    main()
