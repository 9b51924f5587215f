"""``BNStatsCallback``: tb_bnstats in the Hugging Face ``Trainer``.

A ``transformers.TrainerCallback`` that makes a
:class:`tb_bnstats.torch.BNStatsMonitor` on the trainer's model when
``train()`` begins, hands it each optimizer step at ``state.global_step``,
and closes it when ``train()`` ends. Everything it logs and finds is the
monitor's; this module decides only what the loop decides (the directory,
the step, which process writes). It imports transformers and torch, never
TensorFlow, Keras or JAX.
"""

import datetime
import os
import socket
from typing import Any

from tb_bnstats.frameworks.torch.deferred import DeferredMonitor
from tb_bnstats.frameworks.torch.monitor import BNStatsMonitor

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised where transformers is missing
    raise ImportError("tb_bnstats.transformers needs transformers: pip install 'tb_bnstats[transformers]'") from exc

# How transformers names the default TensorBoard directory under output_dir (its default_logdir()).
_RUNS, _TIME_FORMAT = "runs", "%b%d_%H-%M-%S"
# How far back the TensorBoardCallback's directory is looked for (it was named a moment before).
_SECONDS_BACK = 3


def tensorboard_dir(args: Any, state: Any, now: datetime.datetime | None = None) -> str:
    """The directory transformers' ``TensorBoardCallback`` writes the run
    into, as it names it at ``on_train_begin``.

    * transformers 4: ``args.logging_dir`` (``/trial_name`` in a
      hyperparameter search);
    * transformers 5: ``$TENSORBOARD_LOGGING_DIR`` (``~`` expanded), else
      ``output_dir/runs/<%b%d_%H-%M-%S>_<host>``, the time it began
      (``.../<trial_name>`` in a hyperparameter search, the variable then
      not used). The callback made that directory a moment before this one
      runs (the trainer calls its callbacks in order, the reporting ones
      first): the newest of the last few seconds' names that exists is it;
      without a ``TensorBoardCallback`` (``report_to`` without
      ``"tensorboard"``), the name of ``now``.

    Args:
        args: the ``TrainingArguments``.
        state: the ``TrainerState``.
        now: the time to name the directory from (default: now).

    Returns:
        The directory.
    """
    trial = state.trial_name if getattr(state, "is_hyper_param_search", False) else None
    logging_dir = getattr(args, "logging_dir", None)
    if logging_dir:  # transformers 4
        return os.path.join(logging_dir, trial) if trial else logging_dir
    from_env = os.getenv("TENSORBOARD_LOGGING_DIR")
    if from_env is not None and trial is None:
        return os.path.expanduser(from_env)
    now = now or datetime.datetime.now()
    host = socket.gethostname()
    candidates = [os.path.join(args.output_dir, _RUNS,
                               (now - datetime.timedelta(seconds=back)).strftime(_TIME_FORMAT) + "_" + host,
                               *([trial] if trial else []))
                  for back in range(_SECONDS_BACK + 1)]
    return next((path for path in candidates if os.path.isdir(path)), candidates[0])


class BNStatsCallback(DeferredMonitor, TrainerCallback):
    """Logs every BatchNorm module's batch moments against its running
    statistics at every optimizer step of ``Trainer.train()``, for
    TensorBoard's BN Convergence tab, and diagnoses the run when it ends.

    Example::

        from tb_bnstats.transformers import BNStatsCallback

        args = TrainingArguments("out", report_to="tensorboard")
        Trainer(model, args, train_dataset=train, callbacks=[BNStatsCallback()]).train()
        # then: tensorboard --logdir out/runs   and open the "BN Convergence" tab

    Where: without ``log_dir``, the directory the trainer's
    ``TensorBoardCallback`` writes (:func:`tensorboard_dir`), so the tab and
    the trainer's ``train/loss``, ``train/learning_rate`` ... are one run.

    Steps: a training step is logged at ``state.global_step``, the number of
    optimizer steps, at ``on_step_end``. With
    ``gradient_accumulation_steps=k`` that is one step per k batches, and the
    moments logged are those of the last micro-batch (each micro-batch counts
    as an update of the running statistics). The loss is the trainer's own
    (``train/loss`` in the same run, every ``logging_steps``); resuming from
    a checkpoint restores ``global_step`` and the run goes on from there.

    Only the world's process zero writes: under ``torch.distributed`` every
    process makes its monitor and rank 0 writes
    (:class:`tb_bnstats.torch.BNStatsMonitor`); a process other than zero
    outside ``torch.distributed`` monitors nothing. Evaluation and
    prediction run in ``eval()`` without gradients and are not logged.

    The probe: none by default (the trainer hands callbacks no batch);
    ``probe_data`` (a batch the model takes, ``{"pixel_values": ...}`` with
    ``y`` for the accuracy, or arrays ``(x, y)``) turns it on.

    Args:
        log_dir: the run's directory; None (default): the
            ``TensorBoardCallback``'s, as above.
        loss_fn: ``loss_fn(output, y)``, for the probe's loss in both modes.
        **options: the recording options of :class:`tb_bnstats.Options`
            (``log_every_n_steps``, ``snapshot_every_n_steps``, ``layers``,
            ``log_metrics``, ``flush_secs``, ``verbose``, ``probe_data``,
            ``probe_every_n_steps``, ``population_data``, ...).

    Raises:
        TypeError: an unknown keyword argument.
        ValueError: an argument out of its range.
    """

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """``train()`` begins: the monitor is made on ``model``, from the
        step it resumed at."""
        import torch.distributed as dist

        self.monitor = None
        several = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if model is None or not (state.is_world_process_zero or several):
            return
        log_dir = self.log_dir if self.log_dir is not None else tensorboard_dir(args, state)
        self.monitor = BNStatsMonitor(model, log_dir, loss_fn=self.loss_fn, start_step=int(state.global_step),
                                      **self.options)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """An optimizer step was taken: logged at ``state.global_step``."""
        if self.monitor is not None:
            self.monitor.step(step=int(state.global_step))

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The epoch's steps drained, the probe and population measured."""
        self._epoch_end()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The run is written and diagnosed, the hooks removed."""
        self._close()
