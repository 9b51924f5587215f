"""Cost of the train/inference gap probe (``BNStatsCallback(probe_data=...)``)
and of one population-statistics measurement (``population_data=...``).

The conv net of ``bench/overhead.py`` (8 BN layers, batch 32) is trained with
the callback; then, in the same process:

* one probe (a 256-sample batch in training and in inference mode, loss,
  metrics and per-layer series, through one cached ``tf.function``) is timed
  against one training step of the same fit (median of many);
* whole epochs with ``probe_every_n_steps=10`` against the same epochs
  without a probe, alternately ROUNDS times (median epoch-time ratio);
* one ``population_stats`` call of 1024 samples at batch 32 (what the
  callback runs per measurement, tracing included) against one training step.

Prints ratios, not absolute times. Not a pass/fail test.

    nice python bench/probe.py [--rounds 3] [--steps 40]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from overhead import StepTimer, conv_net  # noqa: E402
from tb_bnstats import BNStatsCallback  # noqa: E402
from tb_bnstats.frameworks.keras import passes as keras_passes  # noqa: E402
from tb_bnstats.frameworks.keras.capture import tensorflow as keras_capture  # noqa: E402
from tb_bnstats.measure import population  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32 * args.steps, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, len(x))
    xv, yv = x[:256] + 0.1, y[:256]
    logdir = tempfile.mkdtemp()
    plain, probed = conv_net(), conv_net()
    for model in (plain, probed):
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    cbs = {id(plain): BNStatsCallback(os.path.join(logdir, "plain"), verbose=0),
           id(probed): BNStatsCallback(os.path.join(logdir, "probed"), verbose=0, probe_data=(xv, yv),
                                       probe_every_n_steps=10)}
    epoch = {id(plain): [], id(probed): []}
    timer = StepTimer()
    for r in range(args.rounds + 1):  # round 0 warms up (traces)
        for model in (plain, probed):
            t = time.perf_counter()
            model.fit(x, y, batch_size=32, epochs=1, verbose=0,
                      callbacks=[cbs[id(model)]] + ([timer] if model is plain else []))
            if r:
                epoch[id(model)].append(time.perf_counter() - t)
    step = statistics.median(timer.wall)
    gp = keras_passes.GapProbe(probed, xv, yv, keras_capture.find_batchnorm_layers(probed))
    gp.run()
    runs = []
    for _ in range(20):
        t = time.perf_counter()
        gp.run()
        runs.append(time.perf_counter() - t)
    one = statistics.median(runs)
    ratio = statistics.median(p / b for p, b in zip(epoch[id(probed)], epoch[id(plain)]))
    print(f"one probe (256 samples, both modes) / one train step (batch 32): {one / step:.2f}")
    print(f"epoch time with probe_every_n_steps=10 / without probe: {ratio:.3f} "
          f"({args.steps} steps per epoch, {args.rounds} rounds)")
    print(f"probe traced {gp._fn.experimental_get_tracing_count()} time(s) for {len(runs) + 1} runs")
    measurements = []
    for _ in range(5):
        t = time.perf_counter()
        population.population_stats(probed, x, num_samples=1024, batch_size=32)
        measurements.append(time.perf_counter() - t)
    print(f"one population measurement (1024 samples, batch 32) / one train step (batch 32): "
          f"{statistics.median(measurements) / step:.1f}")


if __name__ == "__main__":
    main()
