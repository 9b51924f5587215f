"""The callback's memory does not grow with the number of steps.

A real ``fit`` of a 20-BN MLP logs every step. The writer keeps the last
``DIAGNOSIS_HISTORY`` logged steps of every layer series for the end-of-fit
diagnosis (a deque per layer), so the Python heap grows while that history
fills and must then stay flat. The heap is measured with ``tracemalloc`` (every
Python allocation, numpy arrays included) after a ``gc.collect()`` at
checkpoints. The history is shortened for the test (the bound does not depend
on its length); ``bench/scale.py`` runs the same with the real length.
"""

import gc
import os
import tracemalloc

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tb_bnstats  # noqa: E402
from tb_bnstats import BNStatsCallback, recorder  # noqa: E402
from tb_bnstats.capture import rows as ring_rows  # noqa: E402

pytestmark = pytest.mark.backend  # runs again under each Keras backend (Makefile, test-python)


def _rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# Allocations made in tb_bnstats' own code (the innermost Python frame of the
# allocation; numpy and protobuf calls from it count as its own).
OWN_CODE = tracemalloc.Filter(True, "*/tb_bnstats/*")


class MemoryCheckpoints(keras.callbacks.Callback):
    """Starts tracemalloc after step ``start`` (after the train function is
    traced, which is slow under tracemalloc and not what is measured), then at
    the given steps, after a ``gc.collect()``, records ``(step, heap, own,
    rss)``: the Python heap allocated since ``start`` and still held, the part
    of it allocated by tb_bnstats code (the callback's own memory, free of
    TensorFlow's churn) and the process' RSS, in bytes. It goes last in the
    callback list, so it sees the state after the BN callback's end of batch.
    Memory allocated before ``start`` and freed after it is not subtracted:
    a bounded buffer reads as growing until it has been refilled once."""

    def __init__(self, start, steps):
        super().__init__()
        self.start, self.steps = start, set(steps)
        self.points = []
        self._step = 0

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step == self.start:
            gc.collect()
            tracemalloc.start()
        if self._step in self.steps:
            self.bn._recorder.run.jobs.wait()  # the background writer is done with what was drained
            gc.collect()
            own = tracemalloc.take_snapshot().filter_traces([OWN_CODE])
            self.points.append((self._step, tracemalloc.get_traced_memory()[0],
                                sum(s.size for s in own.statistics("filename")), _rss_bytes()))

    def on_train_end(self, logs=None):
        tracemalloc.stop()


def bn_mlp(layers, width=8, seed=0):
    """``layers`` x (Dense -> BatchNormalization -> ReLU), then a 2-class head."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((width,))
    x = inp
    for i in range(layers):
        x = keras.layers.Dense(width)(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i:02d}")(x)
        x = keras.layers.ReLU()(x)
    model = keras.Model(inp, keras.layers.Dense(2)(x))
    model.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def fit_with_checkpoints(log_dir, steps, start, checkpoints, layers=20, batch=8):
    """Trains ``steps`` steps with ``BNStatsCallback(log_every_n_steps=1)``
    under tracemalloc; returns the :class:`MemoryCheckpoints` points and the
    callback."""
    model = bn_mlp(layers)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * batch, 8)).astype("float32")
    y = rng.integers(0, 2, steps * batch)
    bn = BNStatsCallback(str(log_dir), log_every_n_steps=1, snapshot_every_n_steps=100, flush_secs=600, verbose=0)
    probe = MemoryCheckpoints(start, checkpoints)
    probe.bn = bn
    try:
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[bn, probe])
    finally:
        tracemalloc.stop()
    return probe.points, bn


def test_callback_heap_is_flat_once_the_history_is_full(tmp_path, monkeypatch):
    # Steps chosen so that the flat part compares like with like: both
    # checkpoints after step 256 + history (Python caches ints below 257, so
    # the steps held in the history only cost memory above that) and 192
    # steps apart, a multiple of 64 (a deque grows in blocks of 64 entries).
    history, layers = 16, 20
    start, full, mid, late = 10, 40, 280, 472
    monkeypatch.setattr(recorder, "DIAGNOSIS_HISTORY", history)
    # A ring of 16 steps: drained after steps 16, 32...; the checkpoints see
    # the same phase of it (8 steps kept on the device, not yet read).
    monkeypatch.setattr(ring_rows, "RING_MAX_STEPS", 16)
    points, bn = fit_with_checkpoints(tmp_path / "run", late, start, (full, mid, late), layers)
    assert [p[0] for p in points] == [full, mid, late]
    own = {step: o for step, _, o, _ in points}
    # The run really logged every step of every layer, and diagnosed at the end.
    assert bn.findings is not None
    logged = tb_bnstats.load(tmp_path / "run")["run"].layers
    assert len(logged) == layers and all(list(layer.steps) == list(range(1, late + 1)) for layer in logged.values())

    # The measurement sees what the callback holds: at step 40 the history's
    # 16 x 20 rows (21 float64 + the step: > 200 bytes each), drained at
    # step 32, were all made since tracing began at step 10.
    assert own[full] > history * layers * 200, points

    # Then flat: 192 more logged steps x 20 layers = 3,840 layer-steps. A leak
    # of 2 bytes per layer per step (a pointer every 4 steps) would add 7.7 kB;
    # an unbounded history (~350 bytes per layer-step) 1.3 MB.
    growth = own[late] - own[mid]
    bound = 2 * (late - mid) * layers
    assert growth < bound, (f"the callback's heap grew {growth} bytes from step {mid} to {late} "
                            f"(bound {bound}): {points}")
