"""Flax demo runs on scikit-learn's bundled digits (nothing is downloaded):
a small conv net written with ``flax.nnx`` (and one with ``flax.linen``),
trained in an ``nnx.jit`` / ``jax.jit`` step with
``tb_bnstats.flax.BNStatsMonitor``, one TensorBoard run each. Nothing of
TensorFlow, Keras or PyTorch is imported.

    python demo/train_flax.py --logdir demo/logs      # skips runs already written

Runs:
  flax_healthy              nnx.BatchNorm(momentum=0.9): the running statistics catch up in ~30 steps
  flax_momentum_0.99        Flax's default momentum=0.99 on a short run: 95% needs 299 updates (BN001)
  flax_linen_stats_dropped  Linen's TrainState step that never writes batch_stats back (BN002)

Each run logs its validation accuracy (running statistics) at each epoch's end.
"""

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax.training import train_state  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from demo_runs import train_missing  # noqa: E402
from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402
from tb_bnstats.flax import BNStatsMonitor  # noqa: E402

WIDTHS = (16, 32, 32)


class ConvNet(nnx.Module):
    """Three conv-BN-ReLU blocks (``blocks.0.bn`` .. ``blocks.2.bn``), pooled, a dense BN (``dense_bn``)."""

    def __init__(self, momentum, rngs):
        self.blocks = nnx.List()
        cin = 1
        for width in WIDTHS:
            block = nnx.Dict(conv=nnx.Conv(cin, width, (3, 3), use_bias=False, rngs=rngs),
                             bn=nnx.BatchNorm(width, momentum=momentum, rngs=rngs))
            self.blocks.append(block)
            cin = width
        self.dense = nnx.Linear(cin, 32, use_bias=False, rngs=rngs)
        self.dense_bn = nnx.BatchNorm(32, momentum=momentum, rngs=rngs)
        self.out = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        for block in self.blocks:
            x = jax.nn.relu(block["bn"](block["conv"](x)))
        return self.out(jax.nn.relu(self.dense_bn(self.dense(x.mean((1, 2))))))


class LinenConvNet(nn.Module):
    """The same net in Linen (``BatchNorm_0`` .. ``BatchNorm_3``)."""

    momentum: float = 0.9

    @nn.compact
    def __call__(self, x, train):
        for width in WIDTHS:
            x = nn.Conv(width, (3, 3), use_bias=False)(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x))
        x = nn.Dense(32, use_bias=False)(x.mean((1, 2)))
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x))
        return nn.Dense(10)(x)


RUNS = {"flax_healthy": dict(momentum=0.9), "flax_momentum_0.99": dict(momentum=0.99),
        "flax_linen_stats_dropped": dict(momentum=0.9, linen=True)}


def digits():
    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None] * 4.0 + 1.0  # NHWC, far from the init 0 / 1
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], data.target[order].astype(np.int32)
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def batches(x, y, epoch, size=32):
    order = np.random.default_rng(epoch).permutation(len(x))
    for start in range(0, len(x) - size + 1, size):
        idx = order[start:start + size]
        yield x[idx], y[idx]


def loss_of(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
def nnx_train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: loss_of(m(x), y))(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def nnx_accuracy(model, x, y):
    return (model(x).argmax(-1) == y).mean()


class TrainState(train_state.TrainState):
    batch_stats: dict


@jax.jit
def linen_train_step(state, x, y):
    """Flax's standard TrainState step, but the updated batch_stats are never stored (the bug)."""

    def loss_fn(params):
        logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x, train=True,
                                         mutable=["batch_stats", "bn_stats"])  # tb_bnstats: "bn_stats" added
        return loss_of(logits, y), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads)  # the bug: no state.replace(batch_stats=updates["batch_stats"])
    return state, {"loss": loss, "bn_stats": updates["bn_stats"]}  # tb_bnstats: "bn_stats" returned


@jax.jit
def linen_accuracy(state, x, y):
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
    return (logits.argmax(-1) == y).mean()


def train(name, run_dir, data, epochs):
    """Trains one run into ``run_dir``; returns one line of the summary."""
    (x, y), (x_val, y_val) = data
    options = dict(RUNS[name])
    if options.pop("linen", False):
        module = LinenConvNet(**options)
        variables = module.init(jax.random.key(0), jnp.asarray(x[:2]), train=False)
        state = TrainState.create(apply_fn=module.apply, params=variables["params"],
                                  batch_stats=variables["batch_stats"], tx=optax.adam(3e-3))
        monitor = BNStatsMonitor((module, variables), run_dir, snapshot_every_n_steps=20, verbose=0)
        with monitor:
            for epoch in range(epochs):
                for xb, yb in batches(x, y, epoch):
                    state, metrics = linen_train_step(state, xb, yb)
                    monitor.step(state, **metrics)
                monitor.epoch_end(accuracy=float(linen_accuracy(state, x_val, y_val)))
        val = float(linen_accuracy(state, x_val, y_val))
    else:
        model = ConvNet(rngs=nnx.Rngs(0), **options)
        optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
        monitor = BNStatsMonitor(model, run_dir, snapshot_every_n_steps=20, verbose=0)
        with monitor:
            for epoch in range(epochs):
                model.train()
                for xb, yb in batches(x, y, epoch):
                    monitor.step(loss=nnx_train_step(model, optimizer, xb, yb))
                model.eval()
                monitor.epoch_end(accuracy=float(nnx_accuracy(model, x_val, y_val)))
        val = float(nnx_accuracy(model, x_val, y_val))
    codes = ", ".join(sorted({f.code for f in monitor.findings or []})) or "none"
    return f"{name:26s} findings: {codes:8s} validation accuracy (running statistics): {val:.0%}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="demo/logs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), metavar="RUN")
    args = parser.parse_args()
    data = digits()
    train_missing(args.logdir, args.runs, lambda name, run_dir: train(name, run_dir, data, args.epochs),
                  title="Flax demo runs")


if __name__ == "__main__":
    main()
