"""The reported cases rebuilt in TensorFlow 1-style graph code: a conv net on
digits with ``tf.compat.v1.layers.batch_normalization`` and an
``is_training`` placeholder, a hand-written BN from ``tf.nn.moments``, a
dense regression net with dropout before BN. Each builds its own
``tf.Graph`` (nothing is disabled process-wide)."""

import dataclasses

import numpy as np
import tensorflow as tf

from scenarios_common import digits

v1 = tf.compat.v1


@dataclasses.dataclass
class Net:
    graph: tf.Graph
    x: object
    y: object
    is_training: object
    loss: object
    train_op: object
    accuracy: object = None
    bn_names: tuple = ()


def digit_images():
    x, y = digits()
    return x.reshape(-1, 8, 8, 1), y


def conv_net(momentum=0.99, update_ops=True, fused=None, seed=0, lr=0.01):
    """conv(8) -> BN -> relu -> conv(16) -> BN -> relu -> dense(10), Adam;
    the update ops made control dependencies of the train op (the documented
    way) or left out (the bug)."""
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(seed)
        x = v1.placeholder(tf.float32, [None, 8, 8, 1], name="x")
        y = v1.placeholder(tf.int64, [None], name="y")
        is_training = v1.placeholder_with_default(False, [], name="is_training")
        h = x
        for i, width in enumerate((8, 16)):
            with v1.variable_scope(f"block{i + 1}"):
                h = v1.layers.conv2d(h, width, 3, padding="same", use_bias=False)
                h = v1.layers.batch_normalization(h, momentum=momentum, training=is_training, fused=fused)
                h = tf.nn.relu(h)
        logits = v1.layers.dense(v1.layers.flatten(h), 10)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), y), tf.float32))
        optimizer = v1.train.AdamOptimizer(lr)
        global_step = v1.train.get_or_create_global_step()
        if update_ops:
            with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
                train_op = optimizer.minimize(loss, global_step=global_step)
        else:
            train_op = optimizer.minimize(loss, global_step=global_step)
    return Net(graph, x, y, is_training, loss, train_op, accuracy,
               ("block1/batch_normalization", "block2/batch_normalization"))


def hand_written_net(decay, seed=0):
    """A dense net whose BN is written by hand: ``tf.nn.moments``, an
    assign-based moving average with ``decay``, ``tf.nn.batch_normalization``
    with the batch's moments when training and the moving ones otherwise."""
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(seed)
        x = v1.placeholder(tf.float32, [None, 64], name="x")
        y = v1.placeholder(tf.int64, [None], name="y")
        is_training = v1.placeholder_with_default(False, [], name="is_training")
        h = v1.layers.dense(x, 32, use_bias=False)
        with v1.variable_scope("my_bn"):
            moving_mean = v1.get_variable("mean_ema", [32], initializer=v1.zeros_initializer(), trainable=False)
            moving_var = v1.get_variable("var_ema", [32], initializer=v1.ones_initializer(), trainable=False)
            beta = v1.get_variable("beta", [32], initializer=v1.zeros_initializer())
            gamma = v1.get_variable("gamma", [32], initializer=v1.ones_initializer())
            mean, var = tf.nn.moments(h, [0])
            update = [v1.assign(moving_mean, decay * moving_mean + (1 - decay) * mean),
                      v1.assign(moving_var, decay * moving_var + (1 - decay) * var)]
            use_mean, use_var = tf.cond(is_training, lambda: (mean, var), lambda: (moving_mean.read_value(),
                                                                                   moving_var.read_value()))
            normed = tf.nn.batch_normalization(h, use_mean, use_var, beta, gamma, 1e-3)
        logits = v1.layers.dense(tf.nn.relu(normed), 10)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        with tf.control_dependencies(update):
            train_op = v1.train.AdamOptimizer(0.01).minimize(loss)
    net = Net(graph, x, y, is_training, loss, train_op, bn_names=("my_bn",))
    net.hand = dict(moving_mean=moving_mean, moving_var=moving_var, batch_mean=mean, batch_var=var,
                    update_ops=update, training=is_training)
    return net


def dropout_regression_net(seed=0):
    """dense -> dropout(0.5) -> BN -> dense -> BN -> linear output, mean
    squared error: the dropout widens the BN input in training only."""
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(seed)
        x = v1.placeholder(tf.float32, [None, 64], name="x")
        y = v1.placeholder(tf.float32, [None], name="y")
        is_training = v1.placeholder_with_default(False, [], name="is_training")
        h = v1.layers.dense(x, 64, activation=tf.nn.relu)
        h = v1.layers.dropout(h, rate=0.5, training=is_training)
        h = v1.layers.batch_normalization(h, momentum=0.9, training=is_training)
        h = v1.layers.dense(h, 32, activation=tf.nn.relu)
        h = v1.layers.batch_normalization(h, momentum=0.9, training=is_training)
        out = tf.squeeze(v1.layers.dense(h, 1), 1)
        loss = tf.reduce_mean(tf.square(out - y))
        with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
            train_op = v1.train.AdamOptimizer(3e-3).minimize(loss)
    return Net(graph, x, y, is_training, loss, train_op,
               bn_names=("batch_normalization", "batch_normalization_1"))


def batches(x, y, batch, steps, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(len(x), batch, replace=False)
        yield x[idx], y[idx]
