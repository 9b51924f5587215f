"""Demo runs on scikit-learn's bundled digits (nothing is downloaded): the
same small conv net trained a few ways, one TensorBoard run each.

    python demo/train.py --logdir demo/logs      # skips runs already written

Runs:
  healthy_m0.9          momentum 0.9: the moving averages catch up in ~30 steps
  momentum_0.99         momentum 0.99 on a short run: 95% needs 299 updates
  inference_mode_bn     one BN always called with training=False: never updated
  dropout_before_bn     Dropout(0.5) right before the dense BN: variance shift at inference
  tiny_batch_4          batch size 4: noisy batch moments
  unshuffled_sorted     data sorted by label and shuffle=False: batch means drift
"""

import argparse
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import tb_bnstats  # noqa: E402


class InferenceModeBN(keras.layers.Layer):
    """The classic bug: a BN called with training=False during training."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.bn = keras.layers.BatchNormalization(name="bn")

    def call(self, x):
        return self.bn(x, training=False)


def make_model(momentum=0.99, inference_mode_block=False, dropout_before_bn=False):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = inp
    for i, width in enumerate((16, 32, 32)):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        if inference_mode_block and i == 1:
            x = InferenceModeBN(name=f"block{i}")(x)
        else:
            x = keras.layers.BatchNormalization(momentum=momentum, name=f"block{i}_bn")(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(32, use_bias=False)(x)
    if dropout_before_bn:
        x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.BatchNormalization(momentum=momentum, name="dense_bn")(x)
    x = keras.layers.ReLU()(x)
    model = keras.Model(inp, keras.layers.Dense(10)(x))
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


# name -> (model arguments, fit arguments)
RUNS = {
    "healthy_m0.9": (dict(momentum=0.9), {}),
    "momentum_0.99": (dict(momentum=0.99), {}),
    "inference_mode_bn": (dict(momentum=0.9, inference_mode_block=True), {}),
    "dropout_before_bn": (dict(momentum=0.9, dropout_before_bn=True), {}),
    "tiny_batch_4": (dict(momentum=0.9), dict(batch_size=4, epochs=1)),
    "unshuffled_sorted": (dict(momentum=0.9), dict(sort_by_label=True, shuffle=False)),
}

# name -> the finding codes the tab must show for it (tests/test_demo.py checks this in a browser).
EXPECTED = {
    "healthy_m0.9": set(),
    "momentum_0.99": {"BN001"},
    "inference_mode_bn": {"BN002"},
    "dropout_before_bn": {"BN004"},
    "tiny_batch_4": {"BN005"},
    "unshuffled_sorted": {"BN006"},
}


def digits():
    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None] * 4.0 + 1.0  # far from the init mean 0 / var 1
    y = data.target
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def train(name, run_dir, data, epochs):
    """Trains one demo run into ``run_dir``; returns one line of the summary."""
    (x, y), (x_val, y_val) = data
    model_kwargs, fit_kwargs = RUNS[name]
    model = make_model(**model_kwargs)
    fit_kwargs = dict(fit_kwargs)
    x_fit, y_fit = x, y
    if fit_kwargs.pop("sort_by_label", False):
        order = np.argsort(y, kind="stable")
        x_fit, y_fit = x[order], y[order]
    fit_kwargs.setdefault("batch_size", 32)
    fit_kwargs.setdefault("epochs", epochs)
    # The probe: held-out digits in both modes; population statistics of the
    # (shuffled) training digits at each epoch end, a third line in the layer view.
    callback = tb_bnstats.BNStatsCallback(run_dir, snapshot_every_n_steps=20, probe_data=(x_val, y_val),
                                          probe_every_n_steps=10, population_data=(x, y), population_samples=1024,
                                          population_batch_size=fit_kwargs["batch_size"])
    model.fit(x_fit, y_fit, validation_data=(x_val, y_val), verbose=1, callbacks=[callback], **fit_kwargs)
    codes = ", ".join(sorted({f.code for f in callback.findings or []})) or "none"
    # Both modes on the validation data, without changing the model.
    gap = tb_bnstats.gap_report(model, [(x_val, y_val)])
    return (f"{name:20s} findings: {codes:12s} validation accuracy: training mode "
            f"{gap.accuracy_train_mode:.0%}, inference mode {gap.accuracy_inference_mode:.0%}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="demo/logs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), metavar="RUN",
                        help=f"runs to train (default all: {' '.join(RUNS)})")
    args = parser.parse_args()
    data = digits()
    summary = []
    for name in args.runs:
        run_dir = pathlib.Path(args.logdir) / name
        if run_dir.exists() and any(run_dir.glob("events.out.tfevents.*")):
            print(f"{name}: already written, skipping (delete {run_dir} to train it again)")
            continue
        print(f"{name}: training")
        summary.append(train(name, run_dir, data, args.epochs))
    if summary:
        print("\n".join(["", "Demo runs (tb-bnstats diagnose " + args.logdir + " lists the findings):", *summary]))


if __name__ == "__main__":
    main()
