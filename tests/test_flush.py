"""Records reach the disk while training runs, and when training raises."""

import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

import tb_bnstats
from keras_models import conv_net, data

pytestmark = pytest.mark.backend  # runs again under each Keras backend (Makefile, test-python)


def test_records_are_readable_during_training(tmp_path):
    """Within one drain interval plus one flush interval (here: flush_secs,
    as the steps are slow) of a step, its records are on disk."""
    x, y = data()
    model = conv_net()
    seen = {}

    class ReadWhileTraining(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                time.sleep(1.2)  # > flush_secs: the next step's start drains the ring

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 3:  # after the callback's drain (it comes first in the list)
                time.sleep(1.2)  # > flush_secs: the writer's thread has written and flushed
                seen["steps"] = list(tb_bnstats.load(tmp_path)["run"].layers["bn1"].steps)

    cb = tb_bnstats.BNStatsCallback(tmp_path / "run", flush_secs=1, verbose=0)
    model.fit(x, y, batch_size=16, verbose=0, callbacks=[cb, ReadWhileTraining()])
    assert seen["steps"] == [1, 2, 3]
    assert cb._recorder.capture is not None


def test_records_survive_training_that_raises(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        import keras, tb_bnstats
        from keras_models import conv_net, data

        class Boom(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch == 2:
                    raise RuntimeError("user code failed")

        x, y = data()
        conv_net().fit(x, y, batch_size=16, verbose=0, callbacks=[
            tb_bnstats.BNStatsCallback({str(tmp_path / 'run')!r}, flush_secs=60, verbose=0), Boom()])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "user code failed" in result.stderr
    # flush_secs=60 never fired: the ring was drained and written at exit.
    steps = tb_bnstats.load(tmp_path)["run"].layers["bn1"].steps
    np.testing.assert_array_equal(steps, [1, 2, 3])


class FailingBatches(keras.utils.PyDataset):
    """Batches of ``x, y``; asking for batch ``fail_at`` raises."""

    def __init__(self, x, y, batch, fail_at):
        super().__init__()
        self.x, self.y, self.batch, self.fail_at = x, y, batch, fail_at

    def __len__(self):
        return len(self.x) // self.batch

    def __getitem__(self, i):
        if i == self.fail_at:
            raise ValueError("a corrupt sample")
        return self.x[i * self.batch:(i + 1) * self.batch], self.y[i * self.batch:(i + 1) * self.batch]


def test_a_train_function_that_raises_drains_the_ring_first(tmp_path):
    """The data fails inside Keras' train function: before the exception
    reaches the caller, every step that ran is drained, written and the file
    closed (flush_secs=60: nothing was drained before)."""
    x, y = data(n=160)
    model = conv_net()
    cb = tb_bnstats.BNStatsCallback(tmp_path / "run", flush_secs=60, verbose=0)
    done = []
    count = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: done.append(batch))
    with pytest.raises(Exception, match="a corrupt sample"):
        model.fit(FailingBatches(x, y, 16, fail_at=7), epochs=1, verbose=0, callbacks=[cb, count])
    # (Not the optimizer's count: in the failing call TensorFlow may already
    # have run the ops that do not wait for the data, its increment among them.)
    ran = len(done)
    assert ran >= 5
    if keras.backend.backend() == "torch":
        # Keras' torch trainer reads the data outside the train function: the exception leaves fit
        # without passing any hook. The run is finished at the next fit of the model or at exit:
        from tb_bnstats import recorder

        assert cb._recorder.writer is not None
        recorder._close_open_runs()  # what atexit runs
    assert cb._recorder.writer is None  # the run was closed
    layer = tb_bnstats.load(tmp_path)["run"].layers["bn1"]
    np.testing.assert_array_equal(layer.steps, np.arange(1, ran + 1))
    np.testing.assert_array_equal(layer.series["updates"], layer.steps)


class Boom(keras.callbacks.Callback):
    """Another callback that fails after the third step."""

    def on_train_batch_end(self, batch, logs=None):
        if batch == 2:
            raise RuntimeError("user code failed")


def train_until_another_callback_fails(model, cb):
    """A fit of ``model`` with ``cb`` that Boom ends after 3 steps."""
    x, y = data()
    with pytest.raises(RuntimeError, match="user code failed"):
        model.fit(x, y, batch_size=16, verbose=0, callbacks=[cb, Boom()])


def test_a_run_left_open_by_another_callback_is_written_at_the_next_fit(tmp_path):
    x, y = data()
    model = conv_net()
    cb = tb_bnstats.BNStatsCallback(tmp_path / "run", flush_secs=60, verbose=0)
    train_until_another_callback_fails(model, cb)
    assert cb._recorder.writer is not None  # Keras gave no sign: the run is still open
    model.fit(x, y, batch_size=16, verbose=0, callbacks=[cb])
    layer = tb_bnstats.load(tmp_path)["run"].layers["bn1"]
    np.testing.assert_array_equal(layer.steps, np.arange(1, 3 + 4 + 1))  # 3 steps, then a whole epoch of 4
    assert len(list((tmp_path / "run").glob("events.out.tfevents.*"))) == 2


def test_a_run_left_open_takes_no_steps_of_the_next_callbacks_run(tmp_path):
    """cb1's fit raised in another callback; a new callback trains the same
    model next: cb1's run is closed before, with only its own steps."""
    x, y = data()
    model = conv_net()

    first = tb_bnstats.BNStatsCallback(tmp_path / "a", flush_secs=60, verbose=0)
    train_until_another_callback_fails(model, first)
    second = tb_bnstats.BNStatsCallback(tmp_path / "b", flush_secs=60, verbose=0)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[second])
    assert first._recorder.writer is None
    runs = tb_bnstats.load(tmp_path)
    np.testing.assert_array_equal(runs["a"].layers["bn1"].steps, [1, 2, 3])
    np.testing.assert_array_equal(runs["b"].layers["bn1"].steps, np.arange(4, 12))
