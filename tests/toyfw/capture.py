"""Toy's capture, a :class:`tb_bnstats.capture.Capture`: each BN's moments
kept at every training forward, one row per step on the host (a real capture
keeps them on the device and reads them in blocks), drained as Blocks."""

import numpy as np

from tb_bnstats.capture import Block, LayerBlock
from tb_bnstats.format.metadata import LayerInfo
from toyfw import TOY
from toyfw.layers import ToyBatchNorm


class ToyCapture:
    def __init__(self, model):
        self.model = model
        self._bns = [(name, layer) for name, layer in model.layers if isinstance(layer, ToyBatchNorm)]
        self._last = {}  # layer -> its last forward's (mean, var)
        self._rows, self._reads = [], 0
        for _, layer in self._bns:
            layer.observers.append(self._observe)

    def _observe(self, layer, mean, var, n):
        self._last[id(layer)] = (mean.copy(), var.copy())

    @property
    def names(self):
        return [name for name, _ in self._bns]

    def layer_infos(self):
        return [LayerInfo(name=name, channels=len(layer.running_mean), momentum=layer.keep, epsilon=layer.eps,
                          depth=depth, layer_class="ToyBatchNorm", framework=TOY)
                for depth, (name, layer) in enumerate(self._bns)]

    def resume(self, step):
        return {}

    def not_run(self):
        return [name for name, layer in self._bns if id(layer) not in self._last]

    @property
    def drain_every(self):
        return 64

    @property
    def reads(self):
        return self._reads

    def write_step(self, step, metrics):
        """Keeps the row of training step ``step``."""
        row = {name: (*self._last[id(layer)], layer.running_mean.copy(), layer.running_var.copy(), layer.updates)
               for name, layer in self._bns if id(layer) in self._last}
        self._rows.append((step, row, {k: float(v) for k, v in metrics.items()}))

    def drain(self):
        rows, self._rows = self._rows, []
        if not rows:
            return []
        self._reads += 1
        layers = {}
        for name, layer in self._bns:
            columns = list(zip(*(row[name] for _, row, _ in rows)))
            layers[name] = LayerBlock(
                batch_mean=np.stack(columns[0]), batch_var=np.stack(columns[1]), moving_mean=np.stack(columns[2]),
                moving_var=np.stack(columns[3]), updates=np.asarray(columns[4], np.int64), updating=True,
                init_mean=np.zeros(len(layer.running_mean)), init_var=np.ones(len(layer.running_mean)))
        logs = {key: np.asarray([m.get(key, np.nan) for _, _, m in rows]) for key in rows[-1][2]}
        return [Block(steps=np.asarray([s for s, _, _ in rows], np.int64), layers=layers, logs=logs)]
