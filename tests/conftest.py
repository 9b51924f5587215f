"""Shared fixtures of the plugin tests: a log directory with

* ``synth`` and ``synth_b``: written with :class:`tb_bnstats.Writer`
  from raw moments kept in :data:`SyntheticRun` (so tests recompute every
  number with numpy, independently of the plugin);
* ``keras`` (optional, ``keras_logdir``): the real ``BNStatsCallback`` on a
  tiny Keras model, with Keras' own ``TensorBoard`` callback writing
  ``keras/train`` and ``keras/validation`` next to it;

and a WSGI client over TensorBoard's own application stack.
"""

import dataclasses
import os

import numpy as np
import pytest

from tb_bnstats.write import summary

SYNTH_STEPS = 120
SNAPSHOT_EVERY = 40
SPIKE_STEP = 77  # conv2 gets a one-step mean spike here


@dataclasses.dataclass
class SyntheticLayer:
    name: str
    channels: int
    momentum: float
    epsilon: float
    depth: int
    steps: list = dataclasses.field(default_factory=list)
    batch_mean: list = dataclasses.field(default_factory=list)
    batch_var: list = dataclasses.field(default_factory=list)
    moving_mean: list = dataclasses.field(default_factory=list)
    moving_var: list = dataclasses.field(default_factory=list)
    snapshot_steps: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class SyntheticRun:
    name: str
    layers: dict
    loss_steps: list
    loss: list
    val_steps: list
    val_loss: list


def write_synthetic(logdir, run, seed, steps=SYNTH_STEPS, layers=(("conv1_bn", 4, 0.9, 1e-3),
                                                                    ("conv2_bn", 6, 0.99, 1e-3),
                                                                    ("dense_bn", 3, 0.99, 1e-5))):
    rng = np.random.default_rng(seed)
    out = SyntheticRun(run, {}, [], [], [], [])
    writer = summary.Writer(os.path.join(logdir, run), flush_secs=60)
    state = {}
    for depth, (name, c, m, eps) in enumerate(layers):
        out.layers[name] = SyntheticLayer(name, c, m, eps, depth)
        state[name] = (np.zeros(c), np.ones(c), rng.normal(2.0, 1.0, c), rng.uniform(0.5, 4.0, c))
    for step in range(1, steps + 1):
        for name, lay in out.layers.items():
            mm, mv, true_mean, true_var = state[name]
            bm = true_mean + rng.normal(0, 0.1, lay.channels)
            bv = true_var * rng.uniform(0.9, 1.1, lay.channels)
            if name == "conv2_bn" and step == SPIKE_STEP:
                bm = bm + 25.0
            mm = mm * lay.momentum + bm * (1 - lay.momentum)
            mv = mv * lay.momentum + bv * (1 - lay.momentum)
            state[name] = (mm, mv, true_mean, true_var)
            snap = step % SNAPSHOT_EVERY == 0
            writer.layer_moments(name, step, batch_mean=bm, batch_var=bv, moving_mean=mm, moving_var=mv,
                                 updates=step, momentum=lay.momentum, epsilon=lay.epsilon, depth=lay.depth,
                                 snapshot=snap)
            lay.steps.append(step)
            lay.batch_mean.append(bm)
            lay.batch_var.append(bv)
            lay.moving_mean.append(mm.copy())
            lay.moving_var.append(mv.copy())
            if snap:
                lay.snapshot_steps.append(step)
        loss = 2.0 * np.exp(-step / 50) + 0.05 * rng.random()
        writer.metrics("train", {"loss": loss}, step)
        out.loss_steps.append(step)
        out.loss.append(loss)
        if step % SNAPSHOT_EVERY == 0:
            writer.metrics("val", {"loss": loss * 1.1}, step)
            out.val_steps.append(step)
            out.val_loss.append(loss * 1.1)
    writer.close()
    return out


def write_many_records(logdir, run="long", steps=1000, every=8):
    """One layer ``bn`` over ``steps`` steps, its log flushed every ``every``
    steps: a record each time, more records per segment tag than
    ``tensorboard --load_fast=false`` keeps of a tensor tag (10), so that
    it serves a sample (the tab's "sampled" banner and its hint)."""
    rng = np.random.default_rng(0)
    with summary.Writer(os.path.join(logdir, run), flush_secs=60) as writer:
        for step in range(1, steps + 1):
            mean = rng.normal(size=4)
            writer.layer_moments("bn", step, batch_mean=mean, batch_var=np.exp(rng.normal(size=4)),
                                 moving_mean=mean * 0.5, moving_var=np.ones(4), updates=step, momentum=0.9,
                                 epsilon=1e-3)
            if step % every == 0:
                writer.flush()


def write_keras_run(logdir, run="keras", epochs=2, steps_per_epoch=4):
    """The real callback on a tiny Keras model (a few steps), with Keras'
    TensorBoard callback writing ``<run>/train`` and ``<run>/validation``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from tb_bnstats import BNStatsCallback

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8),
        keras.layers.BatchNormalization(name="bn_a"),
        keras.layers.ReLU(),
        keras.layers.Dense(4),
        keras.layers.BatchNormalization(name="bn_b", momentum=0.9),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, (16 * steps_per_epoch, 6)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    path = os.path.join(logdir, run)
    model.fit(x, y, batch_size=16, epochs=epochs, validation_split=0.25, verbose=0,
              callbacks=[BNStatsCallback(path, snapshot_every_n_steps=2, verbose=0),
                         keras.callbacks.TensorBoard(path, update_freq="batch", write_graph=False,
                                                     write_steps_per_second=False)])
    return path


@pytest.fixture(scope="session")
def synthetic_logdir(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("bn_logs"))
    runs = {"synth": write_synthetic(logdir, "synth", seed=1),
            "synth_b": write_synthetic(logdir, "synth_b", seed=2, steps=80)}
    return logdir, runs


@pytest.fixture(scope="session")
def keras_logdir(synthetic_logdir):
    """The synthetic logdir plus a run of the real callback (imports TensorFlow)."""
    logdir, runs = synthetic_logdir
    write_keras_run(logdir)
    return logdir, runs


def make_client(logdir, sampling_hints=None, keep_all=True):
    """A werkzeug client over TensorBoard's WSGI app with only this plugin.
    ``keep_all=False`` uses TensorBoard's default sampling (10 points per tag
    of a third-party plugin, as with ``--load_fast=false``)."""
    from tensorboard.backend import application
    from tensorboard.backend.event_processing import data_provider as mdp
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.plugins import base_plugin
    from werkzeug import test as wtest

    from tb_bnstats.plugin import loader

    if keep_all:
        multiplexer = pem.EventMultiplexer(tensor_size_guidance={"bn_stats": 0, "scalars": 0})
    else:  # what `tensorboard --load_fast=false` builds
        from tensorboard.backend.event_processing import data_ingester

        multiplexer = pem.EventMultiplexer(size_guidance=data_ingester.DEFAULT_SIZE_GUIDANCE,
                                           tensor_size_guidance=dict(data_ingester.DEFAULT_TENSOR_SIZE_GUIDANCE))
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    provider = mdp.MultiplexerDataProvider(multiplexer, logdir)
    ctx = base_plugin.TBContext(data_provider=provider, logdir=logdir, sampling_hints=sampling_hints or {})
    plugin = loader.BNStatsLoader().load(ctx)
    app = application.TensorBoardWSGI([plugin], data_provider=provider)
    return wtest.Client(app), plugin


@pytest.fixture(scope="session")
def client(keras_logdir):
    logdir, runs = keras_logdir
    c, _ = make_client(logdir)
    return c
