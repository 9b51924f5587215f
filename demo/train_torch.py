"""PyTorch demo runs on scikit-learn's bundled digits (nothing is downloaded):
the demo's small conv net written in PyTorch, trained with a plain loop and
``tb_bnstats.torch.BNStatsMonitor``, one TensorBoard run each. tb_bnstats
imports neither TensorFlow nor Keras here; ``torch.utils.tensorboard`` (the
``SummaryWriter`` beside it) loads TensorFlow when it is installed, as
TensorBoard's own writer does.

    python demo/train_torch.py --logdir demo/logs      # skips runs already written

Runs:
  pytorch_healthy        momentum=0.1 (PyTorch's default): the running statistics catch up in ~30 steps
  pytorch_momentum_0.01  momentum=0.01 on a short run (Keras' 0.99): 95% needs 299 updates
  pytorch_eval_bn        block1's BN kept in eval() while the rest trains: never updated

Each run also writes its validation accuracy with ``torch.utils.tensorboard.SummaryWriter`` into the
same run directory (the tab's loss chart shows it). The momentum=0.01 run is recalibrated at the end
(``tb_bnstats.recalibrate``), its report printed.
"""

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

import tb_bnstats
from demo_runs import train_missing
from tb_bnstats.torch import BNStatsMonitor


class ConvNet(nn.Module):
    """Three conv-BN-ReLU blocks (``block0.bn`` .. ``block2.bn``), pooled, a dense BN (``dense_bn``)."""

    def __init__(self, momentum=0.1):
        super().__init__()
        blocks, cin = [], 1
        for width in (16, 32, 32):
            blocks.append(nn.Sequential())
            blocks[-1].add_module("conv", nn.Conv2d(cin, width, 3, padding=1, bias=False))
            blocks[-1].add_module("bn", nn.BatchNorm2d(width, momentum=momentum))
            blocks[-1].add_module("relu", nn.ReLU())
            cin = width
        self.block0, self.block1, self.block2 = blocks
        self.dense = nn.Linear(cin, 32, bias=False)
        self.dense_bn = nn.BatchNorm1d(32, momentum=momentum)
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        x = self.block2(self.block1(self.block0(x))).mean((2, 3))
        return self.out(torch.relu(self.dense_bn(self.dense(x))))


RUNS = {"pytorch_healthy": dict(momentum=0.1), "pytorch_momentum_0.01": dict(momentum=0.01),
        "pytorch_eval_bn": dict(momentum=0.1, eval_bn="block1")}
EXPECTED = {"pytorch_healthy": set(), "pytorch_momentum_0.01": {"BN001"}, "pytorch_eval_bn": {"BN002"}}


def digits():
    data = load_digits()
    x = torch.tensor((data.images / 16.0).astype("float32")[:, None] * 4.0 + 1.0)  # far from the init 0 / 1
    y = torch.tensor(data.target)
    order = torch.tensor(np.random.default_rng(0).permutation(len(x)))
    x, y = x[order], y[order]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def accuracy(model, x, y, train_mode):
    """Accuracy in train() or eval() mode, changing nothing (tb_bnstats.gap_report)."""
    report = tb_bnstats.gap_report(model, [(x, y)])
    return report.accuracy_train_mode if train_mode else report.accuracy_inference_mode


def train(name, run_dir, data, epochs):
    """Trains one run into ``run_dir``; returns one line of the summary."""
    (x, y), (x_val, y_val) = data
    options = dict(RUNS[name])
    eval_bn = options.pop("eval_bn", None)
    torch.manual_seed(0)
    model = ConvNet(**options)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scalars = SummaryWriter(str(run_dir))
    monitor = BNStatsMonitor(model, run_dir, snapshot_every_n_steps=20, probe_data=(x_val, y_val),
                             # measure_budget=None: every probe when due, findings independent of this machine's speed
                             measure_budget=None,
                             probe_every_n_steps=10, population_data=loader, population_samples=1024,
                             loss_fn=nn.functional.cross_entropy)
    with monitor:
        for _ in range(epochs):
            model.train()
            if eval_bn:
                getattr(model, eval_bn).bn.eval()  # the bug: a BN left in eval() while the rest trains
            for xb, yb in loader:
                loss = nn.functional.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                monitor.step(loss=loss)
            val = accuracy(model, x_val, y_val, train_mode=False)
            scalars.add_scalar("accuracy/val", val, monitor._step)
            monitor.epoch_end(accuracy=val)
    scalars.close()
    codes = ", ".join(sorted({f.code for f in monitor.findings or []})) or "none"
    line = (f"{name:22s} findings: {codes:8s} validation accuracy: train() {accuracy(model, x_val, y_val, True):.0%}, "
            f"eval() {accuracy(model, x_val, y_val, False):.0%}")
    if name == "pytorch_momentum_0.01":
        report = tb_bnstats.recalibrate(model, loader, num_samples=1024, gap_data=(x_val, y_val),
                                        loss_fn=nn.functional.cross_entropy)
        line += "\n" + "\n".join("    " + s for s in str(report).splitlines())
    return line


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="demo/logs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), metavar="RUN")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = digits()
    train_missing(args.logdir, args.runs, lambda name, run_dir: train(name, run_dir, data, args.epochs),
                  title="PyTorch demo runs")


if __name__ == "__main__":
    main()
