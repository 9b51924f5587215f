"""``BNStatsCallback``: the Keras callback that ties capture, quantities and
the summary writer together. It never stops training: a monitoring failure is
a warning."""

import atexit
import fnmatch
import os
import warnings
import weakref

import keras
import numpy as np

from tb_bnstats import population, quantities, summary
from tb_bnstats.capture import probe as gap_probe
from tb_bnstats.capture.keras_capture import KerasCapture, find_batchnorm_layers

_OPEN_WRITERS = weakref.WeakSet()
# The callback diagnoses each fit at its end from the last this many logged
# steps, kept in memory by the writer (~350 bytes per layer per step: 14 MB
# for 20 layers, 140 MB for 200; measured by bench/scale.py).
DIAGNOSIS_HISTORY = 2000


@atexit.register
def _close_open_writers():
    """A run that raises out of ``fit`` never reaches ``on_train_end``: flush
    its records when the interpreter exits."""
    for writer in list(_OPEN_WRITERS):
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


def _positive_int(name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be an integer >= {0 if allow_zero else 1}, got {value!r}")
    return int(value)


def _stride_due(step, every, last_step):
    """Whether something done every ``every`` steps (0: never), last at
    ``last_step`` (None: not yet), is due at ``step``: ``step`` is in a new
    stride of ``every`` steps."""
    return every > 0 and (last_step is None or step // every != last_step // every)


class BNStatsCallback(keras.callbacks.Callback):
    """Logs every BatchNormalization layer's batch moments against its moving
    averages, every training step, for TensorBoard's BN Convergence tab.

    Example::

        model.fit(x, y, epochs=5, callbacks=[tb_bnstats.BNStatsCallback("logs/run1")])
        # then: tensorboard --logdir logs   and open the "BN Convergence" tab

    Args:
        log_dir: directory of this run's event files (TensorBoard's run).
        log_every_n_steps: log every N optimizer steps (1 = every step). The
            moments logged are those of the step logged; the train loss and
            mean-type metrics are the mean over the steps since the last log.
        snapshot_every_n_steps: write the full per-channel snapshot every N
            steps (0 = only at the end of each ``fit``).
        layers: optional list of layer names or glob patterns (``"block1/*"``)
            to monitor; default all BN layers.
        log_metrics: also log training loss/metrics per step and validation
            metrics per epoch on the same step axis.
        flush_secs: written records reach the disk at least this often.
        verbose: 1 prints what was found and which layers are frozen; 0 is quiet.
        probe_data: a fixed probe batch for the train/inference gap probe
            (:mod:`tb_bnstats.capture.probe`): arrays ``(x, y)`` (or ``x``)
            of which the first 256 rows are used, or a ``tf.data.Dataset``
            / ``PyDataset`` / iterable of batches of which the first batch
            (cut to 256 rows) is taken once at train begin. Use held-out
            (validation) data. The batch runs through the model in training
            and in inference mode without changing any state; logged are
            loss and compiled metrics of both modes (metric splits
            ``probe_train`` / ``probe_inference``) and per BN layer
            :data:`tb_bnstats.metadata.PROBE_SERIES`. None (default): no
            probe. Keras 3 does not hand ``fit``'s validation data to
            callbacks, so the probe is off unless this is given. Sample
            weights are ignored. A probe step is always a logged step (the
            layer series are logged there too). A probe that fails (e.g.
            data of the wrong shape) warns once and is turned off.
        probe_every_n_steps: run the probe at the first step, every N
            optimizer steps and at each epoch end; None or 0 (default): at
            each epoch end only.
            Each probe is two forward passes of the probe batch.
        population_data: data to measure each BN input's population mean
            and variance on ("PreciseBN",
            :func:`tb_bnstats.population.population_stats`; training data,
            as arrays or a re-iterable dataset): logged per layer as
            :data:`tb_bnstats.metadata.POPULATION_SERIES`, a third line next
            to the moving and debiased averages and how far the moving
            averages are from it. Nothing in the model changes. None
            (default): not measured.
        population_every_n_steps: measure at the first step, every N steps
            and at each epoch end; None or 0 (default): at each epoch end.
        population_samples: examples per measurement (whole batches);
            DESIGN.md §3: 10**3-10**4 is near-optimal. Costs about
            ``population_samples / batch`` forward passes.
        population_batch_size: batch size to cut arrays into; use the
            training batch size (upstream BN layers normalize each batch with
            its own moments, as in training).

    The step is the optimizer's iteration count after the step, so it goes on
    across ``fit`` calls and after restoring a checkpoint (``model.save`` /
    ``load_model``, or ``load_weights`` into a built optimizer). Each layer's
    update count ``t`` (convergence ``1 - m**t``, debiased estimate) goes on
    too: in the same process it simply continues; in a model restored with
    its moving statistics, it starts from the optimizer's step (an estimate:
    one update per training step) with the initializers' values as the
    starting point. A trainable layer found at its initial values after
    training steps is recorded and diagnosed (BN008). With
    ``steps_per_execution = k > 1`` Keras returns to Python once every k
    steps: the last step of each execution is logged.
    """

    def __init__(self, log_dir, log_every_n_steps=1, snapshot_every_n_steps=100, layers=None,
                 log_metrics=True, flush_secs=summary.DEFAULT_FLUSH_SECS, verbose=1, probe_data=None,
                 probe_every_n_steps=None, population_data=None, population_every_n_steps=None,
                 population_samples=2048, population_batch_size=32):
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
            raise ValueError(f"log_dir must be a non-empty path, got {log_dir!r}")
        self.log_dir = os.fspath(log_dir)
        self.log_every_n_steps = _positive_int("log_every_n_steps", log_every_n_steps)
        self.snapshot_every_n_steps = _positive_int("snapshot_every_n_steps", snapshot_every_n_steps, allow_zero=True)
        if layers is not None:
            if isinstance(layers, str) or not all(isinstance(p, str) and p for p in layers):
                raise ValueError(f"layers must be a list of layer names or glob patterns, got {layers!r}")
            layers = list(layers)
        self.layer_patterns = layers
        self.log_metrics = bool(log_metrics)
        if isinstance(flush_secs, bool) or not isinstance(flush_secs, (int, float)) or not flush_secs > 0:
            raise ValueError(f"flush_secs must be a number > 0, got {flush_secs!r}")
        self.flush_secs = float(flush_secs)
        if verbose not in (0, 1, True, False):
            raise ValueError(f"verbose must be 0 or 1, got {verbose!r}")
        self.verbose = int(verbose)
        if probe_data is not None:
            population.validate_data(probe_data, "probe_data")
        self.probe_data = probe_data
        self.probe_every_n_steps = (0 if probe_every_n_steps is None else
                                    _positive_int("probe_every_n_steps", probe_every_n_steps, allow_zero=True))
        if self.probe_every_n_steps and probe_data is None:
            raise ValueError("probe_every_n_steps needs probe_data (the batch to probe)")
        if population_data is not None:
            population.validate_data(population_data, "population_data")
        self.population_data = population_data
        self.population_every_n_steps = (0 if population_every_n_steps is None else _positive_int(
            "population_every_n_steps", population_every_n_steps, allow_zero=True))
        if self.population_every_n_steps and population_data is None:
            raise ValueError("population_every_n_steps needs population_data (the data to measure on)")
        self.population_samples = _positive_int("population_samples", population_samples)
        self.population_batch_size = _positive_int("population_batch_size", population_batch_size)
        self._population_on = False
        self._last_reading = None  # the capture's reading at the last logged step
        self._probe = None
        self._capture = None
        self._writer = None
        self._infos = None
        self._failures = set()
        self.findings = None  # the diagnosis of the last fit (tb_bnstats.diagnosis.Finding list)

    # -- helpers -------------------------------------------------------------

    def _say(self, message):
        if self.verbose:
            print(f"tb_bnstats: {message}")

    def _guard(self, where, fn, *args):
        """Runs ``fn``; a failure warns once per place and never reaches Keras."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - monitoring must not stop training
            if where not in self._failures:
                self._failures.add(where)
                warnings.warn(f"tb_bnstats: {where} failed, training continues without it: "
                              f"{type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=3)
            return None

    def _selected(self, name):
        return self.layer_patterns is None or any(fnmatch.fnmatchcase(name, p) for p in self.layer_patterns)

    # -- Keras hooks -----------------------------------------------------------

    def set_model(self, model):
        super().set_model(model)
        # Keras calls this before it makes the train function: instrument now.
        self._capture = self._guard("instrumenting the model", KerasCapture, model)
        self._infos = None
        if self._probe is not None and self._probe.model is not model:
            self._probe = None  # made again for this model at train begin; kept (traced) across fits
        if self._capture is None:
            return
        names = [n for n in self._capture.names if self._selected(n)]
        if not self._capture.names:
            warnings.warn(f"tb_bnstats: found no BatchNormalization layer in model {model.name!r}; "
                          "only metrics will be logged", RuntimeWarning, stacklevel=2)
        elif not names:
            warnings.warn(f"tb_bnstats: no BatchNormalization layer matches layers={self.layer_patterns!r}; "
                          f"found: {self._capture.names}", RuntimeWarning, stacklevel=2)
        else:
            self._say(f"monitoring {len(names)} BatchNormalization layer(s) of {model.name!r} -> {self.log_dir}")

    def on_train_begin(self, logs=None):
        self._last_logged_step = self._last_snapshot_step = None
        self._last_totals = {}
        if self._capture is not None:
            self._guard("opening the log directory", self._open_writer)
            self._step = self._guard("reading the step", lambda: int(self.model.optimizer.iterations.numpy()))
            if self._writer is not None and self._step is not None:
                self._guard("checking for a restored run", self._log_train_begin)
        self._last_probe_step = self._last_population_step = None
        self._population_on = self.population_data is not None and self._writer is not None
        if self.probe_data is not None and self._probe is None and self._writer is not None:
            self._probe = self._guard("preparing the train/inference probe", self._make_probe)

    def _make_probe(self):
        x, y = gap_probe.take_probe_batch(self.probe_data)
        named = [(n, layer) for n, layer in find_batchnorm_layers(self.model) if self._selected(n)]
        return gap_probe.GapProbe(self.model, x, y, named)

    def _log_train_begin(self):
        """At each ``fit``'s start: in a run restored from a checkpoint
        (optimizer step > 0, layers this process has not counted yet), the
        update counts of layers whose moving statistics were restored
        continue from the step (:meth:`KerasCapture.resume`); trainable
        layers whose moving statistics are still at their initial values
        were not restored (S3, BN008). Both lists go into the log
        (``run/train_begin``) at this step."""
        states = self._capture.resume(self._step)
        listed = lambda state: [n for n in self._capture.names if states.get(n) == state and self._selected(n)]  # noqa: E731
        record = {"resumed": listed("resumed"), "moving_at_initializer": listed("at_initializer")}
        self._writer.train_begin(self._step, record)
        if record["resumed"]:
            self._say(f"resumed at step {self._step}: update counts of {len(record['resumed'])} layer(s) "
                      f"continue from {self._step}")
        if record["moving_at_initializer"]:
            self._say(f"step {self._step}, but the moving statistics of {record['moving_at_initializer']} are at "
                      "their initial values: not restored with the weights? (BN008)")

    def _open_writer(self):
        self._writer = summary.Writer(self.log_dir, flush_secs=self.flush_secs, keep_history=DIAGNOSIS_HISTORY)
        _OPEN_WRITERS.add(self._writer)

    def on_epoch_begin(self, epoch, logs=None):
        self._last_totals = {}  # Keras resets its metrics at each epoch
        self._epoch_start_step = self._step

    def on_train_batch_end(self, batch, logs=None):
        if self._writer is None or self._step is None:
            return
        # Keras passes the index of the last step run in this epoch: a step
        # count without a device round trip, to skip steps not logged.
        self._step = self._epoch_start_step + batch + 1
        probe_due = self._probe is not None and _stride_due(self._step, self.probe_every_n_steps, self._last_probe_step)
        population_due = self._population_on and _stride_due(self._step, self.population_every_n_steps,
                                                             self._last_population_step)
        if not (probe_due or population_due
                or _stride_due(self._step, self.log_every_n_steps, self._last_logged_step)):
            return
        self._guard("logging batch statistics", self._log_step, logs, False)
        if probe_due:
            self._run_probe()
        if population_due:
            self._run_population()

    def _run_probe(self):
        """The probe at the last logged step (logged first, so the probe's
        points fall on steps of the layer series); a failure turns it off."""
        if self._last_logged_step is None or self._last_logged_step == self._last_probe_step:
            return
        if self._guard("running the train/inference probe", self._log_probe, self._last_logged_step) is None:
            self._probe = None

    def _log_probe(self, step):
        result = self._probe.run()
        if self.log_metrics:
            self._writer.metrics("probe_train", result.metrics_train, step)
            self._writer.metrics("probe_inference", result.metrics_inference, step)
        for name, info in self._layer_infos().items():
            if name in result.layers:
                self._writer.probe(info, step, gap_probe.layer_series(info, result.layers[name]))
        self._last_probe_step = step
        return True

    def _run_population(self):
        """Population statistics at the last logged step; a failure (data
        exhausted, wrong shape) turns them off."""
        if self._last_logged_step is None or self._last_logged_step == self._last_population_step:
            return
        if self._guard("measuring population statistics", self._log_population, self._last_logged_step) is None:
            self._population_on = False

    def _log_population(self, step):
        stats = population.population_stats(self.model, self.population_data, num_samples=self.population_samples,
                                            batch_size=self.population_batch_size)
        for name, info in self._layer_infos().items():
            pop, moments = stats.get(name), self._last_reading.layers.get(name)
            if pop is not None and moments is not None:
                self._writer.population(info, step, quantities.population_series(
                    info.epsilon, pop.mean, pop.var, moments.moving_mean, moments.moving_var))
        self._last_population_step = step
        return True

    def _layer_infos(self):
        if self._infos is None:
            infos = [i for i in self._capture.layer_infos() if self._selected(i.name)]
            self._infos = {info.name: info for info in infos}
            frozen = [i.name for i in infos if not i.trainable]
            if frozen:
                self._say(f"frozen (trainable=False), moving averages not updated: {frozen}")
            missing = [n for n in self._capture.not_run() if self._selected(n)]
            if missing:
                self._say(f"not called by the train step, not logged: {missing}")
        return self._infos

    def _log_step(self, logs, final):
        reading = self._capture.read()
        if reading is None:
            return
        step = reading.step
        self._last_reading = reading
        new_step = step != self._last_logged_step
        last_snap = self._last_snapshot_step
        snapshot = step != last_snap and (final or _stride_due(step, self.snapshot_every_n_steps, last_snap))
        if not (new_step or snapshot):
            return
        for name, info in self._layer_infos().items():
            moments = reading.layers.get(name)
            if moments is not None:
                self._writer.layer(info, step, moments.batch_mean, moments.batch_var, moments.moving_mean,
                                   moments.moving_var, moments.updates, snapshot=snapshot, series=new_step,
                                   init_mean=moments.init_mean, init_var=moments.init_var)
        if self.log_metrics and logs and new_step:
            self._writer.metrics("train", self._per_step_metrics(logs, reading.metric_totals), step)
        self._last_logged_step = step
        if snapshot:
            self._last_snapshot_step = step

    def _per_step_metrics(self, logs, totals):
        """Keras reports loss and mean-type metrics as running means since the
        epoch began; from their ``(total, count)`` the value over just the
        steps since the last log is ``(total - total') / (count - count')``.
        Other metrics are logged as Keras gives them."""
        out = {}
        for name, value in logs.items():
            if name in totals:
                total, count = totals[name]
                last_total, last_count = self._last_totals.get(name, (0.0, 0.0))
                self._last_totals[name] = (total, count)
                if count > last_count:
                    value = (total - last_total) / (count - last_count)
            try:
                out[name] = float(value)
            except (TypeError, ValueError):
                continue
        return out

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is not None and (self._probe is not None or self._population_on):
            # The epoch's last step may not be on the logging stride: log it.
            self._guard("logging batch statistics", self._log_step, None, False)
            if self._probe is not None:
                self._run_probe()
            if self._population_on:
                self._run_population()
        if self._writer is None or not self.log_metrics or not logs:
            return
        val = {k[len("val_"):]: v for k, v in logs.items() if k.startswith("val_")}
        if val:
            self._guard("logging validation metrics", self._log_validation, val)

    def _log_validation(self, values):
        step = int(self.model.optimizer.iterations.numpy())
        self._writer.metrics("val", {k: float(v) for k, v in values.items()}, step)

    def _diagnose(self):
        """Findings of this fit (the last :data:`DIAGNOSIS_HISTORY` logged
        steps, from memory), written as ``diagnosis/findings`` and, with
        ``verbose=1``, printed in short."""
        from tb_bnstats import diagnosis

        run = os.path.basename(os.path.normpath(self.log_dir)) or self.log_dir
        findings = diagnosis.diagnose_run(run, self._writer.run_data())
        if self._probe is not None:
            live = self._guard("checking the model on the probe batch", self._diagnose_model, run)
            have = {f.code for f in findings}
            findings += [f for f in live or [] if f.code not in have]
        # A write that fails (a full disk) loses the stored copy, not the diagnosis.
        self._guard("writing the findings", self._writer.findings, self._last_logged_step,
                    [f.to_dict() for f in findings])
        if findings:
            self._say(f"{len(findings)} finding(s) for {run} (tb-bnstats diagnose {self.log_dir}):")
            for line in diagnosis.summary_lines(findings):
                self._say(f"  {line}")
        else:
            self._say(f"{run}: no BatchNormalization problem found")
        return findings

    def _diagnose_model(self, run):
        """S5 needs the model, not the logs: the probe batch's BN inputs with
        the other layers in training and in inference mode
        (:func:`tb_bnstats.population.diagnose_model`)."""
        from tb_bnstats import population

        data = (self._probe.x, self._probe.y)
        return population.diagnose_model(self.model, data, num_samples=10**9, batch_size=32, run=run)

    def on_train_end(self, logs=None):
        if self._writer is None:
            return
        if self._last_logged_step is not None:
            # The last state, with a per-channel snapshot.
            self._guard("logging the final statistics", self._log_step, None, True)
            self.findings = self._guard("diagnosing the run", self._diagnose)
        self._guard("closing the event file", self._writer.close)
        _OPEN_WRITERS.discard(self._writer)
        self._writer = None
