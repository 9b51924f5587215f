"""Overhead of tb_bnstats.torch.BNStatsMonitor under DistributedDataParallel:
2 gloo processes on CPU, each training two copies of the same small conv net
(4 BN modules) on its own slice of each batch, one copy with the monitor and
one without (the baseline), alternately, ``--steps`` steps each, ``--rounds``
times, so that machine noise hits both alike. The monitor adds one
asynchronous ``all_gather`` of each rank's row per step (waited for at the
next step) and rank 0's writing.

Printed by rank 0: the median step time of each, their ratio, and the ratio
of the round totals. Not a pass/fail test: the figures go into docs/performance.md.

    python bench/overhead_ddp.py [--ranks 2] [--rounds 5] [--steps 60] [--batch 64]
"""

import argparse
import os
import statistics
import tempfile
import time


def net():
    from torch import nn

    layers, cin = [], 3
    for cout in (16, 32, 32, 64):
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10))


def worker(rank, args, init):
    import torch
    import torch.distributed as dist

    from tb_bnstats.torch import BNStatsMonitor

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=args.ranks)
    try:
        per_rank = args.batch // args.ranks
        g = torch.Generator().manual_seed(rank)
        x, y = torch.randn(per_rank, 3, 16, 16, generator=g), torch.randint(0, 10, (per_rank,), generator=g)
        models, logdir = {}, tempfile.mkdtemp()
        for name in ("baseline", "monitored"):
            torch.manual_seed(0)
            ddp = torch.nn.parallel.DistributedDataParallel(net())
            monitor = BNStatsMonitor(ddp, os.path.join(logdir, "run"), verbose=0) if name == "monitored" else None
            models[name] = (ddp, torch.optim.SGD(ddp.parameters(), lr=0.01), monitor)
        times = {name: [] for name in models}
        totals = {name: [] for name in models}

        def run(name, steps, keep):
            ddp, optimizer, monitor = models[name]
            start = time.perf_counter()
            for _ in range(steps):
                t = time.perf_counter()
                loss = torch.nn.functional.cross_entropy(ddp(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if monitor is not None:
                    monitor.step(loss=loss)
                if keep:
                    times[name].append(time.perf_counter() - t)
            if keep:
                totals[name].append(time.perf_counter() - start)

        for name in models:  # warm-up
            run(name, 10, keep=False)
        for _ in range(args.rounds):
            for name in models:
                run(name, args.steps, keep=True)
        models["monitored"][2].close()
        if rank == 0:
            base, mon = (statistics.median(times[n]) for n in ("baseline", "monitored"))
            total = statistics.median(m / b for m, b in zip(totals["monitored"], totals["baseline"]))
            print(f"DDP, {args.ranks} gloo processes, batch {args.batch} ({per_rank} per rank), 4 BN modules: "
                  f"median step {base * 1e3:.2f} ms without, {mon * 1e3:.2f} ms with the monitor "
                  f"(ratio {mon / base:.3f}); round totals ratio {total:.3f}")
    finally:
        dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    import torch.multiprocessing as mp

    init = os.path.join(tempfile.mkdtemp(), "init")
    mp.spawn(worker, args=(args, init), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    main()
