"""Small Flax conv nets (NNX and Linen), their standard train steps, and the
data of the Flax tests. The models can sow each BatchNorm's input
(``record=True``): the tests' independent record of what the layers saw."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from flax import linen as nn
from flax import nnx

BN = ["bn1", "block.bn2"]


def data(n=64, seed=0, mean=2.0, std=3.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(mean, std, (n, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 4, n).astype(np.int32)
    return x, y


def batches(x, y, batch=16, steps=8):
    for i in range(steps):
        start = (i * batch) % len(x)
        yield x[start:start + batch], y[start:start + batch]


# -- NNX ------------------------------------------------------------------------------------------


class Block(nnx.Module):
    def __init__(self, rngs, momentum, record):
        self.conv2 = nnx.Conv(8, 8, (3, 3), rngs=rngs)
        self.bn2 = nnx.BatchNorm(8, momentum=momentum, rngs=rngs)
        self.record = record

    def __call__(self, x):
        h = self.conv2(x)
        if self.record:
            self.sow(nnx.Intermediate, "bn2_in", h)
        return jax.nn.relu(self.bn2(h))


class NnxNet(nnx.Module):
    def __init__(self, seed=0, momentum=0.9, record=False, frozen=False):
        rngs = nnx.Rngs(seed)
        self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(8, momentum=momentum, use_running_average=frozen, rngs=rngs)
        self.block = Block(rngs, momentum, record)
        self.head = nnx.Linear(8, 4, rngs=rngs)
        self.record = record

    def __call__(self, x):
        h = self.conv1(x)
        if self.record:
            self.sow(nnx.Intermediate, "bn1_in", h)
        return self.head(self.block(jax.nn.relu(self.bn1(h))).mean((1, 2)))


@nnx.jit
def nnx_step(model, optimizer, x, y):
    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def nnx_optimizer(model, lr=0.05):
    return nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)


def nnx_recorded_inputs(model):
    """The BN inputs the last step sowed, ``{layer: np.ndarray}`` (popped from the model)."""
    sown = nnx.pop(model, nnx.Intermediate)
    return {"bn1": np.asarray(jax.tree.leaves(sown["bn1_in"])[0]),
            "block.bn2": np.asarray(jax.tree.leaves(sown["block"]["bn2_in"])[0])}


# -- Linen ----------------------------------------------------------------------------------------


class LinenBlock(nn.Module):
    momentum: float = 0.9
    record: bool = False
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train):
        h = nn.Conv(8, (3, 3))(x)
        if self.record:
            self.sow("intermediates", "bn2_in", h)
        return nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.momentum, axis_name=self.axis_name,
                                    name="bn2")(h))


class LinenNet(nn.Module):
    momentum: float = 0.9
    record: bool = False
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train):
        h = nn.Conv(8, (3, 3))(x)
        if self.record:
            self.sow("intermediates", "bn1_in", h)
        h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.momentum, axis_name=self.axis_name,
                                 name="bn1")(h))
        h = LinenBlock(self.momentum, self.record, self.axis_name, name="block")(h, train)
        return nn.Dense(4)(h.mean((1, 2)))


class TrainState(train_state.TrainState):
    batch_stats: dict


def linen_state(module, seed=0, lr=0.05):
    variables = module.init(jax.random.key(seed), jnp.zeros((2, 8, 8, 3)), train=False)
    state = TrainState.create(apply_fn=module.apply, params=variables["params"],
                              batch_stats=variables["batch_stats"], tx=optax.sgd(lr))
    return variables, state


def make_linen_step(monitored=True, store=True, record=False):
    """Flax's standard TrainState + batch_stats step. ``monitored``: the two
    changed lines (mutable asks for "bn_stats", the metrics return it);
    ``store=False`` drops the updated batch_stats (the bug of BN002);
    ``record``: the BN inputs too (the tests' independent record)."""
    mutable = ["batch_stats"] + (["bn_stats"] if monitored else []) + (["intermediates"] if record else [])

    @jax.jit
    def train_step(state, x, y):
        def loss_fn(params):
            logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x, train=True,
                                             mutable=mutable)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads)
        if store:
            state = state.replace(batch_stats=updates["batch_stats"])
        metrics = {"loss": loss}
        if monitored:
            metrics["bn_stats"] = updates["bn_stats"]
        if record:
            metrics["inputs"] = updates["intermediates"]
        return state, metrics

    return train_step


def linen_recorded_inputs(metrics):
    sown = metrics.pop("inputs")
    return {"bn1": np.asarray(sown["bn1_in"][0]), "block.bn2": np.asarray(sown["block"]["bn2_in"][0])}


def numpy_moments(x):
    x = np.asarray(x, np.float64)
    return x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
