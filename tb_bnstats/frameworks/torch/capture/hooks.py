"""Keeps the batch moments of every training forward of a PyTorch model's BN
modules on the device, one row per training step, and drains them in blocks.

Per BN module, a forward hook (``register_forward_hook``: it runs after the
module's own forward) keeps the biased per-channel mean and variance the
module normalized with, the number of values per channel and whether the
module updated its running statistics, as the module's *pending* moments.
When the module updated its running statistics with a momentum of at least
:data:`tb_bnstats.frameworks.torch.capture.modules.MIN_MOMENTUM_TO_INVERT`, the
moments are read off the update itself
(:func:`~tb_bnstats.frameworks.torch.capture.modules.moments_of_update`, from the
running statistics a pre-forward hook copied): a few operations on C
values, no second pass over the activations. Otherwise they are computed
from the input (:func:`~tb_bnstats.frameworks.torch.capture.modules.channel_moments`).
Forwards without gradients in ``eval()`` mode (validation,
``torch.no_grad()``) are not training forwards and keep nothing;
nor are tb_bnstats' own measurement passes (the probe, population
statistics: ``train()`` with ``track_running_stats`` off for the pass).
With gradient accumulation the last micro-batch's moments are the step's;
``num_batches_tracked`` counts every forward's update. A module frozen by
construction (``FrozenBatchNorm2d``,
:func:`~tb_bnstats.frameworks.torch.capture.modules.is_frozen_batchnorm`) keeps
its input's moments in every forward with gradients, and counts no update.

When the training loop says a step is done
(:meth:`TorchCapture.write_step`), the pending moments, the running
statistics and the step's metrics become one row of a ring (its columns in
:data:`tb_bnstats.capture.ring.COUNTS_ON_DEVICE` storage, on several ranks
:data:`~tb_bnstats.capture.ring.GATHERED`): the floats with one ``torch.cat`` into a
float32 ring tensor on the modules' device, each module's
``num_batches_tracked`` with one ``torch.stack`` into an int64 ring tensor
there; the row number, the step, Python-number metrics and the values per
channel are host integers and floats. Nothing is read from the device per
step: on a GPU the copies queue behind the step's own kernels. A drain reads
both ring tensors once.

Under ``torch.compile`` the hooks are traced into the compiled graph (a
side effect on a Python dict Dynamo replays); the row writing runs eagerly
in the loop. The hooks add nothing to the model's ``state_dict``, and
:meth:`TorchCapture.close` removes them all.
"""

import logging

import numpy as np

from tb_bnstats.capture import ring
from tb_bnstats.capture import rows as ring_rows
from tb_bnstats.frameworks import torch_ops
from tb_bnstats.frameworks.torch.capture import modules as bn_modules

logger = logging.getLogger("tb_bnstats")


class _ModuleSlot:
    """One BN module: its name, what it started from, and what it was when
    the capture was made (``num_batches_tracked``, at its initial values).

    ``init_mean`` / ``init_var`` are what ``num_batches_tracked`` counts
    from: 0 and 1, or the statistics found with no update counted
    (pretrained values loaded without ``num_batches_tracked``), or those
    found on a module whose affine parameters do not require gradients
    (a fine-tuning start from a checkpoint)."""

    def __init__(self, name, module):
        import torch

        self.name, self.module = name, module
        self.channels = None
        self.batch_samples = 0  # examples in its first training batch seen
        self.start_updates, self.started_at_initializer = 0, True
        # The update count's column: num_batches_tracked, or a constant 0 for a frozen-by-construction module.
        self.updates = getattr(module, "num_batches_tracked", None)
        if bn_modules.is_frozen_batchnorm(module):
            self.updates = torch.zeros((), dtype=torch.int64, device=module.running_mean.device)
        self._pretrained = None
        if bn_modules.tracks_running_stats(module):  # a lazy module before its first forward: fresh
            with torch.no_grad():
                self.start_updates = int(self.updates) if self.updates is not None else 0
                self.started_at_initializer = bool(torch.all(module.running_mean == 0)) and bool(
                    torch.all(module.running_var == 1))
                # Statistics other than 0 / 1 with no update counted (loaded without num_batches_tracked),
                # or any statistics of a module whose scale and offset are frozen (fine-tuning from a
                # checkpoint that counted its updates): what BN016 and BN010 measure the move from.
                affine_frozen = any(True for _ in module.parameters(recurse=False)) and not \
                    bn_modules.affine_requires_grad(module)
                if not self.started_at_initializer and (self.start_updates == 0 or affine_frozen):
                    self._pretrained = (module.running_mean.double().cpu().numpy(),
                                        module.running_var.double().cpu().numpy())

    @property
    def frozen_by_construction(self):
        return bn_modules.is_frozen_batchnorm(self.module)

    @property
    def pretrained(self):
        """Started from statistics other than 0 / 1 with no update counted."""
        return self._pretrained is not None

    @property
    def init_mean(self):
        return self._pretrained[0] if self.pretrained else np.zeros(self.channels or 0)

    @property
    def init_var(self):
        return self._pretrained[1] if self.pretrained else np.ones(self.channels or 0)


class _Ring:
    """K rows of one layout in :data:`tb_bnstats.capture.ring.COUNTS_ON_DEVICE`
    storage (``format``): ``device`` tensors ``floats`` [K, V_dev + 4 sum(C)]
    float32 and ``counts`` [K, L] int64, ``host`` arrays ``ints`` [K, 2]
    (``n, step``), ``host_values`` [K, V_host] (the metrics given as Python
    numbers) and ``samples`` [K, L]. On R ranks (``ranks``,
    :data:`~tb_bnstats.capture.ring.GATHERED`) the moments and values per
    channel of every rank are gathered into ``gathered`` [K, R, 4 sum(C) + L]
    instead."""

    def __init__(self, layout, device, on_device, ranks=None):
        self.layout, self.ranks = layout, ranks
        self.format = ring.RingFormat(layout, ring.GATHERED if ranks else ring.COUNTS_ON_DEVICE,
                                      host_values=[not d for d in on_device])
        self.steps = ring_rows.ring_steps(self.format.row_bytes)
        self.device = torch_ops.device_tensors(self.format, self.steps, device)
        self.host = self.format.host_arrays(self.steps)
        self.ops = torch_ops.TorchOps(device)

    def read(self):
        """The device tensors, one read each, as :class:`~tb_bnstats.capture.rows.Rows`."""
        if self.ranks is not None:
            self.ranks.wait()
        return torch_ops.read(self.format, self.device, self.host)


class TorchCapture:
    """The BN modules of ``model`` instrumented with forward hooks: a
    :class:`tb_bnstats.capture.Capture`.

    Args:
        model: a ``torch.nn.Module``.
        ranks: the :class:`tb_bnstats.frameworks.torch.capture.ranks.Ranks` it
            trains in (DDP), None in one process: every rank's moments are
            gathered at each step.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
    """

    def __init__(self, model, ranks=None):
        import torch

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"tb_bnstats.torch needs a torch.nn.Module, got {type(model).__name__}")
        self.model, self.ranks = model, ranks
        found = bn_modules.find_batchnorm_modules(model)
        self._slots = {name: _ModuleSlot(name, module) for name, module in found}
        self.untracked = [name for name, module in found
                          if not bn_modules.is_frozen_batchnorm(module) and not module.track_running_stats]
        self._pending = {}  # name -> (mean, var, values per channel, updating): this step's training forward
        self._order = []  # names in the order training forwards first ran them
        self._updating = {}  # name -> whether its last training forward updated its running statistics
        self._rings = {}  # layout key -> _Ring
        self._written_key = None  # the layout of the last row written
        self._seq = self._drained = self._reads = 0
        self.failed = None  # the exception that turned the hooks off
        self._before = {}  # name -> the running statistics before this forward's update
        self._handles = []
        for name, module in found:
            if name not in self.untracked:
                remember_running, keep_moments = self._hooks_for(name)
                self._handles += [module.register_forward_pre_hook(remember_running),
                                  module.register_forward_hook(keep_moments)]

    # -- inside the forward pass ---------------------------------------------------

    def _hooks_for(self, name):
        """The module's pre-forward and forward hooks (module docstring)."""
        pending, before = self._pending, self._before

        def remember_running(module, args):
            if self.failed is None and bn_modules.moments_from_update(module):
                before[name] = (module.running_mean.detach().clone(), module.running_var.detach().clone())

        def keep_moments(module, args, output):
            if self.failed is not None or not (module.training or _grad_enabled()):
                return  # validation / inference forwards are not part of a training step
            if module.training and not bn_modules.updates_running_stats(module) \
                    and not bn_modules.is_frozen_batchnorm(module):
                return  # tb_bnstats' own measurement passes (batch moments, nothing tracked)
            try:
                x, running_before = args[0], before.pop(name, None)
                if running_before is not None:  # copied by remember_running: the update can be inverted
                    mean, var, n = bn_modules.moments_of_update(module, *running_before, x)
                else:
                    mean, var, n = bn_modules.channel_moments(x)
                updating = bool(module.training) and not bn_modules.is_frozen_batchnorm(module)
                pending[name] = (mean, var, n, updating, int(x.shape[0]) if x.dim() > 0 else 0)
            except Exception as exc:  # noqa: BLE001 - the forward pass must go on
                self._fail(exc)

        return remember_running, keep_moments

    def _fail(self, exc):
        self.failed = exc
        logger.warning("tb_bnstats: capturing BN moments failed, training continues without them: %s: %s",
                       type(exc).__name__, exc)

    # -- between steps (eager) -----------------------------------------------------

    def write_step(self, step, metrics):
        """The training step ``step`` is done: its pending moments, the
        running statistics now and ``metrics`` (``{name: tensor or
        number}``) become one row.

        Returns:
            True when the step's training forward ran BN modules.
        """
        import torch

        pending = dict(self._pending)
        self._pending.clear()  # the hooks' dict: cleared in place
        names = list(pending)
        for name in names:
            if name not in self._updating:
                self._order.append(name)
            self._updating[name] = pending[name][3]
        slots = [self._slots[n] for n in names]
        for slot, name in zip(slots, names):
            slot.channels = int(pending[name][0].numel())
            slot.batch_samples = slot.batch_samples or pending[name][4]
        on_device = tuple(isinstance(v, torch.Tensor) for v in metrics.values())
        updating = tuple(pending[n][3] for n in names)
        # A module path is one module of fixed width: the names and flags say which ring (no Layout per step).
        key = self._written_key = (tuple(names), updating, tuple(metrics), on_device)
        ring_ = self._rings.get(key)
        ranks = self.ranks
        if ring_ is None:
            layout = ring_rows.Layout.of([s.module for s in slots], [s.channels for s in slots], updating,
                                         list(metrics), (), replicas=ranks.world_size if ranks else 1,
                                         moving_per_replica=bool(ranks and ranks.moving_per_replica), samples=True)
            device = slots[0].module.running_mean.device if slots else next(
                (v.device for v in metrics.values() if isinstance(v, torch.Tensor)), "cpu")
            ring_ = self._rings[key] = _Ring(layout, device, on_device, ranks)
        at = self._seq % ring_.steps
        row_format = ring_.format
        columns = {ring.VALUES: [v for v, here in zip(metrics.values(), on_device) if here],
                   ring.HOST_VALUES: [float(v) for v, here in zip(metrics.values(), on_device) if not here],
                   ring.COUNTS: [s.updates for s in slots],
                   ring.SAMPLES: [[float(pending[n][2]) for n in names]], ring.MOMENTS: []}
        for slot, name in zip(slots, names):
            mean, var = pending[name][:2]
            columns[ring.MOMENTS] += [mean, var, slot.module.running_mean, slot.module.running_var]
        with torch.no_grad():
            for name, tensor in ring_.device.items():
                if row_format.arrays[name].per_replica:  # this rank's part, gathered from every rank
                    ranks.gather(row_format.row(name, ring_.ops, columns), tensor[at])
                else:
                    row_format.row(name, ring_.ops, columns, out=tensor[at])
        self._seq += 1
        columns[ring.N], columns[ring.STEP] = [self._seq], [int(step)]
        for name, array in ring_.host.items():
            row_format.row(name, ring.NUMPY, columns, out=array[at])
        return bool(slots)

    # -- the Capture protocol --------------------------------------------------------

    @property
    def names(self):
        return [name for name in self._slots if name not in self.untracked]

    def layer_infos(self):
        ranks = self.ranks
        return [bn_modules.layer_info(name, self._slots[name].module, depth, self._updating[name],
                                      replicas=ranks.world_size if ranks else 1,
                                      moving_per_replica=bool(ranks and ranks.moving_per_replica),
                                      batch_samples=self._slots[name].batch_samples)
                for depth, name in enumerate(self._order)]

    def resume(self, step):
        """``"resumed"`` for modules whose ``num_batches_tracked`` was > 0
        when the capture was made (it goes on from there), ``"pretrained"``
        for modules with no update counted but statistics other than 0 / 1
        (loaded without ``num_batches_tracked``: the count starts at 0 from
        them), ``"at_initializer"`` for modules at 0 / 1 with no update
        counted although ``step`` > 0."""
        out = {}
        for name in self.names:
            slot = self._slots[name]
            if slot.pretrained:
                out[name] = "pretrained"
            elif step <= 0:
                continue
            elif slot.start_updates > 0:
                out[name] = "resumed"
            elif slot.started_at_initializer:
                out[name] = "at_initializer"
        return out

    def not_run(self):
        return [name for name in self.names if name not in self._updating]

    @property
    def drain_every(self):
        return min((ring.steps for ring in self._rings.values()), default=None)

    @property
    def reads(self):
        return self._reads

    def drain(self):
        parts = []
        for ring_ in self._rings.values():
            parts.append((ring_.read(), ring_.steps))
            self._reads += 2
        named = {id(slot.module): name for name, slot in self._slots.items()}
        blocks, self._drained = ring_rows.drain(parts, self._drained, named, self._slots)
        # Every row is read now: a ring of an earlier layout (other modules ran, other metrics) goes.
        self._rings = {k: ring for k, ring in self._rings.items() if k == self._written_key}
        return blocks

    def close(self):
        """Removes every hook (after the last gather, on several ranks)."""
        if self.ranks is not None:
            self.ranks.wait()
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _grad_enabled():
    import torch

    return torch.is_grad_enabled()
