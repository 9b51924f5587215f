"""tb_bnstats.summary from a custom tf.GradientTape loop with a hand-written
batch norm on tf.nn.batch_normalization, read back with tb_bnstats.load."""

import os
import subprocess
import sys
import textwrap

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
            expected.append((hb.mean(0), hb.var(0), moving_mean.numpy().astype(np.float64),
                             moving_var.numpy().astype(np.float64)))
    layer = tb_bnstats.load(tmp_path)["custom"].layers["dense_bn"]
    assert layer.info.framework == "custom" and layer.info.momentum == pytest.approx(momentum)
    np.testing.assert_array_equal(layer.steps, np.arange(1, 6))
    for i, (bm, bv, mm, mv) in enumerate(expected):
        np.testing.assert_allclose(layer.snapshots["batch_mean"][i], bm, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.snapshots["batch_var"][i], bv, rtol=1e-5)
        np.testing.assert_allclose(layer.snapshots["moving_mean"][i], mm, rtol=1e-6)
        t = i + 1
        np.testing.assert_allclose(layer.snapshots["debiased_var"][i], (mv - momentum**t) / (1 - momentum**t),
                                   rtol=1e-5)
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


def test_event_file_records_are_what_tensorflow_frames(tmp_path):
    """The writer frames records itself (google-crc32c): each record must be
    byte for byte what TensorFlow's own TFRecordWriter makes of the same
    event, and the refilled templates what protobuf serializes."""
    import tensorflow as tf
    from tensorboard.compat.proto import event_pb2

    with summary.Writer(tmp_path / "run") as writer:
        for step in range(1, 4):
            writer.layer_moments("bn", step, batch_mean=[step, 0.0], batch_var=[1.0, 2.0], moving_mean=[0.5, 0.0],
                                 moving_var=[1.0, 1.0], updates=step, momentum=0.9, epsilon=1e-3, snapshot=True)
            writer.metrics("val", {"loss": step / 2}, step)
        path = writer.path
    ours = list(tf.data.TFRecordDataset(path).as_numpy_iterator())  # TensorFlow checks every CRC
    again = tmp_path / "again.tfrecord"
    with tf.io.TFRecordWriter(str(again)) as tf_writer:
        for record in ours:
            tf_writer.write(record)
    assert again.read_bytes() == open(path, "rb").read()
    events = [event_pb2.Event.FromString(r) for r in ours]
    series = [e for e in events if e.summary.value and e.summary.value[0].tag == "metric/val/loss"]
    assert [e.step for e in series] == [1, 2, 3]
    assert not series[1].summary.value[0].HasField("metadata")  # a refilled template...
    assert series[1].SerializeToString() == ours[events.index(series[1])]  # ...is protobuf's own bytes
    assert series[2].summary.value[0].tensor.float_val[0] == pytest.approx(1.5)
    # The layer's three steps: one record of its log, written as the writer closed, read back by TensorFlow.
    logged = [e for e in events if e.summary.value and e.summary.value[0].tag.startswith("bn/bn/steps/")]
    assert [e.step for e in logged] == [3]
    rows = tf.make_ndarray(logged[0].summary.value[0].tensor)
    assert rows.shape[0] == 1 + 3 and list(3 - rows[1:, 0]) == [1, 2, 3]


def test_writing_needs_no_tensorflow(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from tb_bnstats import Writer
        with Writer({str(tmp_path / "run")!r}) as w:
            w.layer_moments("bn", 1, batch_mean=[0.0], batch_var=[1.0], moving_mean=[0.0], moving_var=[1.0],
                            updates=1, momentum=0.9, epsilon=1e-3, snapshot=True)
            w.metrics("train", {{"loss": 1.0}}, 1)
        print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
    run = tb_bnstats.load(tmp_path)["run"]
    assert list(run.layers["bn"].steps) == [1] and list(run.metrics["train/loss"][1]) == [1.0]




def test_any_int64_step_is_written(tmp_path):
    with summary.Writer(tmp_path / "run") as writer:
        for step in (-3, 0, 2**40):
            writer.metrics("train", {"loss": float(step)}, step)
    steps, values = tb_bnstats.load(tmp_path)["run"].metrics["train/loss"]
    assert sorted(steps.tolist()) == [-3, 0, 2**40]
