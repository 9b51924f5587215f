"""Population statistics logged by the callback (``population_data=``):
the logged numbers equal an independent numpy PreciseBN over the same
batches, training is bit-identical with and without them, and bad arguments
fail at construction."""

import warnings

import keras
import numpy as np
import pytest

import diagnosis_scenarios as scenarios
import tb_bnstats
from keras_models import deterministic
from tb_bnstats import BNStatsCallback
from tb_bnstats.format import metadata

pytestmark = pytest.mark.backend  # runs again under each Keras backend (Makefile, test-python)

BATCH = 32


def _numpy_bn_inputs(model, x):
    """The inputs of dense_model's bn1 and bn2 (Dense -> BN -> ReLU twice, no
    bias) on batch ``x``, with bn1 normalizing by the batch's own moments as
    in training and in PreciseBN."""
    layers = {layer.name: layer for layer in model.layers}
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    out, h = {}, x.astype(np.float64)
    for name, d in zip(("bn1", "bn2"), dense):
        bn = layers[name]
        a = h @ d.kernel.numpy().astype(np.float64)
        out[name] = a
        y = bn.gamma.numpy() * (a - a.mean(0)) / np.sqrt(a.var(0) + bn.epsilon) + bn.beta.numpy()
        h = np.maximum(y, 0.0)
    return out


def test_logged_population_statistics_match_numpy_precise_bn(tmp_path):
    x, y = scenarios.digits(n=512)
    samples = 200  # not a multiple of the batch: whole batches, 224 rows
    model = scenarios.dense_model(momentum=0.99)  # moving averages far from the population: gaps to measure
    cb = BNStatsCallback(tmp_path / "run", verbose=0, population_data=(x, y), population_samples=samples,
                         population_batch_size=BATCH, population_every_n_steps=5, measure_budget=None)
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[cb])
    layers = tb_bnstats.load(tmp_path)["run"].layers
    # At the first step, every 5 steps and at the epoch ends (16, 32).
    bn1 = layers["bn1"]
    measured = bn1.steps[np.isfinite(bn1.series["population_mean"])]
    assert list(measured) == [1, 5, 10, 15, 16, 20, 25, 30, 32]
    # The last measurement (step 32, after the last update) against numpy over
    # the same 7 batches of the first 224 rows, with the final weights.
    rows = -(-samples // BATCH) * BATCH
    per_batch = [_numpy_bn_inputs(model, x[i:i + BATCH]) for i in range(0, rows, BATCH)]
    by_name = {layer.name: layer for layer in model.layers}
    for name in ("bn1", "bn2"):
        values = np.concatenate([b[name] for b in per_batch])
        pop_mean, pop_var = values.mean(0), values.var(0)  # pooled = all rows at once
        bn = by_name[name]
        mm, mv, eps = bn.moving_mean.numpy(), bn.moving_variance.numpy(), bn.epsilon
        gap = np.abs(mm - pop_mean) / np.sqrt(pop_var + eps)
        lvr = np.abs(np.log((pop_var + eps) / (mv + eps)))
        expected = {"population_mean": pop_mean.mean(), "population_var": pop_var.mean(),
                    "population_mean_gap/p50": np.median(gap), "population_mean_gap/max": gap.max(),
                    "population_abs_log_var_ratio/p50": np.median(lvr),
                    "population_abs_log_var_ratio/max": lvr.max()}
        assert set(expected) == set(metadata.POPULATION_SERIES)
        series = layers[name].series
        assert layers[name].steps[-1] == 32
        for q, want in expected.items():
            np.testing.assert_allclose(series[q][-1], want, rtol=2e-4, atol=1e-5, err_msg=f"{name} {q}")
        # 0.99 after 32 updates: far from the population (the S1 picture).
        assert series["population_mean_gap/max"][-1] > 0.5
        # The moving mean logged at the same step is the one compared.
        np.testing.assert_allclose(series["moving_mean"][-1], mm.mean(), rtol=1e-5, atol=1e-6)


def test_training_is_bit_identical_with_population_logging(tmp_path):
    x, y = scenarios.digits(n=256)

    def run(with_population):
        deterministic()
        model = scenarios.dense_model(dropout_before="bn2", seed=3)  # Dropout: an RNG that must not move
        seen = []

        class Losses(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                seen.append(float(logs["loss"]))

        kwargs = dict(population_data=x, population_every_n_steps=3, population_samples=96,
                      measure_budget=None) if with_population else {}
        keras.utils.set_random_seed(11)
        model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0,
                  callbacks=[BNStatsCallback(tmp_path / f"run_{with_population}", verbose=0, **kwargs), Losses()])
        return seen, model

    without, plain = run(False)
    with_population, measured = run(True)
    assert with_population == without
    for a, b in zip(measured.variables, plain.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    layer = tb_bnstats.load(tmp_path)["run_True"].layers["bn2"]
    assert np.isfinite(layer.series["population_var"]).sum() == 8  # steps 1, 3, 6, 8 (epoch end), 9, 12, 15, 16


@pytest.mark.parametrize("kwargs, message", [
    (dict(population_data="x.npy"), "population_data must be arrays"),
    (dict(population_data=(np.zeros((4, 2)), np.zeros(3))), "population_data arrays must have the same number"),
    (dict(population_every_n_steps=10), "population_every_n_steps needs population_data"),
    (dict(population_data=np.zeros((4, 2)), population_samples=0), "population_samples must be an integer >= 1"),
    (dict(population_data=np.zeros((4, 2)), population_batch_size=2.5), "population_batch_size must be an integer"),
    (dict(population_data=np.zeros((4, 2)), population_every_n_steps=-1), "population_every_n_steps must be"),
])
def test_bad_population_arguments_fail_at_construction(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        BNStatsCallback(tmp_path / "run", **kwargs)


def test_population_data_that_runs_out_warns_once_and_training_goes_on(tmp_path):
    x, y = scenarios.digits(n=128)
    batches = ((x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, 128, BATCH))  # one-shot generator
    model = scenarios.dense_model()
    cb = BNStatsCallback(tmp_path / "run", verbose=0, population_data=batches, population_samples=128,
                         measure_budget=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[cb])
    assert len(history.history["loss"]) == 3
    mine = [str(w.message) for w in caught if "population statistics" in str(w.message)]
    assert len(mine) == 1 and "no data" in mine[0], mine
    series = tb_bnstats.load(tmp_path)["run"].layers["bn1"].series["population_mean"]
    assert np.isfinite(series).sum() == 1  # the first epoch's end, then the generator was empty
