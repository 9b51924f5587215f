"""tb_bnstats.summary from a custom tf.GradientTape loop with a hand-written
batch norm on tf.nn.batch_normalization, read back with tb_bnstats.load."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tb_bnstats  # noqa: E402
from tb_bnstats.write import summary  # noqa: E402


def test_custom_loop_hand_written_bn(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (80, 5)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    w = tf.Variable(rng.normal(size=(5, 4)).astype("float32"))
    head = tf.Variable(rng.normal(size=(4, 1)).astype("float32"))
    moving_mean, moving_var = tf.Variable(tf.zeros([4])), tf.Variable(tf.ones([4]))
    momentum, eps = 0.8, 1e-3
    opt = tf.keras.optimizers.SGD(0.01)
    expected = []
    with summary.Writer(tmp_path / "custom") as writer:
        for step in range(1, 6):
            xb, yb = x[(step - 1) * 16:step * 16], y[(step - 1) * 16:step * 16]
            with tf.GradientTape() as tape:
                h = xb @ w
                mean, var = tf.nn.moments(h, axes=[0])
                out = tf.nn.batch_normalization(h, mean, var, None, None, eps) @ head
                loss = tf.reduce_mean((out - yb) ** 2)
            opt.apply_gradients(zip(tape.gradient(loss, [w, head]), [w, head]))
            moving_mean.assign(momentum * moving_mean + (1 - momentum) * mean)
            moving_var.assign(momentum * moving_var + (1 - momentum) * var)
            writer.layer_moments("dense_bn", step, batch_mean=mean.numpy(), batch_var=var.numpy(),
                                 moving_mean=moving_mean.numpy(), moving_var=moving_var.numpy(),
                                 updates=step, momentum=momentum, epsilon=eps, snapshot=True)
            writer.metrics("train", {"loss": float(loss)}, step)
            hb = h.numpy().astype(np.float64)
            expected.append((hb.mean(0), hb.var(0), moving_mean.numpy().astype(np.float64), moving_var.numpy().astype(np.float64)))
    layer = tb_bnstats.load(tmp_path)["custom"].layers["dense_bn"]
    assert layer.info.framework == "custom" and layer.info.momentum == pytest.approx(momentum)
    np.testing.assert_array_equal(layer.steps, np.arange(1, 6))
    for i, (bm, bv, mm, mv) in enumerate(expected):
        np.testing.assert_allclose(layer.snapshots["batch_mean"][i], bm, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.snapshots["batch_var"][i], bv, rtol=1e-5)
        np.testing.assert_allclose(layer.snapshots["moving_mean"][i], mm, rtol=1e-6)
        t = i + 1
        np.testing.assert_allclose(layer.snapshots["debiased_var"][i], (mv - momentum**t) / (1 - momentum**t), rtol=1e-5)
    np.testing.assert_allclose(layer.series["convergence"], 1 - momentum ** np.arange(1, 6), rtol=1e-6)
    assert len(tb_bnstats.load(tmp_path)["custom"].metrics["train/loss"][0]) == 5


def test_writer_rejects_bad_input(tmp_path):
    with summary.Writer(tmp_path / "r") as writer:
        with pytest.raises(ValueError, match="channels"):
            writer.layer_moments("bn", 1, batch_mean=[0.0, 1.0], batch_var=[1.0], moving_mean=[0.0, 0.0],
                                 moving_var=[1.0, 1.0], updates=1, momentum=0.9, epsilon=1e-3)
        with pytest.raises(ValueError, match="momentum"):
            writer.layer_moments("bn", 1, batch_mean=[0.0], batch_var=[1.0], moving_mean=[0.0],
                                 moving_var=[1.0], updates=1, momentum=1.5, epsilon=1e-3)
        with pytest.raises(ValueError, match="split"):
            writer.metrics("test", {"loss": 1.0}, 1)


def test_load_unknown_run_names_the_runs(tmp_path):
    with summary.Writer(tmp_path / "a") as writer:
        writer.layer_moments("bn", 1, batch_mean=[0.0], batch_var=[1.0], moving_mean=[0.0], moving_var=[1.0],
                             updates=1, momentum=0.9, epsilon=1e-3)
    with pytest.raises(KeyError, match="'a'"):
        tb_bnstats.load(tmp_path, run="b")


def test_both_event_file_backends_write_what_tensorboard_reads(tmp_path, monkeypatch):
    """With TensorFlow imported the writer uses its C++ TFRecordWriter; without,
    TensorBoard's pure-Python writer. Both must read back the same."""
    from tb_bnstats.write import eventfile

    def write(run):
        with summary.Writer(tmp_path / run) as writer:
            for step in range(1, 4):
                writer.layer_moments("bn", step, batch_mean=[step, 0.0], batch_var=[1.0, 2.0],
                                     moving_mean=[0.5, 0.0], moving_var=[1.0, 1.0], updates=step,
                                     momentum=0.9, epsilon=1e-3, snapshot=True)
            return writer

    fast = write("fast")
    assert isinstance(fast._writer, eventfile.TFRecordEventFile)
    import sys
    monkeypatch.delitem(sys.modules, "tensorflow")
    slow = write("slow")
    assert not isinstance(slow._writer, eventfile.TFRecordEventFile)
    runs = tb_bnstats.load(tmp_path)
    a, b = runs["fast"].layers["bn"], runs["slow"].layers["bn"]
    np.testing.assert_array_equal(a.steps, b.steps)
    for q in a.series:
        np.testing.assert_array_equal(a.series[q], b.series[q])
    np.testing.assert_array_equal(a.snapshots["batch_mean"], b.snapshots["batch_mean"])
