"""The recording options, defined once: :class:`Options`, which every
adapter (the Keras callback, the PyTorch monitor, the graph monitors) builds
from its keyword arguments and hands to the recorder."""

import dataclasses
import fnmatch
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from tb_bnstats.format import filesystem, metadata
from tb_bnstats.measure import data as batches
from tb_bnstats.write import summary

# The measurements' time budget by default (Options.measure_budget): the probe (with the checks on its batch)
# and the population measurement may each take 1% of the training time.
MEASURE_BUDGET = 0.01

# ``Options.probe_source`` without a probe (else metadata.PROBE_GIVEN / PROBE_FIRST_TRAINING_BATCH, logged in
# ``run/train_begin`` as "probe").
PROBE_OFF = None


def positive_int(name: str, value: Any, allow_zero: bool = False) -> int:
    """``value`` as an int.

    Raises:
        ValueError: not an integer >= 1 (>= 0 with ``allow_zero``).
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be an integer >= {0 if allow_zero else 1}, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True, eq=False)
class Options:
    """What to record and when: the options every adapter takes as keyword
    arguments (``BNStatsCallback(log_dir, **options)``,
    ``BNStatsMonitor(model, log_dir, **options)``; the graph monitors take
    the first six). Checked at construction; the values are kept
    normalized (``layers`` a tuple, the strides ints, ``None`` strides 0).

    Attributes:
        log_dir: directory of this run's event files (TensorBoard's run): a
            local path or a URL (``s3://bucket/run``, ``gs://...``, any
            fsspec protocol; :mod:`tb_bnstats.format.filesystem`).
        log_every_n_steps: log every N optimizer steps (1 = every step). The
            moments logged are those of the step logged; the train loss and
            mean-type metrics are the mean over the steps since the last log.
            Every logged step is kept, one by one or in its interval's
            envelope (:mod:`tb_bnstats.write.resolution`).
        snapshot_every_n_steps: write the full per-channel snapshot every N
            steps over the first 1,000, twice as far apart at each level of
            the log after that (0 = only at the end of each run: each
            ``fit``, or ``close()``).
        layers: optional list of layer names or glob patterns (``"block1/*"``;
            PyTorch module paths such as ``"layer1.*"``; graph scope names)
            to monitor; default all BN layers.
        log_metrics: also log training loss/metrics per step and validation
            metrics per epoch on the same step axis.
        flush_secs: what the device kept is read and written at least this
            often (default 30 s): TensorBoard shows a step within about
            this, plus its reload interval.
        verbose: 1 prints what was found and which layers are frozen; 0 is quiet.
        probe_data: the batch of the train/inference gap probe
            (:mod:`tb_bnstats.measure.gap`). None (default): with Keras, the
            first 256 training samples the train step runs on (copied inside
            the step, over its first batches: the data pipeline is not
            touched), kept for the whole run -- the gap on training data,
            the "99% in training mode, 20% in inference mode" symptom; with
            PyTorch, no probe (the monitor never sees the training
            batches' labels). Better, held-out (validation) data: arrays
            ``(x, y)`` (or ``x``; tensors with PyTorch) of which the first
            256 rows are used, or a ``tf.data.Dataset`` / ``PyDataset`` /
            ``DataLoader`` / iterable of batches of which the first batch
            (cut to 256 rows) is taken once at the start; with it the probe
            also tells eval data that differ from the training data (BN009;
            Keras 3 does not hand ``fit``'s validation data to callbacks).
            False: no probe. The batch runs through the model in training
            and in inference mode without changing any state (two forward
            passes); logged are loss and compiled metrics of both modes
            (metric splits ``probe_train`` / ``probe_inference``) and per BN
            layer :data:`tb_bnstats.format.metadata.PROBE_SERIES`. Sample
            weights are ignored. A probe step is always a logged step (the
            layer series are logged there too). A probe that fails (e.g.
            data of the wrong shape) warns once and is turned off.
        probe_every_n_steps: run the probe at the first step, every N
            optimizer steps and at each epoch end; None or 0 (default): at
            each epoch end only; in either case skipped while over
            ``measure_budget``. Each probe is two forward passes of the
            probe batch.
        population_data: data to measure each BN input's population mean
            and variance on ("PreciseBN",
            :func:`tb_bnstats.population_stats`; training data,
            as arrays or a re-iterable dataset / ``DataLoader``): logged per
            layer as :data:`tb_bnstats.format.metadata.POPULATION_SERIES`, a
            third line next to the moving and debiased averages and how far
            the moving averages are from it. Nothing in the model changes.
            None (default): not measured.
        population_every_n_steps: measure at the first step, every N steps
            and at each epoch end; None or 0 (default): at each epoch end;
            skipped while over ``measure_budget``.
        population_samples: examples per measurement (whole batches);
            PreciseBN finds 10**3-10**4 near-optimal. Costs about
            ``population_samples / batch`` forward passes.
        population_batch_size: batch size to cut arrays into; use the
            training batch size (upstream BN layers normalize each batch with
            its own moments, as in training).
        measure_budget: the share of the training time the measurements on
            the model may take (default :data:`MEASURE_BUDGET`, 0.01: 1%):
            the probe and the checks on the probe batch at the end of a run
            together, and the population measurement on its own. A due
            measurement is skipped while its time so far plus what it took
            last time would exceed this share of the training time so far
            (wall time inside training runs, across ``fit`` calls), and
            runs at the next due point that fits; the first of each runs at
            once. A check on the model skipped at a run's end repeats its
            last findings. None: no budget, every due measurement runs.
        default_probe: the adapter's, not the user's: whether
            ``probe_data=None`` probes the first training batch (True, the
            Keras callback) or means no probe (False: the PyTorch and graph
            monitors, which never see the labels).

    Raises:
        ValueError: an option out of its range, or a stride given without
            the data it needs; a ``log_dir`` URL of a protocol fsspec does
            not know.
        ImportError: a ``log_dir`` URL (``s3://``, ``gs://``...) whose file
            system's package is not installed (the message says what to
            install).
    """

    log_dir: str | os.PathLike[str]
    log_every_n_steps: int = 1
    snapshot_every_n_steps: int = 100
    layers: Iterable[str] | None = None
    log_metrics: bool = True
    flush_secs: float = summary.DEFAULT_FLUSH_SECS
    verbose: int = 1
    probe_data: Any = None
    probe_every_n_steps: int | None = None
    population_data: Any = None
    population_every_n_steps: int | None = None
    population_samples: int = 2048
    population_batch_size: int = 32
    measure_budget: float | None = MEASURE_BUDGET
    default_probe: bool = dataclasses.field(default=True, repr=False)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        log_dir = self.log_dir
        if not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
            raise ValueError(f"log_dir must be a non-empty path, got {log_dir!r}")
        put("log_dir", os.fspath(log_dir))
        filesystem.check(os.fspath(log_dir))  # a URL whose file system's package is missing: said now, not mid-training
        put("log_every_n_steps", positive_int("log_every_n_steps", self.log_every_n_steps))
        put("snapshot_every_n_steps", positive_int("snapshot_every_n_steps", self.snapshot_every_n_steps,
                                                   allow_zero=True))
        layers = self.layers
        if layers is not None:
            if isinstance(layers, str) or not all(isinstance(p, str) and p for p in layers):
                raise ValueError(f"layers must be a list of layer names or glob patterns, got {layers!r}")
            put("layers", tuple(layers))
        put("log_metrics", bool(self.log_metrics))
        flush_secs = self.flush_secs
        if isinstance(flush_secs, bool) or not isinstance(flush_secs, (int, float)) or not flush_secs > 0:
            raise ValueError(f"flush_secs must be a number > 0, got {flush_secs!r}")
        put("flush_secs", float(flush_secs))
        if self.verbose not in (0, 1, True, False):
            raise ValueError(f"verbose must be 0 or 1, got {self.verbose!r}")
        put("verbose", int(self.verbose))
        probe_data = self.probe_data
        if probe_data is True:
            raise ValueError("probe_data must be data (arrays, a dataset), None (the default probe) or False (none), "
                             "got True")
        if probe_data is not None and probe_data is not False:
            batches.validate_data(probe_data, "probe_data")
        put("probe_every_n_steps", 0 if self.probe_every_n_steps is None else
            positive_int("probe_every_n_steps", self.probe_every_n_steps, allow_zero=True))
        if self.probe_every_n_steps and self.probe_source == PROBE_OFF:
            raise ValueError("probe_every_n_steps needs probe_data (the batch to probe)"
                             + (", and probe_data=False turns the probe off" if probe_data is False else ""))
        if self.population_data is not None:
            batches.validate_data(self.population_data, "population_data")
        put("population_every_n_steps", 0 if self.population_every_n_steps is None else positive_int(
            "population_every_n_steps", self.population_every_n_steps, allow_zero=True))
        if self.population_every_n_steps and self.population_data is None:
            raise ValueError("population_every_n_steps needs population_data (the data to measure on)")
        put("population_samples", positive_int("population_samples", self.population_samples))
        put("population_batch_size", positive_int("population_batch_size", self.population_batch_size))
        budget = self.measure_budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float, np.number))
                                   or not 0 < budget <= 1):
            raise ValueError(f"measure_budget must be a share of the training time in (0, 1] (0.01: 1%) or None "
                             f"(no budget), got {budget!r}")
        put("measure_budget", None if budget is None else float(budget))
        put("default_probe", bool(self.default_probe))

    @classmethod
    def of(cls, owner: str, log_dir: Any, options: Mapping[str, Any], accepted: Iterable[str] | None = None,
           **adapter: Any) -> "Options":
        """The options an adapter was given as keyword arguments.

        Args:
            owner: the adapter's name, for the error.
            log_dir: its ``log_dir``.
            options: its other keyword arguments, each a field's name.
            accepted: the fields it takes (default every user option).
            **adapter: the adapter's own fields (``default_probe``).

        Raises:
            TypeError: a keyword that is not one of ``accepted``, naming them.
            ValueError: see the class.
        """
        valid = tuple(accepted) if accepted is not None else USER_OPTIONS
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise TypeError(f"{owner} got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                            f"its options are log_dir, {', '.join(valid)} (see tb_bnstats.Options)")
        return cls(log_dir, **options, **adapter)

    @property
    def probe_source(self) -> str | None:
        """Where the probe's batch comes from: ``metadata.PROBE_GIVEN``
        (``probe_data``), ``metadata.PROBE_FIRST_TRAINING_BATCH`` (the
        default probe) or :data:`PROBE_OFF`."""
        if self.probe_data is not None and self.probe_data is not False:
            return metadata.PROBE_GIVEN
        if self.probe_data is None and self.default_probe:
            return metadata.PROBE_FIRST_TRAINING_BATCH
        return PROBE_OFF

    @property
    def probe_batches(self) -> Any:
        """The data the probe batch is taken from (None: none given)."""
        return None if self.probe_data is False else self.probe_data

    def selected(self, name: str) -> bool:
        """Whether layer ``name`` matches ``layers`` (all when None)."""
        return self.layers is None or any(fnmatch.fnmatchcase(name, p) for p in self.layers)


# The options a user gives (every field but log_dir and the adapter's own), in order.
USER_OPTIONS = tuple(f.name for f in dataclasses.fields(Options) if f.name not in ("log_dir", "default_probe"))
# The options of the graph monitors (no measurement passes there).
GRAPH_OPTIONS = USER_OPTIONS[:6]
