"""The log format: plugin name, tag names and versioned summary metadata.

Everything that tb_bnstats writes into event files is described here, and
nothing here imports TensorFlow or Keras (TensorBoard imports the plugin, which
reads this module, at start-up).

Tags (one TensorBoard time series each, all under plugin name ``bn_stats``):

* ``bn/<layer>/steps/<segment>`` TENSOR data class (version 2): a float32
  tensor of the layer's full-resolution rows, ``[1 + n, 1 + Q]``: a header
  row (:data:`RECORD_HEADER`), then per kept step its offset below the
  record's step and the values of the Q quantities named in the metadata's
  ``quantities`` (:data:`LAYER_SERIES`, and :data:`REPLICA_SERIES` on several
  replicas). Which steps are kept: :mod:`tb_bnstats.write.resolution`.
* ``bn/<layer>/envelope/<segment>`` TENSOR data class (version 2): a float32
  tensor ``[1 + m, len(ENVELOPE_HEAD) + len(ENVELOPE_STATS) Q]`` of interval
  envelopes: a header row, then per interval :data:`ENVELOPE_HEAD` (its
  first and last step as offsets below the record's step, how many logged
  steps it holds, how many had a non-finite value) and per quantity
  :data:`ENVELOPE_STATS` (``argmin`` / ``argmax``: offsets of the steps of
  the extremes). ``<segment>`` is the step of the segment's first record;
  a segment holds at most 64 records, fewer than TensorBoard keeps of a
  tensor tag, so none is sampled away.
* ``bn/<layer>/<quantity>``  SCALAR data class, one point per logged step
  (version 1: the per-step series before the packed records above; still
  read); quantities are listed in :data:`LAYER_SERIES`.
* ``bn/<layer>/channels``    TENSOR data class, a float32 tensor of shape
  ``[len(SNAPSHOT_ROWS), channels]`` every ``snapshot_every`` steps.
* ``metric/train/<name>/<part>/<segment>`` TENSOR data class (version 2):
  the per-step train loss and metrics, one log per metric packed as a
  layer's series (parts ``steps`` and ``envelope``, one column).
* ``metric/<split>/<name>``  SCALAR data class, ``split`` is ``train`` (per
  step; version 1), ``val`` (per epoch, at the step where the epoch ended), or
  ``probe_train`` / ``probe_inference``: the fixed probe batch run in
  training and in inference mode (:mod:`tb_bnstats.measure.gap`), or
  ``probe_recalibrated``: the probe batch in inference mode with the
  frozen BN layers recalibrated on it (what a fix of S9 would give; at the
  end of each ``fit`` of a model with frozen BN layers, the model restored).
* ``bn/<layer>/probe_*``     SCALAR data class, :data:`PROBE_SERIES`, logged
  only at the probe steps (a subset of the logged steps).
* ``bn/<layer>/population_*`` SCALAR data class, :data:`POPULATION_SERIES`,
  logged only at the steps the callback measured population statistics
  (``BNStatsCallback(population_data=...)``, a subset of the logged steps).
* ``bn/<layer>/replica_*``  SCALAR data class, :data:`REPLICA_SERIES`, logged
  at every logged step of a layer trained on several replicas (devices or
  processes, ``LayerInfo.replicas`` > 1): how the replicas' own batch moments
  spread, how much of the global batch's variance they miss, each replica's
  values per channel, and where each replica keeps its own moving statistics
  (``LayerInfo.moving_per_replica``) how far those differ.
* ``bn/<layer>/replicas``    TENSOR data class, a float32 tensor of shape
  ``[len(REPLICA_ROWS), replicas, channels]``: each replica's batch and
  moving moments, at the steps of the per-channel snapshots.
* ``diagnosis/findings``     TENSOR data class, a scalar DT_STRING tensor
  holding a JSON list of findings (:class:`tb_bnstats.diagnosis.finding.Finding` as
  dicts: code, severity, scenario, run, layers, evidence, message, messages), written
  by the callback at the end of each ``fit`` at its last step; an empty list
  means "diagnosed, nothing found". The last record is the current one.
* ``run/train_begin``        TENSOR data class, a scalar DT_STRING tensor
  holding a JSON object written by the callback at the start of each ``fit``,
  at the optimizer's step then: ``{"step": int, "resumed": [layers],
  "moving_at_initializer": [layers], "pretrained": [layers], "probe": source}``
  -- the layers
  whose update count continues a restored run, the trainable layers whose
  moving statistics were still at their initializers' values although the
  optimizer had already taken ``step`` steps (lost on restore, S3), and the
  layers that start from statistics that are not their initializers' values
  with no update counted (pretrained statistics: a fine-tuning start, or a
  frozen pretrained layer), and where the probe batch comes from
  (:data:`PROBE_GIVEN`, :data:`PROBE_FIRST_TRAINING_BATCH`, or null: no probe;
  absent in logs of older versions).

Every summary carries, in ``plugin_data.content``, a JSON object with
``version`` (:data:`FORMAT_VERSION`), ``kind`` (``layer_log``, ``layer_series``,
``layer_channels``, ``layer_replicas``, ``metric``, ``diagnosis`` or ``train_begin``) and, for layer
tags, ``layer`` (a :class:`LayerInfo` as a dict) and ``quantity`` (``layer_log``: ``part`` and
``quantities``).

Versions: a reader of version :data:`FORMAT_VERSION` reads records of a newer
version as far as it can (the fields it knows; a newer writer only adds) and
says so (:func:`parse_content` keeps the version, the reader warns and the tab
shows a banner), like TensorBoard's own ``_MetadataVersionChecker``.

This package imports nothing else of tb_bnstats.
"""

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from tensorboard.compat.proto import summary_pb2

_T = TypeVar("_T")

PLUGIN_NAME = "bn_stats"
# 2: the per-step series are packed, full-resolution rows and interval envelopes (KIND_LAYER_LOG).
FORMAT_VERSION = 2

KIND_LAYER_SERIES = "layer_series"
KIND_LAYER_LOG = "layer_log"
# The two parts of a layer log (KIND_LAYER_LOG's "part").
PART_STEPS = "steps"
PART_ENVELOPE = "envelope"
# The first row of every layer log record: its number in its segment (0, 1, ...: a gap means the reader
# was given a sample), then zeros.
RECORD_HEADER = ("record",)
# An envelope row: its interval's first and last step, logged steps, steps with a non-finite value; then
# per quantity the mean, min and max over the interval's logged steps and the steps of the min and the max.
ENVELOPE_HEAD = ("first_step", "last_step", "count", "nonfinite")
ENVELOPE_STATS = ("mean", "min", "max", "argmin", "argmax")
# Steps in a layer log record are float32 offsets below the record's step: exact below 2**24, so a record
# spans fewer steps than that (the writer splits what would span more).
MAX_RECORD_SPAN = 2**24
KIND_LAYER_CHANNELS = "layer_channels"
KIND_METRIC = "metric"
KIND_METRIC_LOG = "metric_log"
# The splits logged at every step (the train loss and metrics): packed like a layer's series
# (KIND_METRIC_LOG), one log per metric; the others are scalar tags (KIND_METRIC).
PER_STEP_SPLITS = ("train",)
KIND_DIAGNOSIS = "diagnosis"
DIAGNOSIS_TAG = "diagnosis/findings"
KIND_TRAIN_BEGIN = "train_begin"
TRAIN_BEGIN_TAG = "run/train_begin"
# ``run/train_begin``'s "probe": the user's probe_data (held-out data: S8, BN009, can be told), or the
# callback's default, the first training samples the train step ran on (the gap on training data).
PROBE_GIVEN = "probe_data"
PROBE_FIRST_TRAINING_BATCH = "first_training_batch"

# Channel-averaged moments (the "where is it" lines).
MOMENT_SERIES = (
    "batch_mean",
    "moving_mean",
    "debiased_mean",
    "batch_var",
    "moving_var",
    "debiased_var",
)
# Per-channel gaps between batch and moving moments, aggregated over channels.
GAP_MEASURES = ("mean_gap", "abs_log_var_ratio", "sym_kl")
GAP_AGGREGATES = ("mean", "p50", "p90", "max")
GAP_SERIES = tuple(f"{m}/{a}" for m in GAP_MEASURES for a in GAP_AGGREGATES)
# Signed channel mean of log((var_B+eps)/(var_R+eps)): > 0 means the batches
# are wider than the moving average (dropout before BN does that).
STATE_SERIES = ("log_var_ratio/mean", "convergence", "updates")
# How far the moving averages have moved from the values they started from
# (the pretrained statistics at a fine-tuning start), median over channels:
# |mu_R - mu_0| / sqrt(var_0 + eps) and |log((var_R + eps) / (var_0 + eps))|.
START_SERIES = ("start_mean_gap/p50", "start_abs_log_var_ratio/p50")
LAYER_SERIES = MOMENT_SERIES + GAP_SERIES + STATE_SERIES + START_SERIES
# The train/inference gap probe (tb_bnstats.measure.gap), per layer, on the
# fixed probe batch: ||y_train - y_inf|| / ||y_train|| of the layer's output
# in training vs inference mode, and the probe batch's own moments (training-
# mode pass) against the moving ones, median and max over channels.
PROBE_SERIES = ("probe_output_drift", "probe_mean_gap/p50", "probe_mean_gap/max",
                "probe_abs_log_var_ratio/p50")
# Population statistics ("PreciseBN", tb_bnstats.measure.population.population_stats)
# of each BN input, per layer: channel averages of the population mean and
# variance (a third line next to the moving and debiased averages), and the
# moving statistics against them with the formulas of mean_gap / log_var_ratio
# (population in the batch's place): how wrong inference's statistics are now.
POPULATION_SERIES = ("population_mean", "population_var", "population_mean_gap/p50", "population_mean_gap/max",
                     "population_abs_log_var_ratio/p50", "population_abs_log_var_ratio/max")
# Several replicas (tf.distribute.MirroredStrategy, keras.distribution.DataParallel, DDP), per layer and
# step. With R replicas of n_r values per channel, mu_r / var_r each replica's batch moments, mu / var the
# global batch's (pooled, quantities.pool_moments), per channel:
#   replica_mean_spread   (max_r mu_r - min_r mu_r) / sqrt(var + eps)
#   replica_var_ratio     (max_r var_r + eps) / (min_r var_r + eps)
#   replica_mean_gap      mean_r |mu_r - mu| / sqrt(var + eps)       (each replica's batch against the global
#   replica_abs_log_var_ratio  mean_r |log((var_r + eps) / (var + eps))|  one: the noise of its own moments)
#   replica_var_deficit   log((var + eps) / (mean_r var_r + eps))    (>= 0: the spread between replicas, which
#                                                                    per-replica variances miss)
#   rank_moving_spread / rank_moving_var_ratio: the same spread and ratio of the replicas' own moving
#   statistics (only where each keeps its own, LayerInfo.moving_per_replica)
# and replica_samples/min: the smallest n_r (values per channel in one replica's batch).
REPLICA_SERIES = ("replica_mean_spread/p50", "replica_mean_spread/max", "replica_var_ratio/p50",
                  "replica_var_ratio/max", "replica_mean_gap/p50", "replica_abs_log_var_ratio/p50",
                  "replica_var_deficit/mean", "replica_samples/min", "rank_moving_spread/p50",
                  "rank_moving_spread/max", "rank_moving_var_ratio/max")
# Rows of the per-replica snapshot tensor bn/<layer>/replicas, in order ([rows, replicas, channels]).
REPLICA_ROWS = ("batch_mean", "batch_var", "moving_mean", "moving_var")
REPLICAS_QUANTITY = "replicas"
KIND_LAYER_REPLICAS = "layer_replicas"

# Splits of metric/<split>/<name>.
METRIC_SPLITS = ("train", "val", "probe_train", "probe_inference", "probe_recalibrated")

# Rows of the per-channel snapshot tensor, in order.
SNAPSHOT_ROWS = (
    "batch_mean",
    "batch_var",
    "moving_mean",
    "moving_var",
    "debiased_mean",
    "debiased_var",
    "mean_gap",
    "log_var_ratio",
)
CHANNELS_QUANTITY = "channels"

LAYER_PREFIX = "bn/"
METRIC_PREFIX = "metric/"


# LayerInfo.framework: where a layer comes from, a name each framework folder defines
# (tb_bnstats.frameworks; the diagnosis speaks its words). Logs written before the field existed came from
# Keras 3, whose folder names its layers "keras".
DEFAULT_FRAMEWORK = "keras"


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """What is known about one batch-normalization layer, independent of the
    framework it comes from.

    ``init_mean`` / ``init_var`` are the moving statistics' initial values
    (channel average when the initializer is not constant); the debiased
    estimate removes ``momentum**t`` of them. ``ema_of`` says what the moving
    average runs over: ``"variance"`` (Keras, PyTorch) or ``"stddev"`` (Keras
    with ``renorm=True``, where ``moving_var = ema(std)**2 - eps``).
    ``moving_var_unbiased`` is True when the moving variance accumulates
    Bessel-corrected batch variances (tf_keras' fused kernel, PyTorch).

    What the user meant (the diagnosis tells a bug from a choice by it):
    ``frozen`` is True for a layer frozen on purpose -- Keras'
    ``trainable=False`` (set on the layer or on a model around it), a PyTorch
    module kept in ``eval()`` while the model trains with its affine
    parameters not requiring gradients. ``graph_training_false`` is True
    when a Keras functional graph calls the layer, or a model around it,
    with ``training=False`` (``base(x, training=False)``): ``fit`` overrides
    that (keras-team/keras#20285), so such a layer still trains unless it is
    frozen. ``affine_frozen`` is True for a layer that updated its moving
    statistics in training while its scale and offset were not trained
    (PyTorch: ``requires_grad=False`` on a module left in ``train()``, the
    usual way to "freeze" BN there, which does not stop the running
    statistics from moving).

    ``batch_samples`` is the number of examples in a training batch (the
    first one logged; 0 when unknown): the rules derive the sampling noise
    of the batch moments from it.

    ``momentum`` is in Keras' convention, the weight the average keeps on its
    old value: ``moving = m * moving + (1 - m) * batch`` (PyTorch's
    ``momentum=0.1`` is 0.9 here); None means a cumulative average of every
    batch so far (PyTorch's ``momentum=None``), for which one update already
    leaves no weight on the initial value.

    Several devices or processes: ``replicas`` is how many replicas ran the
    layer, each on its own slice of the global batch (1 on one device). The
    logged batch moments are then those of the global batch, pooled from the
    replicas' own; ``synchronized`` is True when the layer normalized with
    the global batch's moments (Keras ``synchronized=True``, PyTorch
    ``SyncBatchNorm``, or moments global by construction, as when JAX shards
    one batch over devices) and False when each replica normalized with its
    own slice's. ``moving_per_replica`` is True when each replica keeps its
    own moving statistics (Keras 3 under ``MirroredStrategy``, DDP between
    buffer broadcasts): the logged ones are replica 0's, what a checkpoint
    written by the chief holds.

    TensorFlow 1-style graphs (``framework="tf.compat.v1"``):
    ``update_ops_left_out`` is True when a logged train call ran the layer
    in training mode without running its moving-average update ops (a train
    op built without ``tf.control_dependencies(UPDATE_OPS)``).

    Raises:
        ValueError: a field out of its range (momentum outside [0, 1),
            negative epsilon, no channel, an unknown ``ema_of``, fewer than
            one replica).
    """

    name: str
    channels: int
    momentum: float | None
    epsilon: float
    init_mean: float = 0.0
    init_var: float = 1.0
    ema_of: str = "variance"
    moving_var_unbiased: bool = False
    depth: int = 0
    layer_class: str = "BatchNormalization"
    framework: str = DEFAULT_FRAMEWORK
    trainable: bool = True
    synchronized: bool = False
    renorm: bool = False
    frozen: bool = False
    graph_training_false: bool = False
    replicas: int = 1
    moving_per_replica: bool = False
    update_ops_left_out: bool = False
    affine_frozen: bool = False
    batch_samples: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"layer name must be a non-empty string, got {self.name!r}")
        if self.momentum is not None and not 0.0 <= float(self.momentum) < 1.0:
            raise ValueError(f"{self.name}: momentum must be in [0, 1), got {self.momentum!r}")
        if not float(self.epsilon) >= 0.0:
            raise ValueError(f"{self.name}: epsilon must be >= 0, got {self.epsilon!r}")
        if int(self.channels) < 1:
            raise ValueError(f"{self.name}: channels must be >= 1, got {self.channels!r}")
        if int(self.replicas) < 1:
            raise ValueError(f"{self.name}: replicas must be >= 1, got {self.replicas!r}")
        if self.ema_of not in ("variance", "stddev"):
            raise ValueError(f"{self.name}: ema_of must be 'variance' or 'stddev', got {self.ema_of!r}")

    def to_dict(self) -> dict[str, Any]:
        """The description as stored in a summary's metadata."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LayerInfo":
        """A description read from a log; fields a newer writer added are ignored.

        Raises:
            ValueError, TypeError: a field missing or out of range.
        """
        return from_known_fields(cls, d)


def from_known_fields(cls: type[_T], d: Mapping[str, Any]) -> _T:
    """Builds dataclass ``cls`` from a dict read from a log, ignoring keys a
    newer writer added."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # cls: a dataclass
    return cls(**{k: v for k, v in d.items() if k in known})


def layer_tag(layer_name: str, quantity: str) -> str:
    """``bn/<layer>/<quantity>``: the tag of one layer's series or snapshot."""
    return f"{LAYER_PREFIX}{layer_name}/{quantity}"


def envelope_step_columns(quantities: int) -> list[int]:
    """The columns of an envelope row (of ``quantities`` quantities) that
    hold steps, stored as offsets below the record's step: its first and
    last step and each quantity's ``argmin`` and ``argmax``."""
    head, width = len(ENVELOPE_HEAD), len(ENVELOPE_STATS)
    return [ENVELOPE_HEAD.index("first_step"), ENVELOPE_HEAD.index("last_step")] + [
        head + q * width + ENVELOPE_STATS.index(stat) for q in range(quantities) for stat in ("argmin", "argmax")]


def layer_log_tag(layer_name: str, part: str, segment: int) -> str:
    """``bn/<layer>/<part>/<segment>``: the tag of one segment of a layer log."""
    return f"{LAYER_PREFIX}{layer_name}/{part}/{int(segment)}"


def metric_log_tag(split: str, name: str, part: str, segment: int) -> str:
    """``metric/<split>/<name>/<part>/<segment>``: one segment of a per-step metric's log."""
    return f"{METRIC_PREFIX}{split}/{name}/{part}/{int(segment)}"


def metric_tag(split: str, name: str) -> str:
    """``metric/<split>/<name>``: the tag of one metric."""
    return f"{METRIC_PREFIX}{split}/{name}"


def _metadata(content: dict[str, Any], data_class: int) -> summary_pb2.SummaryMetadata:
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=PLUGIN_NAME,
            content=json.dumps(content, sort_keys=True).encode("utf-8"),
        ),
        data_class=data_class,
    )


def layer_series_metadata(info: LayerInfo, quantity: str) -> summary_pb2.SummaryMetadata:
    """SCALAR metadata of ``bn/<layer>/<quantity>``."""
    return _metadata(
        {"version": FORMAT_VERSION, "kind": KIND_LAYER_SERIES, "layer": info.to_dict(), "quantity": quantity},
        summary_pb2.DATA_CLASS_SCALAR,
    )


def layer_log_metadata(info: LayerInfo, part: str, quantities: Iterable[str]) -> summary_pb2.SummaryMetadata:
    """TENSOR metadata of a layer log segment (:data:`PART_STEPS` or
    :data:`PART_ENVELOPE`) whose columns follow ``quantities``."""
    return _metadata({"version": FORMAT_VERSION, "kind": KIND_LAYER_LOG, "layer": info.to_dict(), "part": part,
                      "quantities": list(quantities)}, summary_pb2.DATA_CLASS_TENSOR)


def _layer_tensor_metadata(info: LayerInfo, kind: str, quantity: str,
                           rows: Iterable[str]) -> summary_pb2.SummaryMetadata:
    return _metadata({"version": FORMAT_VERSION, "kind": kind, "layer": info.to_dict(), "quantity": quantity,
                      "rows": list(rows)}, summary_pb2.DATA_CLASS_TENSOR)


def layer_channels_metadata(info: LayerInfo) -> summary_pb2.SummaryMetadata:
    """TENSOR metadata of ``bn/<layer>/channels`` (rows: :data:`SNAPSHOT_ROWS`)."""
    return _layer_tensor_metadata(info, KIND_LAYER_CHANNELS, CHANNELS_QUANTITY, SNAPSHOT_ROWS)


def layer_replicas_metadata(info: LayerInfo) -> summary_pb2.SummaryMetadata:
    """TENSOR metadata of ``bn/<layer>/replicas`` (rows: :data:`REPLICA_ROWS`)."""
    return _layer_tensor_metadata(info, KIND_LAYER_REPLICAS, REPLICAS_QUANTITY, REPLICA_ROWS)


def metric_metadata(split: str, name: str) -> summary_pb2.SummaryMetadata:
    """SCALAR metadata of ``metric/<split>/<name>``."""
    return _metadata(
        {"version": FORMAT_VERSION, "kind": KIND_METRIC, "split": split, "name": name},
        summary_pb2.DATA_CLASS_SCALAR,
    )


def metric_log_metadata(split: str, name: str, part: str) -> summary_pb2.SummaryMetadata:
    """TENSOR metadata of a segment of a per-step metric's log (one column, ``name``)."""
    return _metadata({"version": FORMAT_VERSION, "kind": KIND_METRIC_LOG, "split": split, "name": name,
                      "part": part, "quantities": [name]}, summary_pb2.DATA_CLASS_TENSOR)


def train_begin_metadata() -> summary_pb2.SummaryMetadata:
    """TENSOR (JSON) metadata of :data:`TRAIN_BEGIN_TAG`."""
    return _metadata({"version": FORMAT_VERSION, "kind": KIND_TRAIN_BEGIN, "encoding": "json"},
                     summary_pb2.DATA_CLASS_TENSOR)


def diagnosis_metadata() -> summary_pb2.SummaryMetadata:
    """TENSOR (JSON) metadata of :data:`DIAGNOSIS_TAG`."""
    return _metadata({"version": FORMAT_VERSION, "kind": KIND_DIAGNOSIS, "encoding": "json"},
                     summary_pb2.DATA_CLASS_TENSOR)


KINDS = (KIND_LAYER_LOG, KIND_LAYER_SERIES, KIND_LAYER_CHANNELS, KIND_LAYER_REPLICAS, KIND_METRIC, KIND_METRIC_LOG,
         KIND_DIAGNOSIS, KIND_TRAIN_BEGIN)


def parse_content(content: bytes) -> dict[str, Any] | None:
    """Decodes a summary's plugin content.

    Args:
        content: ``SummaryMetadata.plugin_data.content`` of one tag.

    Returns:
        The JSON object, or None when it is not ours or is unreadable (a
        corrupted or foreign record must not break a reader). A record of a
        newer version than :data:`FORMAT_VERSION` is returned as well, with
        its ``version``: a newer writer only adds fields and kinds, so the
        known ones are read; :func:`is_newer` tells the caller to say so.
        An unknown kind (of any version) is None.
    """
    try:
        parsed = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("version"), int) or isinstance(
            parsed.get("version"), bool):
        return None
    if parsed.get("kind") not in KINDS:
        return None
    return parsed


def is_newer(parsed: Mapping[str, Any]) -> bool:
    """Whether a record from :func:`parse_content` was written by a newer
    format version than this reader knows."""
    return parsed["version"] > FORMAT_VERSION


def newer_version_message(versions: Iterable[int]) -> str:
    """What readers say about records of newer format versions."""
    return (f"written by a newer tb_bnstats (log format version {max(versions)}; this one reads version "
            f"{FORMAT_VERSION}): shown as far as this version understands it; upgrade tb_bnstats "
            f"(pip install -U tb_bnstats) to see everything")
