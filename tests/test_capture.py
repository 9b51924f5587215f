"""The Keras callback against independent computations on the same batches.

Runs under each Keras backend (``KERAS_BACKEND=tensorflow|jax|torch``, one
pytest process each: ``make test``)."""

import os
import warnings

import keras
import numpy as np
import pytest

import tb_bnstats
from keras_models import (
    BNInputRecorder,
    InferenceModeBN,
    bn_layers,
    conv_net,
    conv_net_bn_inputs,
    data,
    deterministic,
    to_numpy,
)

pytestmark = pytest.mark.backend  # runs again under each Keras backend (Makefile, test-python)

BATCH = 16
BACKEND = keras.backend.backend()
no_steps_per_execution = pytest.mark.skipif(
    BACKEND == "torch", reason="Keras' torch backend refuses steps_per_execution > 1 (its own ValueError)")


def _fit(model, x, y, log_dir, epochs=1, **cb_kwargs):
    cb_kwargs.setdefault("snapshot_every_n_steps", 1)
    cb = tb_bnstats.BNStatsCallback(log_dir, verbose=0, **cb_kwargs)
    recorder = BNInputRecorder(x, BATCH)
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=[cb, recorder])
    return recorder


@pytest.mark.parametrize("jit_compile", [False, True])
def test_logged_moments_equal_numpy_moments_of_the_real_input(tmp_path, jit_compile):
    x, y = data()
    model = conv_net(jit_compile=jit_compile)
    recorder = _fit(model, x, y, tmp_path / "run", epochs=2)
    run = tb_bnstats.load(tmp_path)["run"]
    names = ["bn1", "nested/bn2", "block/inner_bn"]
    assert sorted(run.layers) == sorted(names)
    assert [run.layers[n].info.depth for n in names] == [0, 1, 2]  # execution order
    steps = run.layers["bn1"].snapshot_steps
    assert list(steps) == list(range(1, 9))
    for layer_index, (name, layer) in enumerate(zip(names, bn_layers(model))):
        logged = run.layers[name]
        for i in range(len(steps)):
            bn_input = recorder.inputs[i][layer_index]
            axes = tuple(range(bn_input.ndim - 1))
            scale = np.abs(bn_input).max()  # means near 0 are compared relative to the data's scale
            np.testing.assert_allclose(logged.snapshots["batch_mean"][i], bn_input.mean(axis=axes),
                                       rtol=1e-5, atol=1e-5 * scale)
            np.testing.assert_allclose(logged.snapshots["batch_var"][i], bn_input.var(axis=axes),
                                       rtol=1e-5, atol=1e-5 * scale**2)
            moving_mean, moving_var = recorder.moving[i][layer_index]
            np.testing.assert_allclose(logged.snapshots["moving_mean"][i], moving_mean, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(logged.snapshots["moving_var"][i], moving_var, rtol=1e-6, atol=1e-7)
        # Convergence and debiasing against their closed forms.
        m = layer.momentum
        t = logged.series["updates"]
        np.testing.assert_array_equal(t, np.arange(1, 9))
        np.testing.assert_allclose(logged.series["convergence"], 1 - m**t, rtol=1e-6)
        w = (m ** t)[:, None]
        np.testing.assert_allclose(logged.snapshots["debiased_mean"],
                                   (logged.snapshots["moving_mean"] - w * 0.0) / (1 - w), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(logged.snapshots["debiased_var"],
                                   (logged.snapshots["moving_var"] - w * 1.0) / (1 - w), rtol=1e-5, atol=1e-6)
        # Channel aggregates are aggregates of the per-channel rows.
        gap = np.abs(logged.snapshots["batch_mean"] - logged.snapshots["moving_mean"]) / np.sqrt(
            logged.snapshots["batch_var"] + layer.epsilon)
        np.testing.assert_allclose(logged.series["mean_gap/max"], gap.max(axis=1), rtol=1e-5)
        np.testing.assert_allclose(logged.series["batch_mean"], logged.snapshots["batch_mean"].mean(axis=1),
                                   rtol=1e-5, atol=1e-6)


def test_metrics_are_logged_per_step_on_the_same_axis(tmp_path):
    x, y = data()
    model = conv_net()
    losses = []

    class Losses(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            losses.append(logs["loss"])

    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, validation_data=(x[:32], y[:32]),
              callbacks=[tb_bnstats.BNStatsCallback(tmp_path / "run", verbose=0), Losses()])
    run = tb_bnstats.load(tmp_path)["run"]
    steps, per_step = run.metrics["train/loss"]
    assert list(steps) == list(range(1, 9))
    # Keras reports a running mean per epoch; the logged per-step losses average back to it.
    running = np.array(losses)
    for epoch in range(2):
        chunk = per_step[epoch * 4:(epoch + 1) * 4]
        np.testing.assert_allclose(np.cumsum(chunk) / np.arange(1, 5), running[epoch * 4:(epoch + 1) * 4], rtol=1e-5)
    val_steps, val_loss = run.metrics["val/loss"]
    assert list(val_steps) == [4, 8]
    assert "train/accuracy" in run.metrics and "val/accuracy" in run.metrics


def test_two_fits_continue_the_step_axis_and_counters(tmp_path):
    x, y = data()
    model = conv_net()
    _fit(model, x, y, tmp_path / "run")
    recorder = _fit(model, x, y, tmp_path / "run")  # a new callback, the cached train function
    run = tb_bnstats.load(tmp_path)["run"]
    bn1 = run.layers["bn1"]
    np.testing.assert_array_equal(bn1.steps, np.arange(1, 9))
    np.testing.assert_array_equal(bn1.series["updates"], np.arange(1, 9))
    # The second fit logs real moments, not the zeros of stale variables.
    bn_input = recorder.inputs[-1][0]
    np.testing.assert_allclose(bn1.snapshots["batch_mean"][-1], bn_input.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)


def test_a_recompiled_model_trains_as_compiled_with_the_callback(tmp_path):
    """compile() again with another loss (same shapes): the next fit traces
    the new loss, with the callback as without (JAX caches traces by function
    and shapes: the wrapped step must be a new function each time)."""
    x, y = data()

    def second_fit_loss(callbacks):
        model = conv_net()
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
        # The same optimizer: the step axis goes on (a new one would start again at step 1).
        model.compile(model.optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=False))
        return model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                         callbacks=callbacks).history["loss"][0]

    plain = second_fit_loss([])
    assert second_fit_loss([tb_bnstats.BNStatsCallback(tmp_path / "run", verbose=0)]) == pytest.approx(plain, rel=1e-6)
    layer = tb_bnstats.load(tmp_path)["run"].layers["bn1"]
    np.testing.assert_array_equal(layer.steps, np.arange(1, 9))
    np.testing.assert_array_equal(layer.series["updates"], np.arange(1, 9))


def test_log_every_n_steps_and_snapshot_interval(tmp_path):
    x, y = data(n=128)
    model = conv_net()
    cb = tb_bnstats.BNStatsCallback(tmp_path / "run", log_every_n_steps=3, snapshot_every_n_steps=4, verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[cb])
    bn1 = tb_bnstats.load(tmp_path)["run"].layers["bn1"]
    assert list(bn1.steps) == [1, 3, 6, 8]  # the first step, every 3 steps, the end of fit
    assert list(bn1.snapshot_steps) == [1, 6, 8]  # intervals crossed, plus the end of fit
    np.testing.assert_array_equal(bn1.series["updates"], bn1.steps)


def test_callback_does_not_change_training(tmp_path):
    def losses(with_callback):
        deterministic()
        x, y = data()
        model = conv_net(seed=3)
        seen = []

        class Losses(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                seen.append(float(logs["loss"]))

        cbs = [Losses()] + ([tb_bnstats.BNStatsCallback(tmp_path / "run", verbose=0)] if with_callback else [])
        keras.utils.set_random_seed(7)
        weights_before = [w.path for w in model.weights]
        model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=cbs)
        assert [w.path for w in model.weights] == weights_before
        return seen, model

    without, plain_model = losses(False)
    with_cb, model = losses(True)
    assert with_cb == without  # bit-identical losses step by step
    assert [(w.name, w.shape) for w in model.weights] == [(w.name, w.shape) for w in plain_model.weights]
    for a, b in zip(model.weights, plain_model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # save / load_model / load_weights are unchanged by the instrumentation.
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    assert [w.shape for w in reloaded.weights] == [w.shape for w in model.weights]
    model.save_weights(tmp_path / "m.weights.h5")
    plain_model.load_weights(tmp_path / "m.weights.h5")
    x, _ = data()
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_frozen_and_inference_mode_layers_are_reported_not_updated(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    frozen = keras.layers.BatchNormalization(name="frozen")
    frozen.trainable = False
    h = frozen(keras.layers.Dense(6)(inp))
    h = InferenceModeBN(name="inference")(h)
    h = keras.layers.BatchNormalization(name="normal")(h)
    model = keras.Model(inp, keras.layers.Dense(1)(h))
    model.compile(keras.optimizers.SGD(0.0), "mse")  # fixed weights: the BN input is known afterwards
    x = np.random.default_rng(0).normal(3.0, 2.0, (64, 4)).astype("float32")
    model.fit(x, x[:, :1], batch_size=16, verbose=0, shuffle=False,
              callbacks=[tb_bnstats.BNStatsCallback(tmp_path / "run", snapshot_every_n_steps=1, verbose=0)])
    layers = tb_bnstats.load(tmp_path)["run"].layers
    assert layers["frozen"].info.trainable is False
    np.testing.assert_array_equal(layers["frozen"].series["updates"], 0)
    np.testing.assert_array_equal(layers["inference/bn"].series["updates"], 0)
    np.testing.assert_array_equal(layers["normal"].series["updates"], np.arange(1, 5))
    assert np.all(layers["inference/bn"].series["convergence"] == 0)
    # What those layers saw is still logged: far from their initial moving values.
    assert np.all(layers["frozen"].series["mean_gap/max"] > 0.5)
    # Inputs to the "frozen" BN are Dense(x) moments, not zeros.
    dense = model.layers[1]
    h = to_numpy(dense(x[-16:]))
    np.testing.assert_allclose(layers["frozen"].snapshots["batch_mean"][-1], h.mean(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["renorm", "synchronized", "mixed_float16", "float64", "steps_per_execution"])
def test_variants_capture_exact_moments(tmp_path, variant):
    x, y = data()
    if variant == "synchronized" and BACKEND != "tensorflow":
        with pytest.raises(ValueError, match="synchronized=True is only supported"):
            conv_net(synchronized=True)  # Keras' own refusal, before any callback is involved
        return
    if variant == "steps_per_execution" and BACKEND == "torch":
        pytest.skip("Keras' torch backend refuses steps_per_execution > 1 (its own ValueError)")
    bn_kwargs = {"renorm": {"renorm": True}, "synchronized": {"synchronized": True}}.get(variant, {})
    if variant == "mixed_float16":
        keras.mixed_precision.set_global_policy("mixed_float16")
    if variant == "float64":  # moving statistics in float64: the ring stores float32
        keras.config.set_floatx("float64")
    try:
        model = conv_net(**bn_kwargs)
        if variant == "steps_per_execution":
            # lr 0 keeps the weights fixed, so each batch's BN input is known after the fact.
            model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          steps_per_execution=2)
        recorder = _fit(model, x, y, tmp_path / "run")
        if variant == "steps_per_execution":
            recorder.inputs = [
                [np.asarray(h, np.float64) for h in conv_net_bn_inputs(model, x[i * BATCH:(i + 1) * BATCH])]
                for i in range(4)]
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.config.set_floatx("float32")
    run = tb_bnstats.load(tmp_path)["run"]
    bn1 = run.layers["bn1"]
    assert list(bn1.steps) == [1, 2, 3, 4]
    np.testing.assert_array_equal(bn1.series["updates"], [1, 2, 3, 4])
    # The last logged step's moments equal the real input's moments.
    bn_input = recorder.inputs[3][0]
    tol = 2e-3 if variant == "mixed_float16" else 1e-5  # the recorder's sub-model runs in float16 too
    np.testing.assert_allclose(bn1.snapshots["batch_mean"][-1], bn_input.mean(axis=(0, 1, 2)), rtol=tol, atol=tol)
    np.testing.assert_allclose(bn1.snapshots["batch_var"][-1], bn_input.var(axis=(0, 1, 2)), rtol=tol, atol=tol)
    np.testing.assert_allclose(bn1.snapshots["moving_var"][-1], recorder.moving[-1][0][1], rtol=1e-6)
    if variant == "renorm":
        assert bn1.info.renorm and bn1.info.ema_of == "stddev"


@no_steps_per_execution
@pytest.mark.parametrize("jit_compile", [False, True])
def test_every_step_of_an_execution_is_logged_with_its_own_batch(tmp_path, jit_compile):
    """steps_per_execution=4: Keras returns to Python every 4 steps, but each
    step wrote its own row on the device: all 12 steps are logged, each with
    the moments of its own batch, and the moving averages step by step."""
    steps, spe = 12, 4
    x, y = data(n=steps * BATCH)
    model = conv_net(jit_compile=jit_compile)
    # lr 0 keeps the weights fixed, so each batch's BN input is known after the fact.
    model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=spe, jit_compile=jit_compile)
    cb = tb_bnstats.BNStatsCallback(tmp_path / "run", snapshot_every_n_steps=1, flush_secs=60, verbose=0)
    history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    assert cb._recorder.capture.reads == 1  # one read of the ring, at the epoch's end
    run = tb_bnstats.load(tmp_path)["run"]
    inputs = [conv_net_bn_inputs(model, x[i * BATCH:(i + 1) * BATCH]) for i in range(steps)]
    for k, (name, layer) in enumerate(zip(["bn1", "nested/bn2", "block/inner_bn"], bn_layers(model))):
        logged = run.layers[name]
        np.testing.assert_array_equal(logged.steps, np.arange(1, steps + 1))
        np.testing.assert_array_equal(logged.snapshot_steps, np.arange(1, steps + 1))
        np.testing.assert_array_equal(logged.series["updates"], np.arange(1, steps + 1))
        moving_mean = np.zeros(layer.moving_mean.shape, np.float64)
        moving_var = np.ones(layer.moving_variance.shape, np.float64)
        for i in range(steps):
            h = np.asarray(inputs[i][k], np.float64)
            axes = tuple(range(h.ndim - 1))
            mean, var = h.mean(axis=axes), h.var(axis=axes)
            scale = np.abs(h).max()
            np.testing.assert_allclose(logged.snapshots["batch_mean"][i], mean, rtol=1e-5, atol=1e-5 * scale)
            np.testing.assert_allclose(logged.snapshots["batch_var"][i], var, rtol=1e-5, atol=1e-5 * scale**2)
            moving_mean = layer.momentum * moving_mean + (1 - layer.momentum) * mean
            moving_var = layer.momentum * moving_var + (1 - layer.momentum) * var
            np.testing.assert_allclose(logged.snapshots["moving_mean"][i], moving_mean, rtol=1e-4, atol=1e-6 * scale)
            np.testing.assert_allclose(logged.snapshots["moving_var"][i], moving_var, rtol=1e-4, atol=1e-6 * scale**2)
            np.testing.assert_allclose(logged.series["batch_mean"][i], mean.mean(), rtol=1e-4, atol=1e-5 * scale)
    # The per-step loss is each step's own, not a running mean: their mean is the epoch's loss.
    steps_logged, loss = run.metrics["train/loss"]
    np.testing.assert_array_equal(steps_logged, np.arange(1, steps + 1))
    assert np.mean(loss) == pytest.approx(history.history["loss"][-1], rel=1e-5)
    assert np.std(loss) > 0


@pytest.mark.parametrize("how", ["arrays", "steps_per_execution", "generator"])
def test_the_batch_size_the_train_step_saw_is_logged(tmp_path, how):
    """LayerInfo.batch_samples is the number of examples in a training batch
    (what the noise floor of BN005 derives from): 32 for batch_size=32, also
    when the epoch ends on a partial batch (100 = 3 x 32 + 4), with several
    steps per execution, and from a generator of batches of unknown size."""
    if how == "steps_per_execution" and BACKEND == "torch":
        pytest.skip("Keras' torch backend refuses steps_per_execution > 1 (its own ValueError)")
    x, y = data(n=100)
    model = conv_net()
    if how == "steps_per_execution":
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), steps_per_execution=2)
    cb = tb_bnstats.BNStatsCallback(tmp_path / "run", verbose=0)
    if how == "generator":
        def batches():
            for _ in range(2):
                for i in range(0, 100, 32):
                    yield x[i:i + 32], y[i:i + 32]
        model.fit(batches(), steps_per_epoch=4, epochs=2, verbose=0, callbacks=[cb])
    else:
        model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[cb])
    layers = tb_bnstats.load(tmp_path)["run"].layers
    assert {name: layer.info.batch_samples for name, layer in layers.items()} == {
        "bn1": 32, "nested/bn2": 32, "block/inner_bn": 32}


def test_masked_inputs_use_the_masked_moments(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 3))
    h = keras.layers.Masking(mask_value=0.0)(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    model = keras.Model(inp, keras.layers.GlobalAveragePooling1D()(h))
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 1.0, (16, 5, 3)).astype("float32")
    x[:, 3:, :] = 0.0  # masked timesteps
    model.fit(x, np.zeros((16, 3)), batch_size=16, verbose=0,
              callbacks=[tb_bnstats.BNStatsCallback(tmp_path / "run", verbose=0)])
    bn = tb_bnstats.load(tmp_path)["run"].layers["bn"]
    kept = x[:, :3, :].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(bn.snapshots["batch_mean"][-1], kept.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.snapshots["batch_var"][-1], kept.var(0), rtol=1e-4)


def test_subclassed_model_and_layer_filter(tmp_path):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d1 = keras.layers.Dense(4)
            self.bn_a = keras.layers.BatchNormalization(name="bn_a")
            self.bn_b = keras.layers.BatchNormalization(name="bn_b")
            self.out = keras.layers.Dense(1)

        def call(self, x, training=None):
            return self.out(self.bn_b(self.bn_a(self.d1(x), training=training), training=training))

    keras.utils.set_random_seed(0)
    model = Net()
    model.compile("sgd", "mse")
    x = np.random.default_rng(1).normal(size=(32, 3)).astype("float32")
    model.fit(x, x[:, :1], batch_size=8, verbose=0,
              callbacks=[tb_bnstats.BNStatsCallback(tmp_path / "run", layers=["*bn_b"], verbose=0)])
    layers = tb_bnstats.load(tmp_path)["run"].layers
    # Keras' layer path ("net/bn_b") where the model is built before fit (JAX, torch); TensorFlow builds
    # a subclassed model inside the first step, after the callback named its layers ("bn_b").
    (name,) = layers
    assert name == ("bn_b" if BACKEND == "tensorflow" else "net/bn_b")
    assert list(layers[name].steps) == [1, 2, 3, 4]


@pytest.mark.parametrize("kwargs, message", [
    (dict(log_dir=""), "log_dir"),
    (dict(log_dir=3), "log_dir"),
    (dict(log_dir="x", log_every_n_steps=0), "log_every_n_steps"),
    (dict(log_dir="x", log_every_n_steps=1.5), "log_every_n_steps"),
    (dict(log_dir="x", snapshot_every_n_steps=-1), "snapshot_every_n_steps"),
    (dict(log_dir="x", layers="bn1"), "layers"),
    (dict(log_dir="x", flush_secs=0), "flush_secs"),
    (dict(log_dir="x", verbose=2), "verbose"),
])
def test_invalid_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tb_bnstats.BNStatsCallback(**kwargs)


def test_model_without_bn_says_so(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    with pytest.warns(RuntimeWarning, match="no BatchNormalization"):
        model.fit(np.zeros((4, 2)), np.zeros((4, 1)), verbose=0,
                  callbacks=[tb_bnstats.BNStatsCallback(tmp_path / "run", verbose=0)])


def test_unwritable_log_dir_warns_and_training_continues(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    x, y = data(n=32)
    model = conv_net()
    with pytest.warns(RuntimeWarning, match="training continues"):
        history = model.fit(x, y, batch_size=BATCH, verbose=0,
                            callbacks=[tb_bnstats.BNStatsCallback(blocker / "run", verbose=0)])
    assert len(history.history["loss"]) == 1


def test_failure_while_logging_warns_once_and_training_continues(tmp_path, monkeypatch):
    x, y = data()
    model = conv_net()
    cb = tb_bnstats.BNStatsCallback(tmp_path / "run", verbose=0)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[cb, _BreakWriter(cb, broken)])
    ours = [w for w in caught if "tb_bnstats" in str(w.message)]
    assert len(ours) == 1  # one warning for the place that fails, not one per step
    assert "disk full" in str(ours[0].message)
    assert int(model.optimizer.iterations.numpy()) == 8


class _BreakWriter(keras.callbacks.Callback):
    def __init__(self, target, broken):
        super().__init__()
        self.target, self.broken = target, broken

    def on_train_begin(self, logs=None):
        self.target._recorder.writer.layer_block = self.broken  # every write of the recorder goes through it


def test_an_unsupported_backend_fails_at_construction_not_in_fit(monkeypatch, tmp_path):
    """A backend without a capture (Keras' numpy backend, which cannot train,
    or openvino) is refused when the callback is made, with the reason,
    before fit starts: here the backend's name as Keras reports it is
    swapped."""
    monkeypatch.setattr(keras.backend, "backend", lambda: "openvino")
    with pytest.raises(ValueError, match="KERAS_BACKEND='openvino'"):
        tb_bnstats.BNStatsCallback(str(tmp_path))
    with pytest.raises(ValueError, match="KERAS_BACKEND='openvino'"):
        tb_bnstats.population_stats(conv_net(), data(8)[0])
    assert not os.listdir(tmp_path)  # nothing written


def test_steps_overwritten_on_the_device_before_a_drain_are_counted(monkeypatch):
    """A ring of 4 steps drained only after 8: the last 4 are read, and the
    4 before them are reported lost (the recorder warns with that count)."""
    from tb_bnstats.capture import rows as ring_rows
    from tb_bnstats.frameworks.keras.capture import capture_for

    monkeypatch.setattr(ring_rows, "RING_MAX_STEPS", 4)
    x, y = data(n=8 * BATCH)
    model = conv_net()
    capture = capture_for(model)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # no callback: nothing drains
    (block,) = capture.drain()
    assert capture.drain_every == 4 and list(block.steps) == [5, 6, 7, 8] and block.lost == 4
    assert list(block.layers["bn1"].updates) == [5, 6, 7, 8]
    assert capture.drain() == []


@no_steps_per_execution
def test_a_larger_steps_per_execution_gets_a_larger_ring(tmp_path, monkeypatch):
    """K is never below steps_per_execution, also when it grows between fits
    (a ring of at most 3 rows here, then executions of 8 steps)."""
    from tb_bnstats.capture import rows as ring_rows

    monkeypatch.setattr(ring_rows, "RING_MAX_STEPS", 3)
    x, y = data(n=8 * BATCH)
    model = conv_net()
    cb = tb_bnstats.BNStatsCallback(tmp_path / "run", flush_secs=60, verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[cb])
    model.compile(model.optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), steps_per_execution=8)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[cb])
    assert max(r.steps for r in cb._recorder.capture._hook.rings.values()) == 8  # a ring of 8 for executions of 8
    # TensorFlow keeps the first ring's variable (3 rows); JAX lets a ring no longer written go once read.
    assert cb._recorder.capture.drain_every == (3 if BACKEND == "tensorflow" else 8)
    layer = tb_bnstats.load(tmp_path)["run"].layers["bn1"]
    np.testing.assert_array_equal(layer.steps, np.arange(1, 17))
    np.testing.assert_array_equal(layer.series["updates"], np.arange(1, 17))


def test_a_train_step_that_advances_the_optimizer_twice_loses_no_step(tmp_path, monkeypatch):
    """The ring is sized and drained in training steps; the step axis is the
    optimizer's count, here 2 per training step (two optimizer updates)."""
    from tb_bnstats.capture import rows as ring_rows

    monkeypatch.setattr(ring_rows, "RING_MAX_STEPS", 4)
    x, y = data(n=12 * BATCH)
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3)(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    out = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h))

    class TwoUpdates(keras.Model):
        if BACKEND == "jax":  # a pure function of the state
            def train_step(self, state, data):
                logs, (trainable, non_trainable, optimizer, metrics) = super().train_step(state, data)
                i = [v is self.optimizer.iterations for v in self.optimizer.variables].index(True)
                optimizer = list(optimizer)
                optimizer[i] = optimizer[i] + 1  # as a second optimizer.apply would
                return logs, (trainable, non_trainable, optimizer, metrics)
        else:
            def train_step(self, data):
                logs = super().train_step(data)
                self.optimizer.iterations.assign_add(1)  # as a second optimizer.apply would
                return logs

    model = TwoUpdates(inp, out)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb = tb_bnstats.BNStatsCallback(tmp_path / "run", flush_secs=60, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x[:, :8, :8], y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[cb])
    assert not [w for w in caught if "overwritten" in str(w.message)]
    layer = tb_bnstats.load(tmp_path)["run"].layers["bn"]
    np.testing.assert_array_equal(layer.steps, np.arange(2, 25, 2))
    np.testing.assert_array_equal(layer.series["updates"], np.arange(1, 13))


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution is Keras' multi-device API of JAX")
def test_keras_distribution_on_jax_over_one_device_is_captured_and_trains_as_without(tmp_path):
    """Under keras.distribution Keras jits the step with an output sharding
    per state array: the ring gets its own (replicated), and a DataParallel
    over the one CPU device here trains as without the callback, its steps
    logged as one replica's (several devices: tests/test_replicas_keras.py)."""
    import jax

    x, y = data()
    losses = []
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    try:
        for callbacks in ([], [tb_bnstats.BNStatsCallback(tmp_path / "run", verbose=0, probe_data=False)]):
            keras.utils.set_random_seed(0)
            history = conv_net().fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
            losses.append(history.history["loss"])
    finally:
        keras.distribution.set_distribution(None)
    assert losses[0] == losses[1]
    (run,) = tb_bnstats.load(tmp_path).values()
    assert run.layers and all(len(layer.steps) == 4 and layer.info.replicas == 1 for layer in run.layers.values())
