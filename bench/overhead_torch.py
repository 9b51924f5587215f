"""Overhead of tb_bnstats.torch.BNStatsMonitor logging every step of a plain
PyTorch loop, against the same loop without it. Run through
``python bench/overhead.py --framework torch`` (or directly); imports
neither TensorFlow nor Keras.

Two copies of a small ResNet-style net (a stem and three stages of two basic
blocks: 13 BN modules, 32x32x3 input) train on the same random data in this
one process, eager and under ``torch.compile`` (``--compile off,on``): one
with the monitor, one without (the baseline). After a warm-up (and
compilation), they train alternately, ``--steps`` steps each, ``--rounds``
times, so that machine noise hits both alike. Each step's wall-clock and
process CPU time (``time.process_time``: every thread, the monitor's
background writer included) is taken around the whole step, ``monitor.step``
included, and each round's totals (drains included).

Printed: median step times, their ratios to the baseline, the ratios of the
round totals, the event-file bytes per layer per step and the device-to-host
reads per 100 steps. Not a pass/fail test: the figures go into docs/performance.md.

    python bench/overhead.py --framework torch [--compile off,on] [--rounds 5] [--steps 60] [--batch 32]
"""

import argparse
import pathlib
import statistics
import tempfile
import time

import torch
from torch import nn

from tb_bnstats.torch import BNStatsMonitor


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(identity + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResNetSmall(nn.Module):
    """stem conv-BN, three stages (16, 32, 64 channels) of blocks, a linear head."""

    def __init__(self, classes=10, widths=(16, 32, 64), blocks=1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(*[BasicBlock(cin if b == 0 else w, w, 1 if i == 0 or b else 2)
                                          for b in range(blocks)]))
            cin = w
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(self.layer3(self.layer2(self.layer1(x))).mean((2, 3)))


class Baseline(ResNetSmall):
    """The same net with a forward of its own: ``torch.compile`` caches graphs
    by code object, and guards on module hooks are off by default
    (``skip_nnmodule_hook_guards``), so without it the monitored net would
    reuse the baseline's graph, traced without the monitor's hooks."""

    def forward(self, x):
        return super().forward(x)


def _bn_count(model):
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def bench(compiled, args, root):
    torch.manual_seed(0)
    x = torch.randn(args.steps * args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (len(x),))
    runs = {}
    for variant in ("none", "tb_bnstats"):
        torch.manual_seed(0)
        model = (ResNetSmall if variant == "tb_bnstats" else Baseline)(blocks=args.blocks)
        monitor = BNStatsMonitor(model, root / f"{compiled}-{variant}", verbose=0) if variant == "tb_bnstats" else None
        forward = torch.compile(model) if compiled else model
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        runs[variant] = dict(model=model, forward=forward, opt=opt, monitor=monitor, step=[], total=[])

    def one_step(run, i):
        xb, yb = x[i * args.batch:(i + 1) * args.batch], y[i * args.batch:(i + 1) * args.batch]
        loss = nn.functional.cross_entropy(run["forward"](xb), yb)
        run["opt"].zero_grad(set_to_none=True)
        loss.backward()
        run["opt"].step()
        if run["monitor"] is not None:
            run["monitor"].step(loss=loss)

    for run in runs.values():  # warm-up (compilation)
        for i in range(3):
            one_step(run, i)
    for _ in range(args.rounds):
        for run in runs.values():
            start = (time.perf_counter(), time.process_time())
            for i in range(args.steps):
                t0 = (time.perf_counter(), time.process_time())
                one_step(run, i)
                t1 = (time.perf_counter(), time.process_time())
                run["step"].append((t1[0] - t0[0], t1[1] - t0[1]))
            if run["monitor"] is not None:
                run["monitor"].epoch_end()  # a drain, as at an epoch's end
            end = (time.perf_counter(), time.process_time())
            run["total"].append((end[0] - start[0], end[1] - start[1]))
    monitor = runs["tb_bnstats"]["monitor"]
    monitor.close()
    steps = monitor._step
    layers = _bn_count(runs["tb_bnstats"]["model"])
    event_bytes = sum(p.stat().st_size for p in (root / f"{compiled}-tb_bnstats").glob("events.out.tfevents.*"))
    print(f"\nResNet-style net ({layers} BN modules), batch {args.batch}, torch.compile={compiled}, "
          f"{args.rounds} alternated rounds x {args.steps} steps, {torch.get_num_threads()} threads")
    print(f"  {'variant':12s} {'median step':>22s} {'ratio (median step)':>22s} {'ratio (round total)':>22s}")
    print(f"  {'':12s} {'wall ms':>10s} {'cpu ms':>11s} {'wall':>10s} {'cpu':>11s} {'wall':>10s} {'cpu':>11s}")
    base = runs["none"]
    med = lambda values, k: statistics.median(v[k] for v in values)  # noqa: E731
    tot = lambda values, k: sum(v[k] for v in values)  # noqa: E731
    for variant, run in runs.items():
        print(f"  {variant:12s} {med(run['step'], 0) * 1e3:10.2f} {med(run['step'], 1) * 1e3:11.2f} "
              f"{med(run['step'], 0) / med(base['step'], 0):10.3f} {med(run['step'], 1) / med(base['step'], 1):11.3f} "
              f"{tot(run['total'], 0) / tot(base['total'], 0):10.3f} "
              f"{tot(run['total'], 1) / tot(base['total'], 1):11.3f}")
    print(f"  tb_bnstats: {event_bytes / (steps * layers):.0f} event bytes per layer per step; "
          f"{100.0 * monitor.capture.reads / steps:.2f} device-to-host reads per 100 steps "
          f"({monitor.capture.reads} reads, ring of {monitor.capture.drain_every} steps)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=["torch"], default="torch")
    parser.add_argument("--compile", default="off,on", help="off, on or off,on (torch.compile)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60, help="steps per round")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=2, help="basic blocks per stage")
    args = parser.parse_args(argv)
    root = pathlib.Path(tempfile.mkdtemp(prefix="tb_bnstats_bench_torch_"))
    for setting in args.compile.split(","):
        bench({"off": False, "on": True}[setting], args, root)


if __name__ == "__main__":
    main()
