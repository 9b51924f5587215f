"""Overhead of tb_bnstats.lightning.BNStatsCallback on Lightning's
``Trainer.fit``: torchvision's resnet18 (``weights=None``, 20 BN modules) on
random 64x64 images, with the callback logging every step against the same
``fit`` without it.

Two copies of the model (same initial weights) train on the same data, each
``fit`` a fresh ``Trainer`` with Lightning's default TensorBoard logger, for
``--steps`` optimizer steps. After a warm-up ``fit`` each, they alternate,
one ``fit`` each, ``--rounds`` times, so that machine noise hits both alike.
Measured per ``fit``: the process CPU time (``time.process_time``: every
thread, the callback's background writer included) and the wall-clock time,
over the whole ``fit`` (the monitor's construction, its drains, the closing
diagnosis included). Printed: the medians and their ratios to the baseline
(target: CPU-time ratio <= 1.02). Not a pass/fail test.

    python bench/overhead_lightning.py [--rounds 5] [--steps 30] [--batch 32] [--size 64] [--threads 1]
"""

import argparse
import copy
import logging
import statistics
import tempfile
import time
import warnings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads (1: steadier figures)")
    args = parser.parse_args(argv)

    import lightning.pytorch as L
    import torch
    import torchvision
    from torch import nn

    from tb_bnstats.lightning import BNStatsCallback

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    class Classifier(L.LightningModule):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    torch.manual_seed(0)
    base = torchvision.models.resnet18(weights=None, num_classes=10)
    modules = {"baseline": Classifier(base), "callback": Classifier(copy.deepcopy(base))}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch * args.steps, 3, args.size, args.size, generator=g)
    y = torch.randint(0, 10, (len(x),), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=args.batch)
    times = {name: [] for name in modules}

    with tempfile.TemporaryDirectory() as root:
        def fit(name):
            callbacks = [BNStatsCallback(verbose=0)] if name == "callback" else []
            trainer = L.Trainer(default_root_dir=f"{root}/{name}", max_epochs=1, accelerator="cpu",
                                callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
                                enable_checkpointing=False, log_every_n_steps=10)
            cpu, wall = time.process_time(), time.perf_counter()
            trainer.fit(modules[name], loader)
            return time.process_time() - cpu, time.perf_counter() - wall

        for name in modules:  # warm-up
            fit(name)
        for _ in range(args.rounds):
            for name in modules:
                times[name].append(fit(name))

    print(f"resnet18 {args.size}x{args.size}, batch {args.batch}, {args.steps} steps per fit, {args.rounds} rounds, "
          f"{args.threads} thread(s)")
    cpu = {n: statistics.median(t[0] for t in times[n]) for n in times}
    wall = {n: statistics.median(t[1] for t in times[n]) for n in times}
    for name in times:
        print(f"  {name:9s} CPU {cpu[name]:7.2f} s   wall {wall[name]:7.2f} s   per step CPU "
              f"{1000 * cpu[name] / args.steps:7.1f} ms")
    print(f"  ratio     CPU {cpu['callback'] / cpu['baseline']:.3f}   wall {wall['callback'] / wall['baseline']:.3f}"
          "   (target: CPU <= 1.02)")


if __name__ == "__main__":
    main()
