"""The base of the adapters for training loops that call a step method
themselves: :class:`StepLoopMonitor` (the PyTorch monitor,
:class:`tb_bnstats.torch.BNStatsMonitor`; the graph monitors,
:mod:`tb_bnstats.compat.v1`; and next the Lightning, Hugging Face and Flax
ones). It holds what they share: the options, the recorder, the step
numbering, the epochs, and closing."""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from tb_bnstats.options import Options
from tb_bnstats.recorder import EVERYTHING, Capabilities, Recorder

if TYPE_CHECKING:
    from tb_bnstats.diagnosis.finding import Finding

_Monitor = TypeVar("_Monitor", bound="StepLoopMonitor")


class StepLoopMonitor:
    """What the monitors of loops that call a step method share.

    Steps: each training step is logged at the optimizer's step count after
    it. Not given, it is one more than the last. Given, it may repeat the
    last one (the same optimizer step again: the later call's moments and
    values stand for it, as when the Keras capture sees a step twice) but
    never go back: a step smaller than the last one, or not an int, warns
    once and is counted on from the last (last + 1).

    Closing: :meth:`close` ends the run (everything written, the diagnosis
    made; idempotent); leaving a ``with`` block closes it, and an exception
    in the block writes what was kept and closes without a diagnosis. A run
    never closed is written when the interpreter exits. Monitoring failures
    are warnings (:meth:`tb_bnstats.recorder.Recorder.guard`), never
    exceptions in the training loop.

    Subclasses make the capture (:meth:`tb_bnstats.recorder.Recorder.attach`),
    call :meth:`_begin` when the run starts, :meth:`_next_step` and
    :meth:`_step_taken` at each step, and release what they hold in
    :meth:`_release`.

    Args:
        options: the :class:`tb_bnstats.Options`.
    """

    # Where the messages of ``verbose=1`` go (the diagnosis, what was found): print by default; an adapter in
    # a framework's own training loop routes them into that framework's logging.
    say_to: Callable[[str], None] = print

    def __init__(self, options: Options) -> None:
        self.options = options
        self.log_dir = options.log_dir
        self._recorder = Recorder(options, out=self.say_to)
        self._step = 0  # the last step taken
        self._epoch_start = 0  # the step at the epoch's start
        self.begun = False  # the run has begun (at construction, or at the first step)
        self.closed = False

    @property
    def findings(self) -> "list[Finding] | None":
        """The diagnosis made at :meth:`close` (a list of
        :class:`tb_bnstats.diagnosis.finding.Finding`), None before (and
        in a process that does not write the run)."""
        return self._recorder.findings

    def _begin(self, steps_before: int, capabilities: Capabilities = EVERYTHING) -> None:
        """The run begins, ``steps_before`` optimizer steps already taken."""
        self._step = self._epoch_start = steps_before
        self.begun = True
        self._recorder.begin(lambda: steps_before, capabilities=capabilities)

    def _next_step(self, step: Any) -> int:
        """The step of the training step just taken, given ``step`` (None:
        one more than the last); see the class for the rule."""
        last = self._step
        if step is None:
            return last + 1
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or (self.begun and step < last):
            self._recorder.warn_once("step", f"step must be an int, never smaller than the last one ({last}), "
                                     f"got {step!r}; counting on from {last}")
            return last + 1
        return int(step)

    def _step_taken(self, step: int) -> None:
        """The training step ``step`` was taken and captured."""
        self._step = step
        rec = self._recorder
        rec.execution_ended()
        rec.steps_done(step - self._epoch_start)

    def _epoch_end(self, val_metrics: dict[str, Any]) -> None:
        """An epoch ended: drained, measured, ``val_metrics`` logged; the
        next one begins."""
        rec = self._recorder
        rec.epoch_end({k: float(v) for k, v in val_metrics.items()}, lambda: self._step)
        rec.epoch_begin()
        self._epoch_start = self._step

    def _release(self) -> None:
        """Releases what the monitor holds in the model (hooks); called once,
        at close. Nothing by default."""

    def close(self) -> None:
        """Ends the run: everything drained and written, the probe and
        population measured once more, the diagnosis made (:attr:`findings`,
        printed with ``verbose=1``), the event file closed, and what the
        monitor holds in the model released (the PyTorch monitor's hooks).
        Idempotent."""
        if self.closed:
            return
        self.closed = True
        rec = self._recorder
        try:
            if self.begun:
                rec.epoch_end({}, lambda: self._step)
                rec.end()
        finally:
            self._release()

    def __enter__(self: _Monitor) -> _Monitor:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc_type is None:
            self.close()
            return False
        if not self.closed:
            self.closed = True  # training raised: write what was kept, no diagnosis
            try:
                self._recorder.abandon()
            finally:
                self._release()
        return False
