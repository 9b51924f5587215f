"""Captures Keras 3 BatchNormalization moments inside the train step, with the
torch backend, and keeps every step's moments on the device until the host
drains them.

Keras' torch train step runs eagerly (``train_step(data)``, one step per
call: the torch backend has no ``steps_per_execution``), so the Python of
each step runs each step. The BN layers get the shared wrappers of
:mod:`tb_bnstats.frameworks.keras.capture.hooks`; ``model.train_step`` is wrapped to
mark "inside a training step" and, when the step returns, to write its row
(its columns in :data:`tb_bnstats.capture.ring.STEP_ON_DEVICE` storage):
the float columns -- logs, metric totals, batch and moving moments -- with
one ``torch.cat`` into a float32 ring tensor on the layers' device, the
optimizer's step into an int64 ring tensor there; the row number and update
counts are Python integers kept in a host array (the step runs in Python
anyway). Nothing is read from the
device per step: with a GPU the copies are queued behind the step's own
kernels and the step does not wait. The host reads both ring tensors once
per drain. With ``jit_compile=True`` (``torch.compile``) the row writing is
excluded from compilation (``torch.compiler.disable``).
"""

import weakref

import numpy as np

from tb_bnstats.capture import ring
from tb_bnstats.capture.rows import Layout, ring_steps
from tb_bnstats.frameworks import torch_ops
from tb_bnstats.frameworks.keras.capture.hooks import KerasCapture, LayerSlot, StepHook
from tb_bnstats.frameworks.keras.capture.layers import mean_metrics

_SLOTS = weakref.WeakKeyDictionary()  # BN layer -> _LayerSlot
_HOOKS = weakref.WeakKeyDictionary()  # model -> _TrainStepHook


def end_of_data_errors():
    """What Keras' torch trainer takes as "the data ended"."""
    return (StopIteration,)


def _eager(fn):
    """``fn`` kept out of ``torch.compile`` graphs (a graph break)."""
    import torch

    return torch.compiler.disable(fn) if hasattr(torch, "compiler") else fn


class _LayerSlot(LayerSlot):
    """A layer's update count as a Python integer (the step runs eagerly)."""

    def __init__(self, layer):
        super().__init__(layer)
        self.updates = 0
        self.keep = _eager(self.keep)

    def keep(self, mean, variance, updating, inputs=None):
        channels = self.channels
        mean = mean.detach().reshape([channels]).float()
        variance = variance.detach().reshape([channels]).float()
        self.remember_initial()
        for hook in self.hooks:
            hook.kept[self.layer] = (mean, variance, updating)

    def count(self):
        return self.updates

    def set_count(self, value):
        self.updates = int(value)


class _Ring:
    """K rows of the layout's row in
    :data:`tb_bnstats.capture.ring.STEP_ON_DEVICE` storage (``format``):
    ``device`` tensors ``floats`` [K, V + 4 sum(C)] float32 and ``steps``
    [K, 1] int64, ``host`` array ``ints`` [K, 1 + L] (``n, counts``)."""

    def __init__(self, layout, device):
        self.layout = layout
        self.format = ring.RingFormat(layout, ring.STEP_ON_DEVICE)
        self.steps = ring_steps(self.format.row_bytes, 1)
        self.device = torch_ops.device_tensors(self.format, self.steps, device)
        self.host = self.format.host_arrays(self.steps)
        self.ops = torch_ops.TorchOps(device)

    def read(self):
        """Both device tensors, one read each, as :class:`Rows`."""
        return torch_ops.read(self.format, self.device, self.host)


class _TrainStepHook(StepHook):
    """Wraps ``model.train_step`` (:meth:`StepHook.wrap_train_step`; module
    docstring); one :class:`_Ring` per layout."""

    def __init__(self, model):
        super().__init__()
        self.seq = 0
        self.wrap_train_step(model, self._write_row, outside=_eager)

    def written(self):
        return self.seq

    def _write_row(self, model, logs):
        import torch

        layers = [layer for layer in self.execution_order if layer in self.kept]
        scalar_logs = {k: v for k, v in (logs or {}).items()
                       if isinstance(v, (torch.Tensor, float, int)) and np.ndim(v) == 0 and not isinstance(v, bool)}
        metrics = mean_metrics(model)
        layout = Layout.of(layers, [_SLOTS[layer].channels for layer in layers],
                           [self.kept[layer][2] for layer in layers], scalar_logs, [name for name, _ in metrics])
        ring_ = self.rings.get(layout.key)
        if ring_ is None:
            device = layers[0].moving_mean.value.device if layers else "cpu"
            ring_ = self.rings[layout.key] = _Ring(layout, device)
        counts = []  # the layers did update, whether or not the row below can be written
        for layer, updating in zip(layers, layout.updating):
            slot = _SLOTS[layer]
            slot.updates += 1 if updating else 0
            counts.append(slot.updates)
        at = self.seq % ring_.steps  # row n - 1 of the n-th step, numbered once the row is complete
        row_format = ring_.format
        with torch.no_grad():
            values = list(scalar_logs.values())
            for _, metric in metrics:
                values += [metric.total.value, metric.count.value]
            moments = []
            for layer in layers:
                mean, variance, _ = self.kept[layer]
                moments += [mean, variance, layer.moving_mean.value, layer.moving_variance.value]
            columns = {ring.VALUES: values, ring.MOMENTS: moments, ring.STEP: [model.optimizer.iterations.value]}
            for name, tensor in ring_.device.items():
                row_format.row(name, ring_.ops, columns, out=tensor[at])
        self.seq += 1
        row_format.row("ints", ring.NUMPY, {ring.N: [self.seq], ring.COUNTS: counts}, out=ring_.host["ints"][at])


class TorchCapture(KerasCapture):
    """Instruments ``model`` (idempotent) and drains its BN moments: a
    :class:`tb_bnstats.capture.Capture` (:class:`KerasCapture`)."""

    hook_class, slot_class, hooks, slots = _TrainStepHook, _LayerSlot, _HOOKS, _SLOTS
