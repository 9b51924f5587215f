"""``DeferredMonitor``: a loop's callback that makes its ``BNStatsMonitor``
when training begins.

A training loop (Lightning's ``Trainer``, the Hugging Face ``Trainer``) hands
its callbacks the model and the run's directory only once training begins.
Its callback checks its arguments when it is made (a bad one is an error at
construction, not at the first batch), keeps them, and makes the
:class:`~tb_bnstats.frameworks.torch.monitor.BNStatsMonitor` later, in its
loop's hook. This base holds what every such callback shares: the checks, the
kept arguments, the monitor, its findings and its epoch and close calls. It
imports torch, never TensorFlow, Keras or JAX.
"""

import os
from collections.abc import Callable
from typing import Any

from tb_bnstats.frameworks.torch.monitor import BNStatsMonitor
from tb_bnstats.options import Options


class DeferredMonitor:
    """The shared part of a loop's callback whose monitor is made when
    training begins (the subclass's hook sets :attr:`monitor`).

    Args:
        log_dir: the run's directory; None: the loop's, found when training
            begins.
        loss_fn: ``loss_fn(output, y)``, for the probe's loss in both modes.
        **options: the recording options of :class:`tb_bnstats.Options`.

    Raises:
        TypeError: an unknown keyword argument.
        ValueError: an argument out of its range.
    """

    #: The name the options' errors are reported under.
    name = "BNStatsCallback"

    def __init__(self, log_dir: str | os.PathLike[str] | None = None, *,
                 loss_fn: Callable[[Any, Any], Any] | None = None, **options: Any) -> None:
        super().__init__()
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"loss_fn must be callable as loss_fn(output, y), got {loss_fn!r}")
        # Checked now, used when training begins (the directory is the loop's then).
        Options.of(self.name, log_dir if log_dir is not None else "checked", options)
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.loss_fn = loss_fn
        self.options = options
        self.monitor: BNStatsMonitor | None = None

    @property
    def findings(self) -> Any:
        """The diagnosis of the last training run (a list of
        :class:`tb_bnstats.diagnosis.finding.Finding`), None before it ended
        (and in the processes that do not write)."""
        return None if self.monitor is None else self.monitor.findings

    def _epoch_end(self) -> None:
        """The epoch's steps drained, the probe and population measured."""
        if self.monitor is not None:
            self.monitor.epoch_end()

    def _close(self) -> None:
        """The run is written and diagnosed, the hooks removed."""
        if self.monitor is not None:
            self.monitor.close()
