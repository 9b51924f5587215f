"""Toy's adapter: a training loop calls :meth:`ToyMonitor.step` after each
step; everything else is :class:`tb_bnstats.loop.StepLoopMonitor`'s."""

from tb_bnstats.loop import StepLoopMonitor
from tb_bnstats.options import Options
from toyfw.capture import ToyCapture


class ToyMonitor(StepLoopMonitor):
    def __init__(self, model, log_dir, **options):
        super().__init__(Options.of("ToyMonitor", log_dir, options, default_probe=False))
        self.capture = self._recorder.guard("instrumenting the model", ToyCapture, model)
        self._recorder.attach(self.capture, "toy model")
        self._begin(steps_before=0)
        self._recorder.epoch_begin()

    def step(self, loss=None):
        step = self._next_step(None)
        values = {} if loss is None else {"loss": loss}
        if self.capture is not None:
            self._recorder.guard("capturing the batch moments", self.capture.write_step, step, values)
        self._step_taken(step)
