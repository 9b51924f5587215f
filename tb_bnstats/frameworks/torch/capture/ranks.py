"""Several processes (``torch.distributed``, DistributedDataParallel): which
rank this is, what DDP does with the BN buffers, and how each rank's moments
reach rank 0.

Every rank runs the capture's hooks on its own slice of the global batch.
At each training step every rank hands its row -- per module its batch
moments, its own running statistics and its values per channel -- to one
``all_gather`` on a process group of tb_bnstats' own (the default group's
backend: gloo on CPU, NCCL on GPUs, so the rows stay on the device), started
asynchronously and waited
for at the next step or at a drain, so it overlaps the next step's compute.
Only rank 0 writes event files (:class:`tb_bnstats.torch.BNStatsMonitor`);
the others gather and write nothing.

Every rank must call ``monitor.step()`` for every training step, as every
rank runs every DDP step (a rank that skips one leaves the others waiting in
the gather, as in DDP's own gradient all-reduce).
"""

import dataclasses


@dataclasses.dataclass
class Ranks:
    """The process group a monitored model trains in.

    ``world_size`` ranks, this one ``rank``; ``sync_buffers`` what the DDP
    wrapper does at each forward (``forward_sync_buffers``, formerly
    ``broadcast_buffers``; True: rank 0's running statistics are copied to
    every rank before the forward, so the ranks share rank 0's; False: each
    rank keeps its own; None: the model was not given as its DDP wrapper,
    assumed True, DDP's default)."""

    world_size: int
    rank: int
    sync_buffers: bool | None
    group: object = None
    _pending: object = None  # the Work of the last gather, waited for before the next

    @property
    def chief(self):
        return self.rank == 0

    @property
    def moving_per_replica(self):
        """Whether each rank's running statistics are its own between steps."""
        return self.sync_buffers is False

    def gather(self, row, out):
        """Starts gathering every rank's ``row`` [W] into ``out`` [R, W]
        (views of a ring row); the previous gather is waited for first."""
        import torch.distributed as dist

        self.wait()
        self._pending = dist.all_gather(list(out.unbind(0)), row, group=self.group, async_op=True)

    def wait(self):
        """Waits for the last gather (before its rows are read)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.wait()


def of(model):
    """The :class:`Ranks` ``model`` trains in, or None in one process.

    Args:
        model: the module given to the monitor: a
            ``DistributedDataParallel`` wrapper tells whether it syncs the
            buffers at each forward.

    Every rank must make its monitor (this makes a process group, a
    collective call)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return None
    ddp = model if isinstance(model, torch.nn.parallel.DistributedDataParallel) else None
    return Ranks(world_size=dist.get_world_size(), rank=dist.get_rank(),
                 sync_buffers=None if ddp is None else bool(getattr(ddp, "forward_sync_buffers",
                                                                    getattr(ddp, "broadcast_buffers", True))),
                 group=dist.new_group())
