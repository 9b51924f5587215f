"""How batch moments are captured: one protocol, one module per source.

A capture instruments a model so that each training step keeps, per BN
layer, the moments the layer normalized with, on the device, and hands out
every step kept since the last time in one read (:class:`Capture`,
:meth:`Capture.drain`). Everything downstream -- the recorder, the
quantities, the writer, the reader, the diagnosis, the plugin -- sees only
:class:`Block` and :class:`tb_bnstats.format.metadata.LayerInfo`, never the
framework.

Sources: :mod:`tb_bnstats.frameworks.keras.capture` (Keras 3; one module per backend)
and :mod:`tb_bnstats.frameworks.torch.capture` (``torch.nn`` BN modules), on
:mod:`tb_bnstats.capture.rows` (a ring's rows on the host, the drain's
merge into blocks) and :mod:`tb_bnstats.capture.ring` (the row's columns,
their storage, pack and unpack: defined once). A new framework is one new
module that implements :class:`Capture`.
"""

import dataclasses
from typing import Optional, Protocol, runtime_checkable

import numpy as np

from tb_bnstats.format.metadata import LayerInfo


@dataclasses.dataclass
class ReplicaBlock:
    """One layer's per-replica moments at the S steps of a :class:`Block`,
    when R > 1 replicas (devices or processes) each ran it on their own
    slice of the global batch.

    ``batch_mean`` / ``batch_var`` [S, R, C]: each replica's own batch
    moments (biased variance: what an unsynchronized layer normalized with).
    ``samples`` [S, R]: each replica's values per channel. ``moving_mean`` /
    ``moving_var`` [S, R, C]: each replica's own moving statistics, where
    each keeps its own (None where the replicas share one copy).
    """

    batch_mean: np.ndarray
    batch_var: np.ndarray
    samples: np.ndarray
    moving_mean: np.ndarray | None = None
    moving_var: np.ndarray | None = None

    def rows(self, index):
        return ReplicaBlock(*(None if v is None else v[index]
                               for v in (getattr(self, f.name) for f in dataclasses.fields(self))))


@dataclasses.dataclass
class LayerBlock:
    """One layer's moments at the S steps of a :class:`Block`.

    ``batch_mean`` / ``batch_var`` [S, C]: what the layer normalized with
    (the biased variance). ``moving_mean`` / ``moving_var`` [S, C]: the
    averages after each step's update. ``updates`` [S]: updates received so
    far (``t``). ``updating`` is False when the layer ran in inference mode
    during the training step (``training=False`` or ``trainable=False``):
    its moving averages were not updated and ``batch_*`` are the moments of
    what it saw. ``init_*`` [C]: the values the moving averages started from.
    ``samples_per_channel``: values per channel in the batch (``n``, for a
    moving variance of Bessel-corrected batch variances): one number, or
    [S] when it changes from step to step; None when the convention does not
    need it. ``replicas``: the per-replica moments on several replicas
    (:class:`ReplicaBlock`), None on one; ``batch_*`` are then the global
    batch's moments (pooled from the replicas' own,
    :func:`tb_bnstats.quantities.pool_moments`) and ``moving_*`` replica 0's.
    """

    batch_mean: np.ndarray
    batch_var: np.ndarray
    moving_mean: np.ndarray
    moving_var: np.ndarray
    updates: np.ndarray
    updating: bool
    init_mean: np.ndarray
    init_var: np.ndarray
    samples_per_channel: Optional["float | np.ndarray"] = None
    replicas: ReplicaBlock | None = None


@dataclasses.dataclass
class Block:
    """What the training steps since the last drain kept, step by step.

    ``steps`` [S]: the optimizer's iteration count after each step, in the
    order run. ``layers``: per layer name. ``logs``: what the training step
    returned (its metrics' values), ``{name: [S]}``. ``metric_totals``:
    running-mean metrics as ``{name: (total [S], count [S])}`` (for per-step
    values between logs). ``lost``: steps run before these that were
    overwritten on the device before they could be read (0 normally).
    """

    steps: np.ndarray
    layers: dict[str, LayerBlock]
    logs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    metric_totals: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
    lost: int = 0

    def rows(self, index) -> "Block":
        """The block of the steps at ``index`` (a slice or an index array)."""
        return Block(
            steps=self.steps[index],
            layers={name: dataclasses.replace(
                layer, replicas=None if layer.replicas is None else layer.replicas.rows(index),
                **{f: getattr(layer, f)[index] for f in _PER_STEP if isinstance(getattr(layer, f), np.ndarray)})
                for name, layer in self.layers.items()},
            logs={name: values[index] for name, values in self.logs.items()},
            metric_totals={name: (total[index], count[index]) for name, (total, count) in self.metric_totals.items()})


_PER_STEP = ("batch_mean", "batch_var", "moving_mean", "moving_var", "updates", "samples_per_channel")


@runtime_checkable
class Capture(Protocol):
    """What a capture provides to :class:`tb_bnstats.recorder.Recorder`.

    ``model``: what it instruments; captures of the same model share what
    the device keeps.
    """

    model: object

    @property
    def names(self) -> list[str]:
        """Every BN layer found in the model, in tracking order."""

    def layer_infos(self) -> list[LayerInfo]:
        """The layers the training step ran, in execution order (``depth``)."""

    def resume(self, step: int) -> dict[str, str]:
        """At the start of a training run at optimizer step ``step``:
        ``{layer: "resumed" | "at_initializer" | "pretrained"}`` for layers
        whose update count continues a restored run, whose moving statistics
        are still at their initial values although ``step`` > 0 (lost on
        restore), or that start from pretrained statistics with no update
        counted (their count starts at 0 from those values)."""

    def not_run(self) -> list[str]:
        """Layers found in the model that the training step never ran."""

    @property
    def drain_every(self) -> int | None:
        """How many steps the device keeps: drain at least this often (None
        before the first training step was traced)."""

    @property
    def reads(self) -> int:
        """Device-to-host reads made by :meth:`drain` so far."""

    def drain(self) -> list[Block]:
        """Every step kept since the last drain, in one read of the device
        (usually one block; one per layout when the training step was traced
        again with other layers)."""
