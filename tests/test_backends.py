"""A JAX and a torch training process never import TensorFlow: the callback
with its probe and population statistics, ``population_stats``,
``recalibrate``, ``gap_report`` and ``diagnose_model``, each in a fresh
process under ``KERAS_BACKEND=jax`` / ``torch``. Their event files are then
read here through TensorBoard."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tb_bnstats

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    import tb_bnstats

    # No keras.utils.set_random_seed: Keras seeds TensorFlow too, importing it when installed.
    init = lambda i: keras.initializers.GlorotUniform(seed=i)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(6, 3, padding="same", kernel_initializer=init(1))(inp)
    h = keras.layers.BatchNormalization(momentum=0.99, name="bn1")(h)
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(h))
    h = keras.layers.Dropout(0.2, seed=3)(keras.layers.Dense(8, kernel_initializer=init(2))(h))
    h = keras.layers.BatchNormalization(momentum=0.99, name="bn2")(h)
    model = keras.Model(inp, keras.layers.Dense(3, kernel_initializer=init(4))(h))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 1.5, (128, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 128)
    cb = tb_bnstats.BNStatsCallback(sys.argv[1], verbose=0, probe_data=(x[:64], y[:64]), probe_every_n_steps=4,
                                    population_data=x, population_every_n_steps=4, population_samples=64,
                                    measure_budget=None)  # every due measurement
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb])
    stats = tb_bnstats.population_stats(model, x, batch_size=16)
    report = tb_bnstats.recalibrate(model, (x, y), batch_size=16)
    gap = tb_bnstats.gap_report(model, [(x[:32], y[:32])])
    findings = tb_bnstats.diagnose_model(model, (x, y))
    print(json.dumps({
        "tensorflow_imported": "tensorflow" in sys.modules,
        "backend": keras.backend.backend(),
        "codes": sorted({f.code for f in cb.findings}),
        "population_mean": stats["bn1"].mean.tolist(),
        "moving_mean_after_recalibrate": np.asarray(model.get_layer("bn1").moving_mean.numpy()).tolist(),
        "gap_samples": gap.samples,
        "live_findings": len(findings),
        "recalibrated_accuracy": report.after.accuracy_inference_mode,
    }))
""")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_jax_or_torch_process_never_imports_tensorflow(tmp_path, backend):
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["backend"] == backend
    assert out["tensorflow_imported"] is False
    assert "BN001" in out["codes"]  # momentum 0.99 after 16 steps
    # recalibrate wrote the population statistics it measured
    np.testing.assert_allclose(out["moving_mean_after_recalibrate"], out["population_mean"], rtol=1e-5, atol=1e-6)
    assert out["gap_samples"] == 32
    run = tb_bnstats.load(tmp_path)["run"]  # read here, through TensorBoard
    assert sorted(run.layers) == ["bn1", "bn2"]
    bn1 = run.layers["bn1"]
    np.testing.assert_array_equal(bn1.steps, np.arange(1, 17))
    np.testing.assert_array_equal(bn1.series["updates"], np.arange(1, 17))
    assert np.isfinite(bn1.series["probe_mean_gap/p50"]).sum() >= 4
    assert np.isfinite(bn1.series["population_mean_gap/max"]).sum() >= 4
