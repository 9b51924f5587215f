"""PyTorch DistributedDataParallel over several CPU processes (gloo), started
with ``torch.multiprocessing.spawn`` from this script (the tests run it with
``subprocess``, so the ranks import this file, not pytest's modules).

    python torch_ddp.py OUT --ranks 2 [--no-broadcast-buffers] [--model toy|dense] [--batch 32] [--split classes]

Each rank trains the same model (same seed) twice, without and with
:class:`tb_bnstats.torch.BNStatsMonitor` (``OUT/logs``: only rank 0 writes),
on its own contiguous slice of each global batch (rank ``r`` gets rows
``r*B/R`` to ``(r+1)*B/R``; with ``--split classes`` rank ``r`` reads only the
digits whose label is ``r`` modulo R, as when each worker reads a shard of its
own that was not shuffled across workers), and saves ``OUT/rank<r>.npz``: the losses of
both runs, the data, and its BN module's running statistics at the end.
"""

import argparse
import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))


def data(model):
    import numpy as np

    if model == "toy":  # BN first: its input is the data; slices of the batch differ on purpose
        rng = np.random.default_rng(0)
        x = (rng.normal(size=(128, 4)) + np.linspace(0, 3, 128)[:, None] * [1, -1, 0.5, 2]).astype("float32")
        return x, rng.normal(size=(128, 1)).astype("float32")
    sys.path.insert(0, os.path.dirname(HERE))
    from scenarios_common import digits

    return digits(n=1792)


def build(model):
    import torch

    if model == "toy":
        return torch.nn.Sequential(torch.nn.BatchNorm1d(4, momentum=0.5), torch.nn.Linear(4, 1))
    return torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 10))


def worker(rank, args):
    import numpy as np
    import torch
    import torch.distributed as dist

    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    from tb_bnstats.torch import BNStatsMonitor

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)  # torch 2.13
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(args.out, 'init')}", rank=rank,
                            world_size=args.ranks)
    try:
        x, y = data(args.model)
        loss_fn = torch.nn.MSELoss() if args.model == "toy" else torch.nn.CrossEntropyLoss()
        per_rank = args.batch // args.ranks
        if args.split == "classes":  # this rank's own shard, read in its own batches
            x, y = x[y % args.ranks == rank], y[y % args.ranks == rank]
            x, y = x[:len(x) // per_rank * per_rank], y[:len(y) // per_rank * per_rank]
        out = {"x": x, "batch": args.batch, "ranks": args.ranks}
        for monitored in (False, True):
            torch.manual_seed(0)
            ddp = torch.nn.parallel.DistributedDataParallel(build(args.model),
                                                            broadcast_buffers=args.broadcast_buffers)
            optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
            monitor = BNStatsMonitor(ddp, os.path.join(args.out, "logs"), snapshot_every_n_steps=1,
                                     verbose=0) if monitored else None
            losses = []
            for _ in range(args.epochs):
                # Every rank takes the same number of steps (DDP): 50 of its own shard's batches.
                steps = 50 if args.split == "classes" else len(x) // args.batch
                for k in range(steps):
                    mine = slice(k * per_rank, (k + 1) * per_rank) if args.split == "classes" else \
                        slice(k * args.batch + rank * per_rank, k * args.batch + (rank + 1) * per_rank)
                    loss = loss_fn(ddp(torch.from_numpy(x[mine])), torch.from_numpy(y[mine]))
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
                    if monitor is not None:
                        monitor.step(loss=loss)
            if monitor is not None:
                monitor.close()
            bn = [m for m in ddp.module.modules() if isinstance(m, torch.nn.BatchNorm1d)][0]
            out["losses_monitored" if monitored else "losses"] = np.asarray(losses)
            out["running_mean"] = bn.running_mean.numpy().copy()
            out["running_var"] = bn.running_var.numpy().copy()
        np.savez(os.path.join(args.out, f"rank{rank}.npz"), **out)
    finally:
        dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--no-broadcast-buffers", dest="broadcast_buffers", action="store_false")
    parser.add_argument("--model", choices=("toy", "dense"), default="toy")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--split", choices=("batch", "classes"), default="batch")
    args = parser.parse_args()
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(args,), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    main()
