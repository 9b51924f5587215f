"""TensorFlow 1-style graph code (``tf.compat.v1``): the reported cases
rebuilt on TensorFlow 2.21, logged with :mod:`tb_bnstats.compat.v1`, and
the findings the diagnosis makes of them; the logged moments against numpy
moments of the layers' real inputs."""

import numpy as np
import pytest
import tensorflow as tf

import tb_bnstats
from graph_nets import batches, conv_net, digit_images, dropout_regression_net, hand_written_net
from scenarios_common import digits
from tb_bnstats.compat.v1 import BNStatsFetches, BNStatsHook

v1 = tf.compat.v1


def train(net, log_dir, steps, batch=32, data=None, monitor_kwargs=None, hand_written=False, close_feed=False,
          is_training=True, logged_step=lambda step: step):
    """Trains ``net`` with a plain ``sess.run`` loop and the monitor (the
    train calls fed ``is_training``, call n logged as ``logged_step(n)``);
    returns (monitor, {mode: accuracy}) on the data."""
    x, y = data if data is not None else digit_images()
    with net.graph.as_default(), v1.Session(graph=net.graph) as sess:
        monitor = BNStatsFetches(log_dir, net.train_op, metrics={"loss": net.loss}, verbose=0,
                                 **(monitor_kwargs or {}))
        if hand_written:
            monitor.add_layer("my_bn", momentum=net.hand_decay, **net.hand)
        sess.run(v1.global_variables_initializer())
        for step, (xb, yb) in enumerate(batches(x, y, batch, steps), start=1):
            _, got = sess.run([net.train_op, monitor.fetches], {net.x: xb, net.y: yb, net.is_training: is_training})
            monitor.log(got, logged_step(step))
        accuracy = {}
        if net.accuracy is not None:
            for mode in (True, False):
                accuracy[mode] = sess.run(net.accuracy, {net.x: x[:512], net.y: y[:512], net.is_training: mode})
        monitor.close(session=sess, feed_dict={net.x: x[:512]} if close_feed else None)
    return monitor, accuracy


def codes(findings):
    return {f.code for f in findings if f.severity in ("error", "warning")}


def test_momentum_099_for_100_steps_is_bn001_and_inference_accuracy_is_far_below_training(tmp_path):
    x, y = digit_images()
    # Digits on a bright background (pixels + 30): BN inputs whose mean is many stds from the initial 0.
    monitor, accuracy = train(conv_net(momentum=0.99, lr=3e-3), tmp_path / "run", steps=100, data=(x + 30.0, y))
    assert accuracy[True] - accuracy[False] > 0.4, accuracy  # the symptom: training mode far above inference
    assert codes(monitor.findings) == {"BN001"}, [str(f) for f in monitor.findings]
    bn001 = next(f for f in monitor.findings if f.code == "BN001")
    assert set(bn001.layers) == {"block1/batch_normalization", "block2/batch_normalization"}
    assert "63% converged after 100 updates at momentum 0.99" in bn001.message
    run = tb_bnstats.load(tmp_path)["run"]
    layer = run.layers["block1/batch_normalization"]
    assert layer.info.framework == "tf.compat.v1" and layer.info.momentum == pytest.approx(0.99)
    np.testing.assert_array_equal(layer.series["updates"], np.arange(1, 101))
    np.testing.assert_allclose(layer.series["convergence"], 1 - 0.99 ** np.arange(1, 101), rtol=1e-6)
    steps, losses = run.metrics["train/loss"]
    assert list(steps) == list(range(1, 101)) and np.all(np.isfinite(losses))


def test_update_ops_left_out_of_the_train_op_is_bn002_with_the_tf1_fix(tmp_path):
    monitor, _ = train(conv_net(momentum=0.9, update_ops=False), tmp_path / "run", steps=30)
    assert codes(monitor.findings) == {"BN002"}, [str(f) for f in monitor.findings]
    bn002 = next(f for f in monitor.findings if f.code == "BN002")
    assert set(bn002.layers) == {"block1/batch_normalization", "block2/batch_normalization"}
    assert "update ops" in bn002.message
    assert "tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS))" in bn002.message
    layer = tb_bnstats.load(tmp_path)["run"].layers["block1/batch_normalization"]
    assert layer.info.update_ops_left_out
    np.testing.assert_array_equal(layer.series["updates"], 0)
    np.testing.assert_allclose(layer.snapshots["moving_mean"][-1], 0.0)  # never updated: still the initial zeros


def test_is_training_fed_false_in_the_train_calls_is_bn002_telling_to_feed_true(tmp_path):
    monitor, _ = train(conv_net(momentum=0.9), tmp_path / "run", steps=20, is_training=False)
    bn002 = [f for f in monitor.findings if f.code == "BN002"]
    assert bn002 and "is_training" in bn002[0].message and "feed is_training=True" in bn002[0].message
    assert "UPDATE_OPS" not in bn002[0].message


def test_a_restore_of_the_trainable_variables_only_is_bn008(tmp_path):
    """The TF1 classic: Saver(tf.trainable_variables()) leaves the moving
    statistics out of the checkpoint; training resumes at step 40 with them
    at their initial values."""
    x, y = digit_images()
    net = conv_net(momentum=0.9)
    with net.graph.as_default(), v1.Session(graph=net.graph) as sess:
        sess.run(v1.global_variables_initializer())
        for xb, yb in batches(x, y, 32, 40):
            sess.run(net.train_op, {net.x: xb, net.y: yb, net.is_training: True})
        saver = v1.train.Saver(v1.trainable_variables())
        path = saver.save(sess, str(tmp_path / "ckpt" / "model"))
    with net.graph.as_default(), v1.Session(graph=net.graph) as sess:
        sess.run(v1.global_variables_initializer())
        saver.restore(sess, path)
        monitor = BNStatsFetches(tmp_path / "run", net.train_op, verbose=0)
        for step, (xb, yb) in enumerate(batches(x, y, 32, 30, seed=1), start=41):
            _, got = sess.run([net.train_op, monitor.fetches], {net.x: xb, net.y: yb, net.is_training: True})
            monitor.log(got, step)
        monitor.close()
    bn008 = [f for f in monitor.findings if f.code == "BN008"]
    assert bn008 and set(bn008[0].layers) == set(net.bn_names), [str(f) for f in monitor.findings]
    assert "resumed at step 40" in bn008[0].message
    assert "tf.compat.v1.train.Saver()" in bn008[0].message  # the fix in the graph's words


def test_hand_written_bn_with_decay_1e5_is_bn003(tmp_path):
    net = hand_written_net(decay=1e-5)
    net.hand_decay = 1e-5
    x, y = digits()
    monitor, _ = train(net, tmp_path / "run", steps=60, data=(x, y), hand_written=True)
    assert "BN003" in codes(monitor.findings), [str(f) for f in monitor.findings]
    assert next(f for f in monitor.findings if f.code == "BN003").layers == ["my_bn"]
    layer = tb_bnstats.load(tmp_path)["run"].layers["my_bn"]
    assert layer.info.layer_class == "hand-written" and layer.info.momentum == pytest.approx(1e-5)
    np.testing.assert_array_equal(layer.series["updates"], np.arange(1, 61))  # its update ops ran
    # decay 1e-5: the moving statistics are the last batch's (read after this call's update), up to
    # 1e-5 of the previous average's distance from it (a few units here).
    np.testing.assert_allclose(layer.snapshots["moving_mean"][-1], layer.snapshots["batch_mean"][-1], rtol=1e-4,
                               atol=1e-4)


def test_dropout_before_bn_is_bn004_on_the_live_graph(tmp_path):
    x, labels = digits()
    y = (labels.astype("float32") - 4.5) / 3.0
    monitor, _ = train(dropout_regression_net(), tmp_path / "run", steps=300, data=(x, y), close_feed=True)
    bn004 = [f for f in monitor.findings if f.code == "BN004"]
    assert bn004 and bn004[0].layers[0] == "batch_normalization", [str(f) for f in monitor.findings]
    assert "wider than at inference" in bn004[0].message
    # Without the live check the training logs cannot show it, and no finding says otherwise.
    again, _ = train(dropout_regression_net(), tmp_path / "logs_only", steps=300, data=(x, y))
    assert "BN004" not in codes(again.findings)


@pytest.mark.parametrize("fused", [None, False])
def test_a_healthy_graph_run_has_no_finding_and_exact_moments(tmp_path, fused):
    net = conv_net(momentum=0.9, fused=fused, lr=3e-3)
    x, y = digit_images()
    with net.graph.as_default(), v1.Session(graph=net.graph) as sess:
        monitor = BNStatsFetches(tmp_path / "run", net.train_op, metrics={"loss": net.loss}, verbose=0,
                                 snapshot_every_n_steps=1)
        probe = [net.graph.get_tensor_by_name(f"block{i}/conv2d/Conv2D:0") for i in (1, 2)]
        sess.run(v1.global_variables_initializer())
        seen = []
        for step, (xb, yb) in enumerate(batches(x, y, 64, 200), start=1):
            _, got, inputs = sess.run([net.train_op, monitor.fetches, probe],
                                      {net.x: xb, net.y: yb, net.is_training: True})
            monitor.log(got, step)
            if step <= 3:
                seen.append(inputs)
        monitor.close()
    assert codes(monitor.findings) == set(), [str(f) for f in monitor.findings]
    run = tb_bnstats.load(tmp_path)["run"]
    for k, name in enumerate(net.bn_names):
        layer = run.layers[name]
        assert layer.info.moving_var_unbiased == (fused is None)  # the fused kernel: Bessel-corrected average
        for i in range(3):
            h = seen[i][k].astype(np.float64)
            n = h.size / h.shape[-1]
            var = h.var(axis=(0, 1, 2)) * (n / (n - 1) if fused is None else 1.0)
            np.testing.assert_allclose(layer.snapshots["batch_mean"][i], h.mean(axis=(0, 1, 2)), rtol=1e-5,
                                       atol=1e-5 * np.abs(h).max())
            np.testing.assert_allclose(layer.snapshots["batch_var"][i], var, rtol=1e-5)
        # The moving statistics after each call: the average of what was logged, step by step.
        mm, bm = layer.snapshots["moving_mean"], layer.snapshots["batch_mean"]
        np.testing.assert_allclose(mm[0], 0.1 * bm[0], rtol=1e-4, atol=1e-6)  # after the first update, from 0
        np.testing.assert_allclose(mm[1], 0.9 * mm[0] + 0.1 * bm[1], rtol=1e-4, atol=1e-6)


def test_monitored_training_session_hook_logs_at_the_global_step(tmp_path):
    net = conv_net(momentum=0.9, update_ops=False)
    x, y = digit_images()
    with net.graph.as_default():
        hook = BNStatsHook(tmp_path / "run", metrics={"loss": net.loss}, verbose=0)
        with v1.train.MonitoredTrainingSession(hooks=[hook], save_checkpoint_steps=None,
                                               save_summaries_steps=None) as sess:
            for i, (xb, yb) in enumerate(batches(x, y, 32, 20)):
                sess.run(net.train_op, {net.x: xb, net.y: yb, net.is_training: True})
                if i % 5 == 4:  # an evaluation through the same session: not a train call, not logged
                    sess.run(net.accuracy, {net.x: x[:256], net.y: y[:256]})
    run = tb_bnstats.load(tmp_path)["run"]
    assert list(run.layers["block1/batch_normalization"].steps) == list(range(1, 21))
    np.testing.assert_array_equal(run.layers["block1/batch_normalization"].series["updates"], 0)
    assert codes(hook.findings) == {"BN002"}


def test_bad_arguments_fail_at_construction(tmp_path):
    net = conv_net()
    with pytest.raises(ValueError, match="train_op"):
        BNStatsFetches(tmp_path / "a", None)
    with pytest.raises(ValueError, match="metrics"):
        BNStatsFetches(tmp_path / "a", net.train_op, metrics={"loss": 3.0})
    monitor = BNStatsFetches(tmp_path / "a", net.train_op)
    with pytest.raises(ValueError, match="momentum"):
        with net.graph.as_default():
            v = v1.get_variable("v", [2])
        monitor.add_layer("bad", v, v, momentum=1.5, inputs=net.x)
    with pytest.raises(ValueError, match="moving_var_unbiased=True needs inputs="):
        monitor.add_layer("bad", v, v, momentum=0.9, batch_mean=net.x, batch_var=net.x, moving_var_unbiased=True)


def _fit_graph(graph, x_ph, is_training, train_op, feeds, log_dir, **monitor_kwargs):
    with graph.as_default(), v1.Session(graph=graph) as sess:
        monitor = BNStatsFetches(log_dir, train_op, verbose=0, snapshot_every_n_steps=1, **monitor_kwargs)
        sess.run(v1.global_variables_initializer())
        for step, xb in enumerate(feeds, start=1):
            _, got = sess.run([train_op, monitor.fetches], {x_ph: xb, is_training: True})
            monitor.log(got, step)
        monitor.close()
    return monitor, tb_bnstats.load(log_dir.parent)[log_dir.name]


@pytest.mark.parametrize("with_updates", [True, False])
def test_keras_layers_called_in_a_graph_are_found_with_their_own_update_ops(tmp_path, with_updates):
    """tf.keras (tf_keras) BN layers in a graph keep their update ops in
    layer.updates, not in UPDATE_OPS."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 8, 8, 1])
        is_training = v1.placeholder_with_default(False, [])
        conv_bn = tf.keras.layers.BatchNormalization(momentum=0.8, name="conv_bn")  # 4-D: fused
        dense_bn = tf.keras.layers.BatchNormalization(momentum=0.8, name="dense_bn")  # 2-D: not fused
        h = tf.nn.relu(conv_bn(tf.keras.layers.Conv2D(4, 3)(x), training=is_training))
        h = dense_bn(tf.keras.layers.Dense(5)(tf.keras.layers.Flatten()(h)), training=is_training)
        loss = tf.reduce_mean(tf.square(h - 1.0))
        updates = conv_bn.updates + dense_bn.updates if with_updates else []
        with tf.control_dependencies(updates):
            train_op = v1.train.GradientDescentOptimizer(0.01).minimize(loss)
    x_data = digit_images()[0][:320] + 3.0
    monitor, run = _fit_graph(graph, x, is_training, train_op, np.split(x_data, 10), tmp_path / "run")
    assert sorted(run.layers) == ["conv_bn", "dense_bn"]
    for name in ("conv_bn", "dense_bn"):
        layer = run.layers[name]
        assert layer.info.momentum == pytest.approx(0.8)
        np.testing.assert_array_equal(layer.series["updates"], np.arange(1, 11) if with_updates else 0)
    assert run.layers["conv_bn"].info.moving_var_unbiased and not run.layers["dense_bn"].info.moving_var_unbiased
    if with_updates:
        mm, bm = run.layers["dense_bn"].snapshots["moving_mean"], run.layers["dense_bn"].snapshots["batch_mean"]
        np.testing.assert_allclose(mm[0], 0.2 * bm[0], rtol=1e-5, atol=1e-6)  # after the first update, from 0
    else:
        assert run.layers["dense_bn"].info.update_ops_left_out


def _fused_variables(channels):
    """A raw fused_batch_norm's scale, offset and moving-average variables."""
    ones, zeros = v1.ones_initializer(), v1.zeros_initializer()
    return (v1.get_variable("scale", [channels], initializer=ones),
            v1.get_variable("offset", [channels], initializer=zeros),
            v1.get_variable("mean_avg", [channels], initializer=zeros, trainable=False),
            v1.get_variable("var_avg", [channels], initializer=ones, trainable=False))


def test_fused_batch_norm_with_its_own_moving_averages_is_found(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 8, 8, 1])
        is_training = v1.placeholder_with_default(True, [])
        h = v1.layers.conv2d(x, 4, 3, use_bias=False)
        with v1.variable_scope("raw"):
            scale, offset, mean_avg, var_avg = _fused_variables(4)
            out, new_mean, new_var = v1.nn.fused_batch_norm(h, scale, offset, mean=mean_avg, variance=var_avg,
                                                            is_training=True, exponential_avg_factor=0.25)
            updates = [v1.assign(mean_avg, new_mean), v1.assign(var_avg, new_var)]
        loss = tf.reduce_mean(tf.square(out - 1.0))
        with tf.control_dependencies(updates):
            train_op = v1.train.GradientDescentOptimizer(0.01).minimize(loss)
    x_data = digit_images()[0][:320]
    monitor, run = _fit_graph(graph, x, is_training, train_op, np.split(x_data, 10), tmp_path / "run")
    assert list(run.layers) == ["raw"]
    layer = run.layers["raw"]
    assert layer.info.momentum == pytest.approx(0.75) and layer.info.moving_var_unbiased
    np.testing.assert_array_equal(layer.series["updates"], np.arange(1, 11))
    mm, bm = layer.snapshots["moving_mean"], layer.snapshots["batch_mean"]
    np.testing.assert_allclose(mm[1], 0.75 * mm[0] + 0.25 * bm[1], rtol=1e-5, atol=1e-6)


def test_a_graph_without_bn_or_a_failing_capture_never_breaks_the_train_call(tmp_path, monkeypatch):
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 64])
        loss = tf.reduce_mean(tf.square(v1.layers.dense(x, 1)))
        train_op = v1.train.GradientDescentOptimizer(0.01).minimize(loss)
    data = digits()[0][:64]
    with graph.as_default(), v1.Session(graph=graph) as sess:
        sess.run(v1.global_variables_initializer())
        monitor = BNStatsFetches(tmp_path / "plain", train_op, metrics={"loss": loss}, verbose=0)
        for step in range(1, 4):
            _, got = sess.run([train_op, monitor.fetches], {x: data})
            monitor.log(got, step)
        monitor.close()
        assert tb_bnstats.load(tmp_path)["plain"].metrics["train/loss"][0].tolist() == [1, 2, 3]
        from tb_bnstats.frameworks.tf1 import graph as graph_capture

        def broken(self, train_fetches, fed=()):
            raise RuntimeError("boom")

        monkeypatch.setattr(graph_capture.GraphCapture, "fetches", broken)
        failing = BNStatsFetches(tmp_path / "failing", train_op, verbose=0)
        with pytest.warns(RuntimeWarning, match="boom"):
            for step in range(1, 4):
                _, got = sess.run([train_op, failing.fetches], {x: data})  # an empty fetch: the call runs
                failing.log(got, step)
        failing.close()


def test_the_old_codes_disable_v2_behavior_graphs_are_captured_too(tmp_path):
    """Ref variables and control flow v1 (Switch/Merge), in a process of its own."""
    import json
    import pathlib
    import subprocess
    import sys

    script = pathlib.Path(__file__).with_name("v1_behavior_run.py")
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])
    with_updates, without = out["with_updates"], out["without"]
    assert sorted(with_updates["layers"]) == ["batch_normalization", "batch_normalization_1"]
    for name, momentum in (("batch_normalization", 0.9), ("batch_normalization_1", 0.8)):
        layer = with_updates["layers"][name]
        assert layer["momentum"] == pytest.approx(momentum)
        assert layer["updates"] == list(range(1, 21))
        np.testing.assert_allclose(layer["first_moving_mean"], (1 - momentum) * np.array(layer["first_batch_mean"]),
                                   rtol=1e-4, atol=1e-6)  # read after the first update, from 0
        assert without["layers"][name]["updates"] == [0] * 20
    assert "BN002" not in with_updates["findings"] and without["findings"] == ["BN002"]


def _two_towers():
    """Two BN towers on their own placeholders, each with its own loss and
    train op (a GAN's or a multi-task graph's shape)."""
    graph = tf.Graph()
    with graph.as_default():
        is_training = v1.placeholder_with_default(False, [])
        towers = {}
        for name in ("a", "b"):
            with v1.variable_scope(name):
                x = v1.placeholder(tf.float32, [None, 64])
                h = v1.layers.batch_normalization(v1.layers.dense(x, 8), momentum=0.9, training=is_training)
                loss = tf.reduce_mean(tf.square(h - 1.0))
                with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS, scope=name)):
                    train_op = v1.train.GradientDescentOptimizer(0.01).minimize(loss)
            towers[name] = (x, loss, train_op)
    return graph, is_training, towers


def test_a_call_is_given_the_fetches_of_the_layers_it_runs_only(tmp_path):
    """Fetching tower b's moments or loss with tower a's train call would need
    b's placeholder: the call would fail. Only a's layer and loss are fetched;
    b's layer is said not run."""
    graph, is_training, towers = _two_towers()
    (xa, loss_a, train_a), (_, loss_b, _) = towers["a"], towers["b"]
    data = digits()[0][:64]
    with graph.as_default(), v1.Session(graph=graph) as sess:
        sess.run(v1.global_variables_initializer())
        monitor = BNStatsFetches(tmp_path / "run", train_a, metrics={"loss_a": loss_a, "loss_b": loss_b}, verbose=0)
        for step in range(1, 6):
            _, got = sess.run([train_a, monitor.fetches], {xa: data, is_training: True})
            monitor.log(got, step)
        monitor.close()
        assert monitor.capture.not_run() == ["b/batch_normalization"]
    run = tb_bnstats.load(tmp_path)["run"]
    assert list(run.layers) == ["a/batch_normalization"]
    np.testing.assert_array_equal(run.layers["a/batch_normalization"].series["updates"], np.arange(1, 6))
    assert sorted(run.metrics) == ["train/loss_a"]


def test_the_hook_without_a_global_step_logs_the_calls_that_run_a_layer(tmp_path):
    graph, is_training, towers = _two_towers()
    (xa, loss_a, train_a) = towers["a"]
    data = digits()[0][:64]
    with graph.as_default():
        probe_var = v1.trainable_variables()[0]
        hook = BNStatsHook(tmp_path / "run", metrics={"loss_a": loss_a}, verbose=0)
        with v1.train.MonitoredSession(hooks=[hook]) as sess:
            for _ in range(4):
                sess.run(train_a, {xa: data, is_training: True})
                sess.run(probe_var)  # runs no BN layer and feeds nothing: not a train call, nothing added
    run = tb_bnstats.load(tmp_path)["run"]
    assert list(run.layers["a/batch_normalization"].steps) == [1, 2, 3, 4]


def test_the_hook_logs_the_global_step_read_after_each_call(tmp_path):
    """A train op that advances the global step by 2 per call: logged at 2, 4, ..."""
    net = conv_net(momentum=0.9)
    x, y = digit_images()
    with net.graph.as_default():
        step = v1.train.get_global_step()
        train_op = tf.group(net.train_op, step.assign_add(1))
        hook = BNStatsHook(tmp_path / "run", verbose=0)
        with v1.train.MonitoredSession(hooks=[hook]) as sess:
            for xb, yb in batches(x, y, 32, 5):
                sess.run(train_op, {net.x: xb, net.y: yb, net.is_training: True})
    assert list(tb_bnstats.load(tmp_path)["run"].layers["block1/batch_normalization"].steps) == [2, 4, 6, 8, 10]


@pytest.mark.parametrize("fused", [None, False])
def test_channels_first_with_as_many_channels_as_columns(tmp_path, fused):
    """NCHW input [N, 4, 6, 4]: channels on axis 1, and the last axis has as many
    values; the moments are per channel of axis 1 (the kernel's data_format,
    or the axes the non-fused moments reduce)."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 4, 6, 4])
        is_training = v1.placeholder_with_default(False, [])
        h = v1.layers.batch_normalization(x, axis=1, momentum=0.9, training=is_training, fused=fused)
        with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
            train_op = v1.train.GradientDescentOptimizer(0.01).minimize(tf.reduce_mean(tf.square(h - 1.0)))
    rng = np.random.default_rng(0)
    feeds = [(rng.normal(size=(16, 4, 6, 4)) * np.arange(1, 5)[None, :, None, None] + np.arange(4)[None, :, None, None])
             .astype("float32") for _ in range(3)]
    _, run = _fit_graph(graph, x, is_training, train_op, feeds, tmp_path / "run")
    layer = run.layers["batch_normalization"]
    for i, xb in enumerate(feeds):
        xb = xb.astype(np.float64)
        n = xb.size / 4
        var = xb.var(axis=(0, 2, 3)) * (n / (n - 1) if layer.info.moving_var_unbiased else 1.0)
        np.testing.assert_allclose(layer.snapshots["batch_mean"][i], xb.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.snapshots["batch_var"][i], var, rtol=1e-5)


def test_a_repeated_step_stands_and_one_that_goes_back_is_counted_on_with_a_warning(tmp_path, recwarn):
    """The step rule of every step-loop monitor (tb_bnstats.loop.StepLoopMonitor, the PyTorch monitor's too):
    a step given again is the same optimizer step (the last call's moments stand); a smaller one warns and
    counts on."""
    train(conv_net(momentum=0.9), tmp_path / "same", steps=3, logged_step=lambda step: 1)
    assert not [w for w in recwarn if "smaller than the last one" in str(w.message)]
    assert list(tb_bnstats.load(tmp_path)["same"].layers["block1/batch_normalization"].steps) == [1]
    with pytest.warns(RuntimeWarning, match="never smaller than the last one"):
        train(conv_net(momentum=0.9), tmp_path / "back", steps=3, logged_step=lambda step: 4 - step)
    assert list(tb_bnstats.load(tmp_path)["back"].layers["block1/batch_normalization"].steps) == [3, 4, 5]


def test_a_fused_op_named_by_hand_is_logged_without_a_warning(tmp_path, recwarn):
    """fused_batch_norm without its own averages cannot be found; named with
    add_layer it is logged, and the "not logged" warning is not given."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 8, 8, 1])
        h = v1.layers.conv2d(x, 4, 3, use_bias=False)
        with v1.variable_scope("raw"):
            scale, offset, mean_avg, var_avg = _fused_variables(4)
            out, batch_mean, batch_var = v1.nn.fused_batch_norm(h, scale, offset, is_training=True)
            updates = [v1.assign(mean_avg, 0.9 * mean_avg + 0.1 * batch_mean),
                       v1.assign(var_avg, 0.9 * var_avg + 0.1 * batch_var)]
        with tf.control_dependencies(updates):
            train_op = v1.train.GradientDescentOptimizer(0.01).minimize(tf.reduce_mean(tf.square(out - 1.0)))
    with graph.as_default(), v1.Session(graph=graph) as sess:
        monitor = BNStatsFetches(tmp_path / "run", train_op, verbose=0)
        monitor.add_layer("raw", mean_avg, var_avg, momentum=0.9, inputs=h, update_ops=updates,
                          moving_var_unbiased=True)
        sess.run(v1.global_variables_initializer())
        for step, xb in enumerate(np.split(digit_images()[0][:96], 3), start=1):
            _, got = sess.run([train_op, monitor.fetches], {x: xb})
            monitor.log(got, step)
        monitor.close()
    assert not [w for w in recwarn if "not logged" in str(w.message)], [str(w.message) for w in recwarn]
    np.testing.assert_array_equal(tb_bnstats.load(tmp_path)["run"].layers["raw"].series["updates"], [1, 2, 3])


def test_a_layer_first_run_by_a_later_call_is_logged_from_then_on(tmp_path):
    """Tower a trains first, tower b later (drained at every call): b's layer
    is described when it first runs, and its metric, fed only then, is logged
    from then on."""
    graph, is_training, towers = _two_towers()
    (xa, loss_a, train_a), (xb, loss_b, train_b) = towers["a"], towers["b"]
    data = digits()[0][:64]
    with graph.as_default():
        hook = BNStatsHook(tmp_path / "run", metrics={"loss_a": loss_a, "loss_b": loss_b}, verbose=0,
                           flush_secs=1e-3)
        with v1.train.MonitoredSession(hooks=[hook]) as sess:
            for _ in range(3):
                sess.run(train_a, {xa: data, is_training: True})
            for _ in range(3):
                sess.run(train_b, {xb: data, is_training: True})
    run = tb_bnstats.load(tmp_path)["run"]
    assert list(run.layers["a/batch_normalization"].steps) == [1, 2, 3]
    assert list(run.layers["b/batch_normalization"].steps) == [4, 5, 6]
    np.testing.assert_array_equal(run.layers["b/batch_normalization"].series["updates"], [1, 2, 3])
    assert list(run.metrics["train/loss_a"][0]) == [1, 2, 3] and list(run.metrics["train/loss_b"][0]) == [4, 5, 6]


def test_a_virtual_batch_layer_in_a_graph_is_logged_per_channel(tmp_path):
    """virtual_batch_size reshapes the input before its moments: the channel
    axis is still the input's last (not the axis the reshaped moments keep)."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 6, 5, 3])
        is_training = v1.placeholder_with_default(False, [])
        h = v1.layers.batch_normalization(x, momentum=0.9, training=is_training, virtual_batch_size=4)
        with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
            train_op = v1.train.GradientDescentOptimizer(0.01).minimize(tf.reduce_mean(tf.square(h - 1.0)))
    rng = np.random.default_rng(0)
    feeds = [(rng.normal(size=(16, 6, 5, 3)) + np.arange(3)).astype("float32") for _ in range(2)]
    _, run = _fit_graph(graph, x, is_training, train_op, feeds, tmp_path / "run")
    layer = run.layers["batch_normalization"]
    for i, xb in enumerate(feeds):
        np.testing.assert_allclose(layer.snapshots["batch_mean"][i], xb.astype(np.float64).mean(axis=(0, 1, 2)),
                                   rtol=1e-5, atol=1e-5)
