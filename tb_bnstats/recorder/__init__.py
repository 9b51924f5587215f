"""The framework-neutral recording loop: when to drain the capture, what to
log of each drained block of steps, the probe and population measurements
when they are due, and the diagnosis at the end of a training run.

A framework adapter (the Keras callback, :class:`tb_bnstats.BNStatsCallback`;
the step-loop monitors, :class:`tb_bnstats.loop.StepLoopMonitor`) feeds a
:class:`Recorder` with a :class:`tb_bnstats.capture.Capture` and the
training events (begin, epoch begin/end, steps done, end); what it can do
(write, probe, measure the population) comes in as :class:`Capabilities`,
the measurements that need the model as callables. Nothing here knows the
framework. It never stops training: a monitoring failure is a warning, once
per place.

The recorder's state is in two parts: what lasts across runs (the options,
the capture, the layers, the last findings) on the :class:`Recorder`, and
what one training run logged and when (the steps last logged, probed,
snapshotted, the writer) on a :class:`Run`, which :meth:`Recorder.begin`
makes anew. Which steps of a drained block to log is the pure
:func:`choose_rows`.

The training thread does little per step: it counts steps, and every
``drain_every`` steps (the capture's ring size) or ``flush_secs`` seconds,
whichever comes first, reads the capture once and hands the block to a
background writer (:class:`tb_bnstats.write.background.JobQueue`, as a
:class:`BlockWrite` list), which computes the quantities and writes the
events.
"""

import atexit
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tb_bnstats import quantities
from tb_bnstats.capture import Block
from tb_bnstats.diagnosis import words
from tb_bnstats.format import names
from tb_bnstats.options import PROBE_OFF, Options
from tb_bnstats.recorder.state import BlockWrite, Capabilities, Measurements, Run, TimeBudget, choose_rows, stride_due
from tb_bnstats.write import background, summary

__all__ = ["DIAGNOSIS_HISTORY", "Capabilities", "Recorder", "Run"]
# Every capability: what begin() assumes when the adapter says nothing.
EVERYTHING = Capabilities()

_OPEN_RECORDERS: "weakref.WeakSet[Recorder]" = weakref.WeakSet()
# The recorder diagnoses each training run at its end from the last this many
# logged steps, kept in memory by the writer (~350 bytes per layer per step:
# 14 MB for 20 layers, 140 MB for 200; measured by bench/scale.py).
DIAGNOSIS_HISTORY = 2000
# The measurements on the model, each charged to an account of the time budget (Options.measure_budget): the
# probe and the checks on its batch at a run's end share one, the population measurement has its own.
PROBE, MODEL_CHECKS, FROZEN_RECALIBRATION, POPULATION = "probe", "model checks", "frozen recalibration", "population"
ACCOUNTS = {PROBE: PROBE, MODEL_CHECKS: PROBE, FROZEN_RECALIBRATION: PROBE, POPULATION: POPULATION}


@atexit.register
def _close_open_runs() -> None:
    """A run that raises out of training never reaches its end: drain and
    write what it kept when the interpreter exits."""
    for rec in list(_OPEN_RECORDERS):
        try:
            rec.abandon()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


class Recorder:
    """Logs what a capture holds, on the options' schedule.

    The adapter calls, in order: :meth:`attach` (a capture for the model),
    :meth:`begin` (with the optimizer's step and its :class:`Capabilities`)
    and :meth:`measure_with`, then per epoch :meth:`epoch_begin`,
    :meth:`steps_done` between executions of the training step and
    :meth:`epoch_end`, and finally :meth:`end` (or :meth:`abandon` when
    training raised). Measurements are callables given to
    :meth:`measure_with`: ``probe()`` returns a
    :class:`tb_bnstats.measure.gap.ProbeResult`, ``population()`` a
    ``{layer: LayerPopulation}``, ``live_findings(run)`` a list of findings,
    ``frozen_recalibration()`` the gap reports before and after recalibrating
    the frozen layers on the probe batch (or None: no frozen layer).
    """

    def __init__(self, options: Options, out: Callable[[str], None] = print) -> None:
        """Args:
            options: the :class:`tb_bnstats.Options`.
            out: where :meth:`say` writes a line (``print``; an adapter in a
                framework's own loop hands its framework's logging)."""
        self.options = options
        self.out = out
        self.capture: Any = None
        self.findings: list[Any] | None = None  # the diagnosis of the last run (Finding list)
        self.run = Run()  # the current training run (one that writes nothing before the first begin)
        self.budget = TimeBudget(options.measure_budget)  # the measurements' time, across runs
        self._live: tuple[Any, Any] | None = None  # (model, findings) of the last checks on the model
        self._infos: dict[str, Any] | None = None
        self._failures: set[str] = set()

    @property
    def writer(self) -> summary.Writer | None:
        """The current run's event writer (None: it writes nothing)."""
        return self.run.writer

    # -- helpers -----------------------------------------------------------------

    def say(self, message: str) -> None:
        """Prints ``message`` with ``verbose=1``, through :attr:`out`."""
        if self.options.verbose:
            self.out(f"tb_bnstats: {message}")

    def warn_once(self, where: str, message: str) -> None:
        """A ``RuntimeWarning``, once per ``where``."""
        if where not in self._failures:
            self._failures.add(where)
            warnings.warn(f"tb_bnstats: {message}", RuntimeWarning, stacklevel=3)

    def guard(self, where: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Runs ``fn``; a failure warns once per place and never reaches the
        training loop (returns None then)."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - monitoring must not stop training
            self.warn_once(where, f"{where} failed, training continues without it: {type(exc).__name__}: {exc}")
            return None

    @property
    def layer_infos(self) -> dict[str, Any]:
        """``{name: LayerInfo}`` of the selected layers the training step ran."""
        if self._infos is None:
            infos = [i for i in self.capture.layer_infos() if self.options.selected(i.name)]
            self._infos = {info.name: info for info in infos}
            frozen: dict[str, list[str]] = {}
            for info in infos:
                if not info.trainable:
                    frozen.setdefault(words.frozen(info), []).append(info.name)
            for why, layer_names in frozen.items():
                self.say(f"{why}: {layer_names}")
            missing = [n for n in self.capture.not_run() if self.options.selected(n)]
            if missing:
                self.say(f"not called by the train step, not logged: {missing}")
        return self._infos

    def layers_changed(self) -> None:
        """The capture's layers or their descriptions changed (a graph layer
        first run by a later train call): :attr:`layer_infos` is made again,
        here, on the training thread."""
        self._infos = None
        _ = self.layer_infos

    # -- events ------------------------------------------------------------------

    def attach(self, capture: Any, model_name: str) -> None:
        """Uses ``capture`` (None: instrumenting failed) from now on. A run
        still open (its training raised) is finished first with its own
        capture."""
        if self.run.writer is not None:
            self.abandon()
        for other in list(_OPEN_RECORDERS):
            # Open at the start of a new training of the same model: its training raised, and the steps
            # kept from now on are not its own.
            if capture is not None and other.capture is not None and other.capture.model is capture.model:
                other.abandon()
        self.capture, self._infos = capture, None
        if capture is None:
            return
        patterns = None if self.options.layers is None else list(self.options.layers)
        selected = [n for n in capture.names if self.options.selected(n)]
        if not capture.names:
            warnings.warn(f"tb_bnstats: found no BatchNormalization layer in model {model_name!r}; "
                          "only metrics will be logged", RuntimeWarning, stacklevel=3)
        elif not selected:
            warnings.warn(f"tb_bnstats: no BatchNormalization layer matches layers={patterns!r}; "
                          f"found: {capture.names}", RuntimeWarning, stacklevel=3)
        else:
            self.say(f"monitoring {len(selected)} BatchNormalization layer(s) of {model_name!r} -> "
                     f"{self.options.log_dir}")

    def begin(self, read_step: Callable[[], int], steps_per_execution: int = 1,
              capabilities: Capabilities = EVERYTHING) -> Run:
        """A training run starts: a new :class:`Run`. ``read_step()``
        returns the optimizer's step now; the training step runs
        ``steps_per_execution`` steps between two calls of
        :meth:`steps_done` at most; ``capabilities``: what the adapter can
        do in this run."""
        run = self.run = Run(capabilities=capabilities,
                             probe_source=self.options.probe_source if capabilities.probe else PROBE_OFF,
                             execution_steps=max(1, int(steps_per_execution)))
        if self.capture is not None:
            if capabilities.writes:
                self.guard("opening the log directory", self._open_writer, run)
            run.step = self.guard("reading the step", read_step)
            if run.writer is not None and run.step is not None:
                self.guard("checking for a restored run", self._log_train_begin)
        run.epoch_start_step = run.step
        run.drained_at = time.monotonic()
        self.budget.start(run.drained_at)
        return run

    def measure_with(self, probe: Callable[[], Any] | None = None, population: Callable[[], Any] | None = None,
                     live_findings: Callable[[str], Any] | None = None,
                     frozen_recalibration: Callable[[], Any] | None = None) -> None:
        """The measurements of this run (see the class), given after
        :meth:`begin`; ignored when no log could be opened."""
        if self.run.writer is not None:
            self.run.measure = Measurements(probe, population if self.run.population else None, live_findings,
                                            frozen_recalibration)

    def measure_model(self, model: Any, probe: Any = None) -> None:
        """:meth:`measure_with` the measurements of ``model`` (a Keras model or
        an ``nn.Module``): ``probe`` (its framework's ``GapProbe`` of the
        probe batch, or None), the population statistics of the options'
        ``population_data`` (:func:`tb_bnstats.population_stats`), and the
        checks of the model on the probe batch at the end
        (:func:`tb_bnstats.diagnosis.live.diagnose_model`: S5, which training
        logs cannot show; :func:`tb_bnstats.measure.population.frozen_recalibration`:
        what recalibrating the frozen layers would give, for S9)."""
        from tb_bnstats.diagnosis import live
        from tb_bnstats.measure import population

        options = self.options

        def population_now() -> Any:
            return population.population_stats(model, options.population_data,
                                               num_samples=options.population_samples,
                                               batch_size=options.population_batch_size)

        def live_findings(run: str) -> Any:
            if probe.x is None:
                return []
            return live.diagnose_model(model, (probe.x, probe.y), num_samples=10**9, batch_size=32, run=run)

        def frozen_recalibration() -> Any:
            if probe.x is None:
                return None
            return population.frozen_recalibration(model, probe.x, probe.y, loss_fn=getattr(probe, "loss_fn", None))

        self.measure_with(probe=probe.run if probe is not None else None,
                          population=population_now if options.population_data is not None else None,
                          live_findings=live_findings if probe is not None else None,
                          frozen_recalibration=frozen_recalibration if probe is not None else None)

    def _open_writer(self, run: Run) -> None:
        run.writer = summary.Writer(self.options.log_dir, flush_secs=self.options.flush_secs,
                                    keep_history=DIAGNOSIS_HISTORY)
        run.jobs = background.JobQueue()
        _OPEN_RECORDERS.add(self)

    def _log_train_begin(self) -> None:
        """At each run's start: in a run restored from a checkpoint (step >
        0, layers this process has not counted yet), the update counts of
        layers whose moving statistics were restored continue from the step;
        trainable layers whose moving statistics are still at their initial
        values were not restored (S3, BN008); layers that start from
        pretrained statistics (not their initializers' values, no update
        counted) count from them. The three lists go into the log
        (``run/train_begin``) at this step."""
        run = self.run
        assert run.writer is not None and run.step is not None
        step = run.step
        states = self.capture.resume(step)
        listed = lambda state: [n for n in self.capture.names  # noqa: E731
                                if states.get(n) == state and self.options.selected(n)]
        record = {"resumed": listed("resumed"), "moving_at_initializer": listed("at_initializer"),
                  "pretrained": listed("pretrained"), "probe": run.probe_source}
        run.writer.train_begin(step, record)
        if record["resumed"]:
            self.say(f"resumed at step {step}: update counts of {len(record['resumed'])} layer(s) "
                     f"continue from {step}")
        if record["pretrained"]:
            self.say(f"{len(record['pretrained'])} layer(s) start from pretrained statistics: convergence and the "
                     "debiased estimate count from them")
        if record["moving_at_initializer"]:
            self.say(f"step {step}, but the moving statistics of {record['moving_at_initializer']} are at "
                     "their initial values: not restored with the weights? (BN008)")

    def epoch_begin(self) -> None:
        """An epoch starts: the framework's running-mean metrics restart."""
        run = self.run
        run.last_totals = {}
        run.epoch_start_step = run.step
        run.epoch_steps_drained = 0
        run.newest = None  # its metrics were relative to totals that restart now
        run.undrained = True  # steps may run from now on

    def steps_done(self, steps_in_epoch: int) -> None:
        """Between two executions of the training step: ``steps_in_epoch``
        steps of this epoch are done (counted without a device round trip).
        Drains the capture when its ring would overflow during the next
        execution or ``flush_secs`` have passed, and before a probe or a
        population measurement that is due."""
        run, options = self.run, self.options
        if run.writer is None or run.epoch_start_step is None:
            return
        run.step = step = run.epoch_start_step + steps_in_epoch
        run.undrained = True
        run.step_times.append((step, time.time()))
        probe_due = run.measure.probe is not None and stride_due(
            step, options.probe_every_n_steps or 0, run.last_probe_step) and self._within_budget(PROBE)
        population_due = run.measure.population is not None and stride_due(
            step, options.population_every_n_steps or 0, run.last_population_step) and self._within_budget(POPULATION)
        every = self.capture.drain_every
        # Counted in training steps run (not optimizer steps: a train step may take several).
        ring_full = every is not None and steps_in_epoch - run.epoch_steps_drained + run.execution_steps > every
        if probe_due or population_due or ring_full or time.monotonic() - run.drained_at >= options.flush_secs:
            run.epoch_steps_drained = steps_in_epoch
            self.guard("logging batch statistics", self._drain, probe_due or population_due, False)
        if probe_due:
            self._run_probe()
        if population_due:
            self._run_population()

    def execution_ended(self) -> None:
        """The training step returned (the adapter calls this after each
        execution): the wall time of the steps no later :meth:`steps_done`
        dates."""
        self.run.execution_end = time.time()

    def epoch_end(self, val_logs: dict[str, Any], read_step: Callable[[], int]) -> None:
        """An epoch ends: what the capture kept is drained (its last step is
        logged when a probe or population measurement follows);
        ``val_logs`` are its validation metrics (names without ``val_``),
        logged at ``read_step()``."""
        run = self.run
        if run.writer is None:
            return
        probe = run.measure.probe is not None and self._within_budget(PROBE)
        population = run.measure.population is not None and self._within_budget(POPULATION)
        self.guard("logging batch statistics", self._drain, probe or population, False)
        if probe:
            self._run_probe()
        if population:
            self._run_population()
        if not self.options.log_metrics or not val_logs:
            return
        writer = run.writer
        self.guard("logging validation metrics",
                   lambda: writer.metrics("val", {k: float(v) for k, v in val_logs.items()}, read_step()))

    def end(self) -> None:
        """The training run ends: every step drained, the last state with a
        snapshot, the diagnosis, and the event file closed."""
        run = self.run
        if run.writer is None:
            return
        self.guard("logging the final statistics", self._drain, False, True)
        if run.last_logged_step is not None:
            if run.measure.frozen_recalibration is not None and any(i.frozen for i in self.layer_infos.values()) \
                    and self._within_budget(FROZEN_RECALIBRATION):
                self._measured(FROZEN_RECALIBRATION, self.guard, "measuring what recalibrating the frozen layers gives",
                               self._log_frozen_recalibration)
            self.findings = self.guard("diagnosing the run", self._diagnose)
        self._close()

    def _log_frozen_recalibration(self) -> None:
        """The probe batch in inference mode with the frozen layers
        recalibrated on it (metric split ``probe_recalibrated``, next to
        ``probe_inference`` at the last logged step): what BN010's fix would
        give."""
        run = self.run
        assert run.writer is not None and run.measure.frozen_recalibration is not None
        measured = run.measure.frozen_recalibration()
        if measured is None:
            return
        before, after = measured
        step = run.last_logged_step
        assert step is not None
        values = {"accuracy": after.accuracy_inference_mode, "loss": after.loss_inference_mode}
        run.writer.metrics("probe_recalibrated", {k: v for k, v in values.items() if v is not None}, step)
        as_is = {"accuracy": before.accuracy_inference_mode, "loss": before.loss_inference_mode}
        if run.last_probe_step != step:  # the comparison is at the same step, on the same batch
            run.writer.metrics("probe_inference", {k: v for k, v in as_is.items() if v is not None}, step)

    def abandon(self) -> None:
        """Training raised: every step drained and written, the event file
        closed, no diagnosis (``tb-bnstats diagnose`` makes one from the
        logs)."""
        if self.run.writer is None:
            return
        self.run.undrained = True  # raised inside an epoch: steps may have run since the last drain
        self.guard("logging the final statistics", self._drain, False, True)
        self._close()

    def _close(self) -> None:
        run = self.run
        self.budget.stop(time.monotonic())
        if run.jobs is not None:
            run.jobs.close()
            run.jobs = None
        if run.writer is not None:
            self.guard("closing the event file", run.writer.close)
        _OPEN_RECORDERS.discard(self)
        run.writer = None

    # -- logging -----------------------------------------------------------------

    def _drain(self, log_last: bool, final: bool) -> None:
        """Reads every step the capture kept and queues their logging.
        ``log_last``: log the last step even off the logging stride (a
        measurement follows at it); ``final``: the run's end, which gets a
        snapshot (of the last logged step when nothing new was kept)."""
        run = self.run
        assert run.jobs is not None
        # At the end of a run the last epoch's end has drained (nothing ran since): no read.
        read = self.capture is not None and (run.undrained or not final)
        blocks = self.capture.drain() if read else []
        run.undrained = False
        times = run.step_times
        if blocks:  # the optimizer's step, as the device has it (the adapter's count may be ahead or behind)
            run.step = int(blocks[-1].steps[-1])
        run.step_times, run.drained_at = [], time.monotonic()
        if final and not blocks and run.newest is not None:
            blocks = [run.newest]  # drained before, not on the logging stride: logged now, the run's last step
        # One job for the whole drain: a drain of many small blocks is not dropped in part.
        writes: list[BlockWrite] = []
        for i, block in enumerate(blocks):
            writes += self._log_block(block, times, log_last and i == len(blocks) - 1, final and i == len(blocks) - 1)
        if final and run.last_logged is not None and run.last_snapshot_step != run.last_logged_step:
            last = run.last_logged
            writes.append(BlockWrite(last, None, [time.time()], last.steps, {}, series=False))
            run.last_snapshot_step = run.last_logged_step
        if writes:
            writer = run.writer
            run.jobs.put(background.Job(
                lambda: self.guard("logging batch statistics", self._write_blocks, writer, writes),
                what=f"the statistics of steps {writes[0].first_step()}-{run.last_logged_step}"))
        if final:
            run.jobs.wait()

    def _write_blocks(self, writer: summary.Writer, writes: list[BlockWrite]) -> None:
        """On the writer thread: :meth:`_write_block` of each of ``writes``."""
        for write in writes:
            self._write_block(writer, write)

    def _log_block(self, block: Block, times: list[tuple[int, float]], log_last: bool,
                   final: bool) -> list[BlockWrite]:
        """Chooses the steps of ``block`` to log and the snapshots
        (:func:`choose_rows`) and notes them as logged. ``times``:
        ``(step, wall time)`` seen since the last drain.

        Returns:
            the :meth:`_write_block` jobs (empty: nothing to log)."""
        run, options = self.run, self.options
        _ = self.layer_infos  # made here, on the training thread; the writer thread reads it
        if block.lost:
            self.warn_once("the capture ring", f"{block.lost} training step(s) were overwritten on the device "
                           "before they could be read; their statistics are missing")
        choice = choose_rows(block.steps, options.log_every_n_steps, options.snapshot_every_n_steps,
                             run.last_logged_step, run.last_snapshot_step, log_last=log_last, final=final)
        run.newest = block.rows(slice(-1, None)) if choice.newest_unlogged else None
        rows = choice.rows
        if not len(rows):
            return []
        logged = np.asarray(block.steps)[rows]
        if len(choice.snapshot_steps):
            run.last_snapshot_step = int(choice.snapshot_steps[-1])
        seen = np.array([s for s, _ in times] + [np.iinfo(np.int64).max], np.int64)
        tail = run.execution_end if run.execution_end is not None else time.time()
        at = np.array([t for _, t in times] + [tail], np.float64)
        wall_times = at[np.minimum(np.searchsorted(seen, logged), len(at) - 1)]
        metrics = self._per_step_metrics(block, rows) if options.log_metrics else {}
        run.last_logged = block.rows(slice(rows[-1], rows[-1] + 1))  # views, no copy
        run.last_logged_step = int(logged[-1])
        return [BlockWrite(block, rows, wall_times, choice.snapshot_steps, metrics)]

    def _write_block(self, writer: summary.Writer, write: BlockWrite) -> None:
        """On the writer thread: of the steps at ``write.rows`` of its block
        (all of them for None), the selected layers' series (unless
        ``series=False``) and their snapshots at ``snapshot_steps``, and the
        per-step metrics."""
        block = write.block if write.rows is None else write.block.rows(write.rows)
        for name, layer in block.layers.items():
            if name not in self.layer_infos:
                continue
            writer.layer_block(self.layer_infos[name], block.steps, layer.batch_mean, layer.batch_var,
                               layer.moving_mean, layer.moving_var, layer.updates,
                               samples_per_channel=layer.samples_per_channel, init_mean=layer.init_mean,
                               init_var=layer.init_var, wall_times=write.wall_times,
                               snapshot_steps=write.snapshot_steps, series=write.series, replicas=layer.replicas)
        if write.metrics:
            writer.metrics_block("train", block.steps, write.metrics, write.wall_times)

    def _per_step_metrics(self, block: Block, rows: NDArray[np.int64]) -> dict[str, Any]:
        """The training step's logs at ``rows``. Running means since the
        epoch began become the value over just the steps since the last
        logged one: from their ``(total, count)``, ``(total - total') /
        (count - count')`` (a count that went down restarted: a new epoch).
        Other metrics are logged as the step returned them."""
        last_totals = self.run.last_totals
        out = {}
        for name, values in block.logs.items():
            value = values[rows]
            if name in block.metric_totals:
                total, count = (a[rows] for a in block.metric_totals[name])
                last_total, last_count = last_totals.get(name, (0.0, 0.0))
                before_total = np.concatenate([[last_total], total[:-1]])
                before_count = np.concatenate([[last_count], count[:-1]])
                restarted = count < before_count
                before_total[restarted], before_count[restarted] = 0.0, 0.0
                added = count - before_count
                with np.errstate(divide="ignore", invalid="ignore"):
                    value = np.where(added > 0, (total - before_total) / np.where(added > 0, added, 1.0), value)
                last_totals[name] = (float(total[-1]), float(count[-1]))
            out[name] = value
        return out

    # -- the measurements' time budget ---------------------------------------------

    def _within_budget(self, kind: str) -> bool:
        """Whether measurement ``kind`` (:data:`ACCOUNTS`) may run now under
        the options' ``measure_budget`` (:func:`tb_bnstats.recorder.state.within_budget`)."""
        return self.budget.allows(kind, ACCOUNTS[kind], time.monotonic())

    def _measured(self, kind: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, its wall time charged to measurement ``kind``."""
        began = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.budget.charge(kind, ACCOUNTS[kind], time.perf_counter() - began)

    def _live_findings(self, name: str) -> Any:
        """The checks on the model at a run's end (``live_findings``): run
        when within the budget or not yet run on this model, else the
        findings of their last run."""
        run, model = self.run, getattr(self.capture, "model", None)
        assert run.measure.live_findings is not None
        if self._live is not None and self._live[0] is model and not self._within_budget(MODEL_CHECKS):
            return self._live[1]
        live = self._measured(MODEL_CHECKS, self.guard, "checking the model on the probe batch",
                              run.measure.live_findings, name)
        self._live = (model, live) if live is not None else None
        return live

    def _run_probe(self) -> None:
        """The probe at the last logged step (logged first, so the probe's
        points fall on steps of the layer series); a failure turns it off."""
        run = self.run
        if run.last_logged_step is None or run.last_logged_step == run.last_probe_step:
            return
        if self._measured(PROBE, self.guard, "running the train/inference probe", self._log_probe,
                          run.last_logged_step) is None:
            # The live checks use the same batch.
            run.measure.probe = run.measure.live_findings = run.measure.frozen_recalibration = None

    def _log_probe(self, step: int) -> bool:
        run = self.run
        assert run.writer is not None and run.measure.probe is not None
        result = run.measure.probe()
        if result is None:
            return True  # its batch is not there yet (the first training batch, before the first step)
        if self.options.log_metrics:
            # How many samples the accuracies are over: BN012 tells a gap from the probe's sampling noise by it.
            samples = {"samples": float(len(result.outputs_train))} if "accuracy" in result.metrics_train else {}
            run.writer.metrics("probe_train", {**result.metrics_train, **samples}, step)
            run.writer.metrics("probe_inference", result.metrics_inference, step)
        for name, info in self.layer_infos.items():
            layer = result.layers.get(name)
            if layer is not None:
                run.writer.probe(info, step, quantities.probe_series(
                    info.epsilon, layer.probe_mean, layer.probe_var, layer.moving_mean, layer.moving_var,
                    layer.output_drift))
        run.last_probe_step = step
        return True

    def _run_population(self) -> None:
        """Population statistics at the last logged step; a failure (data
        exhausted, wrong shape) turns them off."""
        run = self.run
        if run.last_logged_step is None or run.last_logged_step == run.last_population_step:
            return
        if self._measured(POPULATION, self.guard, "measuring population statistics", self._log_population,
                          run.last_logged_step) is None:
            run.measure.population = None

    def _log_population(self, step: int) -> bool:
        run = self.run
        assert run.writer is not None and run.measure.population is not None and run.last_logged is not None
        stats = run.measure.population()
        for name, info in self.layer_infos.items():
            pop, moments = stats.get(name), run.last_logged.layers.get(name)
            if pop is not None and moments is not None:
                run.writer.population(info, step, quantities.population_series(
                    info.epsilon, pop.mean, pop.var, moments.moving_mean[-1], moments.moving_var[-1]))
        run.last_population_step = step
        return True

    # -- diagnosis ---------------------------------------------------------------

    def _diagnose(self) -> list[Any]:
        """Findings of this run (the last :data:`DIAGNOSIS_HISTORY` logged
        steps, from memory, and the live-model checks), written as
        ``diagnosis/findings`` and, with ``verbose=1``, printed in short."""
        from tb_bnstats import diagnosis

        run = self.run
        assert run.writer is not None
        log_dir = self.options.log_dir
        name = names.own_name(log_dir)
        computed = diagnosis.diagnose_run(name, run.writer.run_data())
        live = self._live_findings(name) if run.measure.live_findings is not None else None
        findings = [f for f, _ in diagnosis.merging.merge(computed, live)]  # logs first, then the model
        # A write that fails (a full disk) loses the stored copy, not the diagnosis.
        self.guard("writing the findings", run.writer.findings, run.last_logged_step,
                   [f.to_dict() for f in findings])
        if findings:
            command = names.diagnose_command(log_dir)
            self.say(f"{len(findings)} finding(s) for {name} ({command}):")
            for line in diagnosis.summary_lines(findings, command=command):
                self.say(f"  {line}")
        else:
            self.say(f"{name}: no BatchNormalization problem found")
        return findings
