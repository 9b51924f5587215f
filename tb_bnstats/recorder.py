"""The framework-neutral recording loop: when to drain the capture, what to
log of each drained block of steps, the probe and population measurements
when they are due, and the diagnosis at the end of a training run.

A framework adapter (the Keras callback, :class:`tb_bnstats.BNStatsCallback`)
feeds a :class:`Recorder` with a :class:`tb_bnstats.capture.Capture` and the
training events (begin, epoch begin/end, steps done, end); the measurements
that need the model come in as callables. Nothing here knows the framework.
It never stops training: a monitoring failure is a warning, once per place.

The training thread does little per step: it counts steps, and every
``drain_every`` steps (the capture's ring size) or ``flush_secs`` seconds,
whichever comes first, reads the capture once and hands the block to a
background writer (:class:`tb_bnstats.write.background.JobQueue`), which
computes the quantities and writes the events.
"""

import atexit
import fnmatch
import os
import time
import warnings
import weakref

import numpy as np

from tb_bnstats import quantities
from tb_bnstats.diagnosis import words
from tb_bnstats.format import metadata, names
from tb_bnstats.measure import data as batches
from tb_bnstats.write import background, summary

_OPEN_RECORDERS = weakref.WeakSet()
# The recorder diagnoses each training run at its end from the last this many
# logged steps, kept in memory by the writer (~350 bytes per layer per step:
# 14 MB for 20 layers, 140 MB for 200; measured by bench/scale.py).
DIAGNOSIS_HISTORY = 2000

# ``Schedule.probe_source`` without a probe (else metadata.PROBE_GIVEN / PROBE_FIRST_TRAINING_BATCH, logged
# in ``run/train_begin`` as "probe").
PROBE_OFF = None


@atexit.register
def _close_open_runs():
    """A run that raises out of training never reaches its end: drain and
    write what it kept when the interpreter exits."""
    for rec in list(_OPEN_RECORDERS):
        try:
            rec.abandon()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


def positive_int(name, value, allow_zero=False):
    """``value`` as an int.

    Raises:
        ValueError: not an integer >= 1 (>= 0 with ``allow_zero``).
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be an integer >= {0 if allow_zero else 1}, got {value!r}")
    return int(value)


def stride_due(step, every, last_step):
    """Whether something done every ``every`` steps (0: never), last at
    ``last_step`` (None: not yet), is due at ``step``: ``step`` is in a new
    stride of ``every`` steps."""
    return every > 0 and (last_step is None or step // every != last_step // every)


def stride_starts(steps, every, last_step):
    """:func:`stride_due` for each of the increasing ``steps`` in turn, as a
    boolean mask: the steps that begin a new stride of ``every`` steps (none
    for ``every`` = 0), the first compared with ``last_step`` (None: not yet)."""
    steps = np.asarray(steps, np.int64)
    if every <= 0 or not len(steps):
        return np.zeros(len(steps), bool)
    stride = steps // every
    before = np.concatenate([[-1 if last_step is None else last_step // every], stride[:-1]])
    return stride != before


class Schedule:
    """The recording options, checked at construction (see
    :class:`tb_bnstats.BNStatsCallback` for each one's meaning).

    Raises:
        ValueError: an option out of its range, or a stride given without
            the data it needs.
    """

    def __init__(self, log_dir, log_every_n_steps=1, snapshot_every_n_steps=100, layers=None, log_metrics=True,
                 flush_secs=summary.DEFAULT_FLUSH_SECS, verbose=1, probe_data=None, probe_every_n_steps=None,
                 population_data=None, population_every_n_steps=None, population_samples=2048,
                 population_batch_size=32, default_probe=True):
        if not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
            raise ValueError(f"log_dir must be a non-empty path, got {log_dir!r}")
        self.log_dir = os.fspath(log_dir)
        self.log_every_n_steps = positive_int("log_every_n_steps", log_every_n_steps)
        self.snapshot_every_n_steps = positive_int("snapshot_every_n_steps", snapshot_every_n_steps, allow_zero=True)
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
        if probe_data is True:
            raise ValueError("probe_data must be data (arrays, a dataset), None (the default probe) or False (none), "
                             "got True")
        if probe_data is not None and probe_data is not False:
            batches.validate_data(probe_data, "probe_data")
        # The probe's batch: probe_data, or (None, with a default probe) the first training batch the step ran
        # on, or none (False).
        self.probe_data = None if probe_data is False else probe_data
        self.probe_source = (metadata.PROBE_GIVEN if self.probe_data is not None else
                             metadata.PROBE_FIRST_TRAINING_BATCH if probe_data is None and default_probe else
                             PROBE_OFF)
        self.probe_every_n_steps = (0 if probe_every_n_steps is None else
                                    positive_int("probe_every_n_steps", probe_every_n_steps, allow_zero=True))
        if self.probe_every_n_steps and self.probe_source == PROBE_OFF:
            raise ValueError("probe_every_n_steps needs probe_data (the batch to probe)"
                             + (", and probe_data=False turns the probe off" if probe_data is False else ""))
        if population_data is not None:
            batches.validate_data(population_data, "population_data")
        self.population_data = population_data
        self.population_every_n_steps = (0 if population_every_n_steps is None else positive_int(
            "population_every_n_steps", population_every_n_steps, allow_zero=True))
        if self.population_every_n_steps and population_data is None:
            raise ValueError("population_every_n_steps needs population_data (the data to measure on)")
        self.population_samples = positive_int("population_samples", population_samples)
        self.population_batch_size = positive_int("population_batch_size", population_batch_size)

    def selected(self, name):
        """Whether layer ``name`` matches ``layers`` (all when None)."""
        return self.layer_patterns is None or any(fnmatch.fnmatchcase(name, p) for p in self.layer_patterns)


class Recorder:
    """Logs what a capture holds, on the schedule.

    The adapter calls, in order: :meth:`attach` (a capture for the model),
    :meth:`begin` (with the optimizer's step) and :meth:`measure_with`, then per epoch
    :meth:`epoch_begin`, :meth:`steps_done` between executions of the
    training step and :meth:`epoch_end`, and finally :meth:`end` (or
    :meth:`abandon` when training raised). Measurements are callables given
    to :meth:`measure_with`: ``probe()`` returns a
    :class:`tb_bnstats.measure.gap.ProbeResult`, ``population()`` a
    ``{layer: LayerPopulation}``, ``live_findings(run)`` a list of findings,
    ``frozen_recalibration()`` the gap reports before and after recalibrating
    the frozen layers on the probe batch (or None: no frozen layer).
    """

    def __init__(self, schedule: Schedule):
        """Args:
            schedule: the :class:`Schedule`."""
        self.schedule = schedule
        self.writes = True  # False in a process other than the one that writes the run (several processes)
        self.capture = None
        self.writer = None
        self.step = None
        self.findings = None  # the diagnosis of the last run (Finding list)
        self._infos = None
        self._failures = set()
        self._jobs = None
        self._last_logged = None  # a Block of the last logged step (its selected layers)
        self._probe = self._population = self._live_findings = self._frozen_recalibration = None

    # -- helpers -----------------------------------------------------------------

    def say(self, message):
        """Prints ``message`` with ``verbose=1``."""
        if self.schedule.verbose:
            print(f"tb_bnstats: {message}")

    def warn_once(self, where, message):
        """A ``RuntimeWarning``, once per ``where``."""
        if where not in self._failures:
            self._failures.add(where)
            warnings.warn(f"tb_bnstats: {message}", RuntimeWarning, stacklevel=3)

    def guard(self, where, fn, *args):
        """Runs ``fn``; a failure warns once per place and never reaches the
        training loop (returns None then)."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - monitoring must not stop training
            self.warn_once(where, f"{where} failed, training continues without it: {type(exc).__name__}: {exc}")
            return None

    @property
    def layer_infos(self):
        """``{name: LayerInfo}`` of the selected layers the training step ran."""
        if self._infos is None:
            infos = [i for i in self.capture.layer_infos() if self.schedule.selected(i.name)]
            self._infos = {info.name: info for info in infos}
            frozen = {}
            for info in infos:
                if not info.trainable:
                    frozen.setdefault(words.frozen(info), []).append(info.name)
            for why, names in frozen.items():
                self.say(f"{why}: {names}")
            missing = [n for n in self.capture.not_run() if self.schedule.selected(n)]
            if missing:
                self.say(f"not called by the train step, not logged: {missing}")
        return self._infos

    def layers_changed(self):
        """The capture's layers or their descriptions changed (a graph layer
        first run by a later train call): :attr:`layer_infos` is made again,
        here, on the training thread."""
        self._infos = None
        _ = self.layer_infos

    # -- events ------------------------------------------------------------------

    def attach(self, capture, model_name):
        """Uses ``capture`` (None: instrumenting failed) from now on. A run
        still open (its training raised) is finished first with its own
        capture."""
        if self.writer is not None:
            self.abandon()
        for other in list(_OPEN_RECORDERS):
            # Open at the start of a new training of the same model: its training raised, and the steps
            # kept from now on are not its own.
            if capture is not None and other.capture is not None and other.capture.model is capture.model:
                other.abandon()
        self.capture, self._infos = capture, None
        if capture is None:
            return
        patterns = self.schedule.layer_patterns
        names = [n for n in capture.names if self.schedule.selected(n)]
        if not capture.names:
            warnings.warn(f"tb_bnstats: found no BatchNormalization layer in model {model_name!r}; "
                          "only metrics will be logged", RuntimeWarning, stacklevel=3)
        elif not names:
            warnings.warn(f"tb_bnstats: no BatchNormalization layer matches layers={patterns!r}; "
                          f"found: {capture.names}", RuntimeWarning, stacklevel=3)
        else:
            self.say(f"monitoring {len(names)} BatchNormalization layer(s) of {model_name!r} -> "
                     f"{self.schedule.log_dir}")

    def begin(self, read_step, steps_per_execution=1):
        """A training run starts; ``read_step()`` returns the optimizer's step
        now; the training step runs ``steps_per_execution`` steps between
        two calls of :meth:`steps_done` at most."""
        self._last_logged_step = self._last_snapshot_step = None
        self._last_probe_step = self._last_population_step = None
        self._last_totals, self._last_logged = {}, None
        self._newest = None  # the last step drained, when it was not logged
        self._execution_steps = max(1, int(steps_per_execution))
        self.step = None
        if self.capture is not None:
            self.guard("opening the log directory", self._open_writer)
            self.step = self.guard("reading the step", read_step)
            if self.writer is not None and self.step is not None:
                self.guard("checking for a restored run", self._log_train_begin)
        self._epoch_start_step = self.step
        self._epoch_steps_drained = 0  # steps of this epoch (the adapter's count) drained
        self._execution_end = None  # when the training step last returned
        self._drained_at = time.monotonic()
        self._undrained = False
        self._step_times = []  # (step, wall time) seen between drains: when each step ended
        self._probe = self._population = self._live_findings = self._frozen_recalibration = None

    def measure_with(self, probe=None, population=None, live_findings=None, frozen_recalibration=None):
        """The measurements of this run (see the class), given after
        :meth:`begin`; ignored when no log could be opened."""
        if self.writer is not None:
            self._probe, self._population, self._live_findings = probe, population, live_findings
            self._frozen_recalibration = frozen_recalibration

    def measure_model(self, model, probe=None):
        """:meth:`measure_with` the measurements of ``model`` (a Keras model or
        an ``nn.Module``): ``probe`` (its framework's ``GapProbe`` of the
        probe batch, or None), the population statistics of the schedule's
        ``population_data`` (:func:`tb_bnstats.population_stats`), and the
        checks of the model on the probe batch at the end
        (:func:`tb_bnstats.diagnosis.live.diagnose_model`: S5, which training
        logs cannot show; :func:`tb_bnstats.measure.population.frozen_recalibration`:
        what recalibrating the frozen layers would give, for S9)."""
        from tb_bnstats.diagnosis import live
        from tb_bnstats.measure import population

        schedule = self.schedule

        def population_now():
            return population.population_stats(model, schedule.population_data,
                                               num_samples=schedule.population_samples,
                                               batch_size=schedule.population_batch_size)

        def live_findings(run):
            if probe.x is None:
                return []
            return live.diagnose_model(model, (probe.x, probe.y), num_samples=10**9, batch_size=32, run=run)

        def frozen_recalibration():
            if probe.x is None:
                return None
            return population.frozen_recalibration(model, probe.x, probe.y, loss_fn=getattr(probe, "loss_fn", None))

        self.measure_with(probe=probe.run if probe is not None else None,
                          population=population_now if schedule.population_data is not None else None,
                          live_findings=live_findings if probe is not None else None,
                          frozen_recalibration=frozen_recalibration if probe is not None else None)

    def _open_writer(self):
        if not self.writes:  # another process writes the run
            return
        self.writer = summary.Writer(self.schedule.log_dir, flush_secs=self.schedule.flush_secs,
                                     keep_history=DIAGNOSIS_HISTORY)
        self._jobs = background.JobQueue()
        _OPEN_RECORDERS.add(self)

    def _log_train_begin(self):
        """At each run's start: in a run restored from a checkpoint (step >
        0, layers this process has not counted yet), the update counts of
        layers whose moving statistics were restored continue from the step;
        trainable layers whose moving statistics are still at their initial
        values were not restored (S3, BN008); layers that start from
        pretrained statistics (not their initializers' values, no update
        counted) count from them. The three lists go into the log
        (``run/train_begin``) at this step."""
        states = self.capture.resume(self.step)
        listed = lambda state: [n for n in self.capture.names  # noqa: E731
                                if states.get(n) == state and self.schedule.selected(n)]
        record = {"resumed": listed("resumed"), "moving_at_initializer": listed("at_initializer"),
                  "pretrained": listed("pretrained"), "probe": self.schedule.probe_source}
        self.writer.train_begin(self.step, record)
        if record["resumed"]:
            self.say(f"resumed at step {self.step}: update counts of {len(record['resumed'])} layer(s) "
                     f"continue from {self.step}")
        if record["pretrained"]:
            self.say(f"{len(record['pretrained'])} layer(s) start from pretrained statistics: convergence and the "
                     "debiased estimate count from them")
        if record["moving_at_initializer"]:
            self.say(f"step {self.step}, but the moving statistics of {record['moving_at_initializer']} are at "
                     "their initial values: not restored with the weights? (BN008)")

    def epoch_begin(self):
        """An epoch starts: the framework's running-mean metrics restart."""
        self._last_totals = {}
        self._epoch_start_step = self.step
        self._epoch_steps_drained = 0
        self._newest = None  # its metrics were relative to totals that restart now
        self._undrained = True  # steps may run from now on

    def steps_done(self, steps_in_epoch):
        """Between two executions of the training step: ``steps_in_epoch``
        steps of this epoch are done (counted without a device round trip).
        Drains the capture when its ring would overflow during the next
        execution or ``flush_secs`` have passed, and before a probe or a
        population measurement that is due."""
        if self.writer is None or self.step is None:
            return
        schedule = self.schedule
        self.step = self._epoch_start_step + steps_in_epoch
        self._undrained = True
        self._step_times.append((self.step, time.time()))
        probe_due = self._probe is not None and stride_due(self.step, schedule.probe_every_n_steps,
                                                           self._last_probe_step)
        population_due = self._population is not None and stride_due(
            self.step, schedule.population_every_n_steps, self._last_population_step)
        every = self.capture.drain_every
        # Counted in training steps run (not optimizer steps: a train step may take several).
        ring_full = every is not None and steps_in_epoch - self._epoch_steps_drained + self._execution_steps > every
        if probe_due or population_due or ring_full or time.monotonic() - self._drained_at >= schedule.flush_secs:
            self._epoch_steps_drained = steps_in_epoch
            self.guard("logging batch statistics", self._drain, probe_due or population_due, False)
        if probe_due:
            self._run_probe()
        if population_due:
            self._run_population()

    def execution_ended(self):
        """The training step returned (the adapter calls this after each
        execution): the wall time of the steps no later :meth:`steps_done`
        dates."""
        self._execution_end = time.time()

    def epoch_end(self, val_logs, read_step):
        """An epoch ends: what the capture kept is drained (its last step is
        logged when a probe or population measurement follows);
        ``val_logs`` are its validation metrics (names without ``val_``),
        logged at ``read_step()``."""
        if self.writer is None:
            return
        measured = self._probe is not None or self._population is not None
        self.guard("logging batch statistics", self._drain, measured, False)
        if self._probe is not None:
            self._run_probe()
        if self._population is not None:
            self._run_population()
        if not self.schedule.log_metrics or not val_logs:
            return
        self.guard("logging validation metrics",
                   lambda: self.writer.metrics("val", {k: float(v) for k, v in val_logs.items()}, read_step()))

    def end(self):
        """The training run ends: every step drained, the last state with a
        snapshot, the diagnosis, and the event file closed."""
        if self.writer is None:
            return
        self.guard("logging the final statistics", self._drain, False, True)
        if self._last_logged_step is not None:
            if self._frozen_recalibration is not None and any(i.frozen for i in self.layer_infos.values()):
                self.guard("measuring what recalibrating the frozen layers gives", self._log_frozen_recalibration)
            self.findings = self.guard("diagnosing the run", self._diagnose)
        self._close()

    def _log_frozen_recalibration(self):
        """The probe batch in inference mode with the frozen layers
        recalibrated on it (metric split ``probe_recalibrated``, next to
        ``probe_inference`` at the last logged step): what BN010's fix would
        give."""
        measured = self._frozen_recalibration()
        if measured is None:
            return
        before, after = measured
        step = self._last_logged_step
        values = {"accuracy": after.accuracy_inference_mode, "loss": after.loss_inference_mode}
        self.writer.metrics("probe_recalibrated", {k: v for k, v in values.items() if v is not None}, step)
        as_is = {"accuracy": before.accuracy_inference_mode, "loss": before.loss_inference_mode}
        if self._last_probe_step != step:  # the comparison is at the same step, on the same batch
            self.writer.metrics("probe_inference", {k: v for k, v in as_is.items() if v is not None}, step)

    def abandon(self):
        """Training raised: every step drained and written, the event file
        closed, no diagnosis (``tb-bnstats diagnose`` makes one from the
        logs)."""
        if self.writer is None:
            return
        self._undrained = True  # raised inside an epoch: steps may have run since the last drain
        self.guard("logging the final statistics", self._drain, False, True)
        self._close()

    def _close(self):
        if self._jobs is not None:
            self._jobs.close()
            self._jobs = None
        self.guard("closing the event file", self.writer.close)
        _OPEN_RECORDERS.discard(self)
        self.writer = None

    # -- logging -----------------------------------------------------------------

    def _drain(self, log_last, final):
        """Reads every step the capture kept and queues their logging.
        ``log_last``: log the last step even off the logging stride (a
        measurement follows at it); ``final``: the run's end, which gets a
        snapshot (of the last logged step when nothing new was kept)."""
        # At the end of a run the last epoch's end has drained (nothing ran since): no read.
        read = self.capture is not None and (self._undrained or not final)
        blocks = self.capture.drain() if read else []
        self._undrained = False
        times = self._step_times
        if blocks:  # the optimizer's step, as the device has it (the adapter's count may be ahead or behind)
            self.step = int(blocks[-1].steps[-1])
        self._step_times, self._drained_at = [], time.monotonic()
        if final and not blocks and self._newest is not None:
            blocks = [self._newest]  # drained before, not on the logging stride: logged now, the run's last step
        writes = []  # one job for the whole drain: a drain of many small blocks is not dropped in part
        for i, block in enumerate(blocks):
            writes += self._log_block(block, times, log_last and i == len(blocks) - 1, final and i == len(blocks) - 1)
        if final and self._last_logged is not None and self._last_snapshot_step != self._last_logged_step:
            last = self._last_logged
            writes.append((last, None, [time.time()], last.steps, {}, False))
            self._last_snapshot_step = self._last_logged_step
        if writes:
            block, rows = writes[0][:2]
            first = int(block.steps[0 if rows is None else rows[0]])
            self._jobs.submit(self.guard, "logging batch statistics", self._write_blocks, writes,
                              what=f"the statistics of steps {first}-{self._last_logged_step}")
        if final:
            self._jobs.wait()

    def _write_blocks(self, writes):
        """On the writer thread: :meth:`_write_block` of each of ``writes``."""
        for args in writes:
            self._write_block(*args)

    def _log_block(self, block, times, log_last, final):
        """Chooses the steps of ``block`` to log (the logging stride; the
        last one too with ``log_last`` or ``final``) and the snapshots (the
        snapshot stride among those; the last at ``final``). ``times``:
        ``(step, wall time)`` seen since the last drain.

        Returns:
            ``[(block, rows, wall_times, snapshot_steps, metrics, series)]``,
            the :meth:`_write_block` arguments (empty: nothing to log)."""
        schedule = self.schedule
        _ = self.layer_infos  # made here, on the training thread; the writer thread reads it
        if block.lost:
            self.warn_once("the capture ring", f"{block.lost} training step(s) were overwritten on the device "
                           "before they could be read; their statistics are missing")
        steps = block.steps
        last = self._last_logged_step
        # One row per step (the last, should a step repeat), none logged before.
        keep = np.concatenate([steps[1:] != steps[:-1], [True]]) & (steps > (-1 if last is None else last))
        chosen = keep & stride_starts(steps, schedule.log_every_n_steps, last)
        if (log_last or final) and keep[-1]:
            chosen[-1] = True
        self._newest = None if chosen[-1] or not keep[-1] else block.rows(slice(-1, None))
        rows = np.flatnonzero(chosen)
        if not len(rows):
            return []
        logged = steps[rows]
        snapshot = stride_starts(logged, schedule.snapshot_every_n_steps, self._last_snapshot_step)
        if final:
            snapshot[-1] = True
        if snapshot.any():
            self._last_snapshot_step = int(logged[snapshot][-1])
        seen = np.array([s for s, _ in times] + [np.iinfo(np.int64).max], np.int64)
        tail = self._execution_end if self._execution_end is not None else time.time()
        at = np.array([t for _, t in times] + [tail], np.float64)
        wall_times = at[np.minimum(np.searchsorted(seen, logged), len(at) - 1)]
        metrics = self._per_step_metrics(block, rows) if schedule.log_metrics else {}
        self._last_logged = block.rows(slice(rows[-1], rows[-1] + 1))  # views, no copy
        self._last_logged_step = int(logged[-1])
        return [(block, rows, wall_times, logged[snapshot], metrics, True)]

    def _write_block(self, block, rows, wall_times, snapshot_steps, metrics, series):
        """On the writer thread: of the steps at ``rows`` of ``block``
        (all of them for None), the selected layers' series (unless
        ``series=False``) and their snapshots at ``snapshot_steps``, and the
        per-step metrics."""
        if rows is not None:
            block = block.rows(rows)
        for name, layer in block.layers.items():
            if name not in self.layer_infos:
                continue
            self.writer.layer_block(self.layer_infos[name], block.steps, layer.batch_mean, layer.batch_var,
                                    layer.moving_mean, layer.moving_var, layer.updates,
                                    samples_per_channel=layer.samples_per_channel, init_mean=layer.init_mean,
                                    init_var=layer.init_var, wall_times=wall_times, snapshot_steps=snapshot_steps,
                                    series=series, replicas=layer.replicas)
        if metrics:
            self.writer.metrics_block("train", block.steps, metrics, wall_times)

    def _per_step_metrics(self, block, rows):
        """The training step's logs at ``rows``. Running means since the
        epoch began become the value over just the steps since the last
        logged one: from their ``(total, count)``, ``(total - total') /
        (count - count')`` (a count that went down restarted: a new epoch).
        Other metrics are logged as the step returned them."""
        out = {}
        for name, values in block.logs.items():
            value = values[rows]
            if name in block.metric_totals:
                total, count = (a[rows] for a in block.metric_totals[name])
                last_total, last_count = self._last_totals.get(name, (0.0, 0.0))
                before_total = np.concatenate([[last_total], total[:-1]])
                before_count = np.concatenate([[last_count], count[:-1]])
                restarted = count < before_count
                before_total[restarted], before_count[restarted] = 0.0, 0.0
                added = count - before_count
                with np.errstate(divide="ignore", invalid="ignore"):
                    value = np.where(added > 0, (total - before_total) / np.where(added > 0, added, 1.0), value)
                self._last_totals[name] = (float(total[-1]), float(count[-1]))
            out[name] = value
        return out

    def _run_probe(self):
        """The probe at the last logged step (logged first, so the probe's
        points fall on steps of the layer series); a failure turns it off."""
        if self._last_logged_step is None or self._last_logged_step == self._last_probe_step:
            return
        if self.guard("running the train/inference probe", self._log_probe, self._last_logged_step) is None:
            self._probe = self._live_findings = self._frozen_recalibration = None  # the live checks use the same batch

    def _log_probe(self, step):
        result = self._probe()
        if result is None:
            return True  # its batch is not there yet (the first training batch, before the first step)
        if self.schedule.log_metrics:
            self.writer.metrics("probe_train", result.metrics_train, step)
            self.writer.metrics("probe_inference", result.metrics_inference, step)
        for name, info in self.layer_infos.items():
            layer = result.layers.get(name)
            if layer is not None:
                self.writer.probe(info, step, quantities.probe_series(
                    info.epsilon, layer.probe_mean, layer.probe_var, layer.moving_mean, layer.moving_var,
                    layer.output_drift))
        self._last_probe_step = step
        return True

    def _run_population(self):
        """Population statistics at the last logged step; a failure (data
        exhausted, wrong shape) turns them off."""
        if self._last_logged_step is None or self._last_logged_step == self._last_population_step:
            return
        if self.guard("measuring population statistics", self._log_population, self._last_logged_step) is None:
            self._population = None

    def _log_population(self, step):
        stats = self._population()
        for name, info in self.layer_infos.items():
            pop, moments = stats.get(name), self._last_logged.layers.get(name)
            if pop is not None and moments is not None:
                self.writer.population(info, step, quantities.population_series(
                    info.epsilon, pop.mean, pop.var, moments.moving_mean[-1], moments.moving_var[-1]))
        self._last_population_step = step
        return True

    # -- diagnosis ---------------------------------------------------------------

    def _diagnose(self):
        """Findings of this run (the last :data:`DIAGNOSIS_HISTORY` logged
        steps, from memory, and the live-model checks), written as
        ``diagnosis/findings`` and, with ``verbose=1``, printed in short."""
        from tb_bnstats import diagnosis

        log_dir = self.schedule.log_dir
        run = names.own_name(log_dir)
        computed = diagnosis.diagnose_run(run, self.writer.run_data())
        live = self.guard("checking the model on the probe batch", self._live_findings, run) \
            if self._live_findings is not None else None
        findings = [f for f, _ in diagnosis.merging.merge(computed, live)]  # logs first, then the model
        # A write that fails (a full disk) loses the stored copy, not the diagnosis.
        self.guard("writing the findings", self.writer.findings, self._last_logged_step,
                   [f.to_dict() for f in findings])
        if findings:
            command = names.diagnose_command(log_dir)
            self.say(f"{len(findings)} finding(s) for {run} ({command}):")
            for line in diagnosis.summary_lines(findings, command=command):
                self.say(f"  {line}")
        else:
            self.say(f"{run}: no BatchNormalization problem found")
        return findings
