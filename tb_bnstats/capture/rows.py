"""The rows of a capture's ring, on the host: what one training step kept,
and how a drain turns the rows read from the device into
:class:`tb_bnstats.capture.Block` s. numpy only; every Keras backend and
the PyTorch capture write the same columns, defined once in
:mod:`tb_bnstats.capture.ring` (where each column lives and as what dtype,
the pack and the unpack into :class:`Rows`).

A row, for the layers of one :class:`Layout`:

* ``n`` -- the row's number: the n-th training step the hook wrote
  (it goes to row ``(n - 1) % K`` of a ring of K rows);
* ``step`` -- the optimizer's iteration count after the step;
* ``counts`` [L] -- each layer's moving-average updates so far (``t``);
* ``values`` [V] -- the step's scalar logs, then ``(total, count)`` of each
  running-mean metric;
* ``moments`` [4 * sum(C)] -- per layer ``batch_mean, batch_var,
  moving_mean, moving_var`` as float32;
* ``samples`` [L] -- when ``Layout.samples``, each layer's values per
  channel in the batch (for moving variances of Bessel-corrected batch
  variances, PyTorch's).

On R > 1 replicas (``Layout.replicas``) a row holds ``moments`` and
``samples`` of every replica, replica after replica ([R * 4 * sum(C)] and
[R * L]; ``samples`` then always), and the drain pools them into the global
batch's moments (:func:`tb_bnstats.quantities.pool_moments`).
"""

import dataclasses
import weakref

import numpy as np

from tb_bnstats import quantities
from tb_bnstats.capture import Block, LayerBlock, ReplicaBlock

# A ring holds K rows: as many as fit in RING_BYTES, at most RING_MAX_STEPS,
# and never fewer than the steps one execution of the training step runs
# (Keras' steps_per_execution: a drain happens only between executions).
RING_BYTES = 32 * 2**20
RING_MAX_STEPS = 256


def ring_steps(row_bytes, steps_per_execution=1):
    """K, the rows of a ring of rows of ``row_bytes`` (see :data:`RING_BYTES`)."""
    return max(int(steps_per_execution), 1, min(RING_MAX_STEPS, RING_BYTES // max(int(row_bytes), 1)))


@dataclasses.dataclass
class Layout:
    """What the rows of one ring hold: the layers the training step ran, in
    order, and whether each updated its averages; the logs it returned; the
    model's running-mean metrics. Fixed when a Keras training step is traced;
    PyTorch's may change from step to step (a new ring then). ``replicas``:
    how many replicas' moments a row holds; ``moving_per_replica``: whether
    each replica's moving statistics are its own (else replica 0's stand for
    all); ``samples``: whether a row holds each layer's values per channel
    (always on several replicas)."""

    layers: tuple[weakref.ref, ...]
    channels: tuple[int, ...]
    updating: tuple[bool, ...]
    log_names: tuple[str, ...]
    metric_names: tuple[str, ...]
    replicas: int = 1
    moving_per_replica: bool = False
    samples: bool = False

    @classmethod
    def of(cls, layers, channels, updating, log_names, metric_names, replicas=1, moving_per_replica=False,
           samples=False):
        return cls(tuple(weakref.ref(layer) for layer in layers), tuple(int(c) for c in channels),
                   tuple(bool(u) for u in updating), tuple(log_names), tuple(metric_names), int(replicas),
                   bool(moving_per_replica), bool(samples) or int(replicas) > 1)

    @property
    def key(self):
        """Equal for layouts of the same rows (a retrace with the same layers)."""
        return (tuple(id(ref()) for ref in self.layers), self.channels, self.updating, self.log_names,
                self.metric_names, self.replicas, self.moving_per_replica, self.samples)

    @property
    def num_values(self):
        return len(self.log_names) + 2 * len(self.metric_names)

    @property
    def num_moments(self):
        """Moment columns of a row (every replica's)."""
        return 4 * sum(self.channels) * self.replicas

    @property
    def num_samples(self):
        """Values-per-channel columns of a row (every replica's; 0 without)."""
        return len(self.layers) * self.replicas if self.samples else 0


@dataclasses.dataclass
class Rows:
    """Rows read from one ring (R rows, any order): see the module docstring
    (made by :meth:`tb_bnstats.capture.ring.RingFormat.rows`)."""

    layout: Layout
    n: np.ndarray  # [R]
    step: np.ndarray  # [R]
    counts: np.ndarray  # [R, L]
    values: np.ndarray  # [R, V]
    moments: np.ndarray  # [R, replicas * 4 * sum(C)] float32
    samples: np.ndarray | None = None  # [R, replicas * L] values per channel (always on several replicas)

    def take(self, index):
        return Rows(self.layout, self.n[index], self.step[index], self.counts[index], self.values[index],
                    self.moments[index], None if self.samples is None else self.samples[index])

    def block(self, named, slots):
        """These rows as a :class:`Block`. ``named``: ``{id(layer): name}``;
        ``slots``: ``{name: slot}`` with each layer's ``init_mean`` and
        ``init_var``. A layer no longer in the model is left out."""
        layout, size = self.layout, len(self.n)
        logs = {name: self.values[:, i].astype(np.float64) for i, name in enumerate(layout.log_names)}
        offset = len(layout.log_names)
        totals = {name: (self.values[:, offset + 2 * i].astype(np.float64),
                         self.values[:, offset + 2 * i + 1].astype(np.float64))
                  for i, name in enumerate(layout.metric_names)}
        replicas = layout.replicas
        moments = self.moments.reshape(size, replicas, -1)
        samples = None if self.samples is None else self.samples.reshape(size, replicas, -1).astype(np.float64)
        layers, start = {}, 0
        for i, (ref, channels, updating) in enumerate(zip(layout.layers, layout.channels, layout.updating)):
            chunk = moments[:, :, start:start + 4 * channels].reshape(size, replicas, 4, channels)
            start += 4 * channels
            layer = ref()
            name = named.get(id(layer)) if layer is not None else None
            if name is None:
                continue
            slot = slots[name]
            samples_per_channel = None if samples is None else samples[:, 0, i]
            batch_mean, batch_var, replica_block = chunk[:, 0, 0], chunk[:, 0, 1], None
            if replicas > 1:
                moving = (chunk[:, :, 2], chunk[:, :, 3]) if layout.moving_per_replica else (None, None)
                replica_block = ReplicaBlock(chunk[:, :, 0], chunk[:, :, 1], samples[:, :, i], *moving)
                # The global batch: the replicas' moments pooled by the law of total variance.
                batch_mean, batch_var, samples_per_channel = quantities.pool_moments(
                    samples[:, :, i], chunk[:, :, 0], chunk[:, :, 1])
            layers[name] = LayerBlock(
                batch_mean=batch_mean, batch_var=batch_var, moving_mean=chunk[:, 0, 2], moving_var=chunk[:, 0, 3],
                updates=self.counts[:, i].astype(np.int64), updating=updating, init_mean=slot.init_mean,
                init_var=slot.init_var, samples_per_channel=samples_per_channel, replicas=replica_block)
        return Block(steps=self.step.astype(np.int64), layers=layers, logs=logs, metric_totals=totals)


def drain(parts: list[tuple[Rows, int]], drained, named, slots):
    """The rows of a drain as blocks in step order.

    Args:
        parts: ``(rows, K)`` read from each ring, one read per ring.
        drained: the largest ``n`` of the previous drain (rows up to it were
            read before).
        named, slots: see :meth:`Rows.block`.

    Returns:
        ``(blocks, written)``: one :class:`Block` per run of consecutive
        rows of the same ring (rows of several rings are merged by ``n``),
        the first carrying ``lost``, the rows overwritten before this read
        (a ring whose every row is new may have been lapped); ``written``
        the largest ``n`` read (``drained`` when nothing was new).
    """
    fresh, full = [], False
    for rows, capacity in parts:
        rows = rows.take(rows.n > drained)
        full |= len(rows.n) == capacity  # every row is new: older ones may have been overwritten
        if len(rows.n):
            fresh.append(rows)
    if not fresh:
        return [], drained
    seq = np.concatenate([rows.n for rows in fresh]).astype(np.int64)
    part = np.concatenate([np.full(len(rows.n), k) for k, rows in enumerate(fresh)])
    local = np.concatenate([np.arange(len(rows.n)) for rows in fresh])
    order = np.argsort(seq, kind="stable")
    written = int(seq[order[-1]])
    lost = written - drained - len(seq) if full else 0
    blocks = []
    for run in np.split(order, np.flatnonzero(np.diff(part[order])) + 1):  # runs of rows of one ring
        blocks.append(fresh[part[run[0]]].take(local[run]).block(named, slots))
    blocks[0].lost = lost
    return blocks, written
