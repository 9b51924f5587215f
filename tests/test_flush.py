"""Records reach the disk while training runs, and when training raises."""

import subprocess
import sys
import textwrap
import time

import keras
import numpy as np

import tb_bnstats
from keras_models import conv_net, data


def test_records_are_readable_during_training(tmp_path):
    x, y = data()
    model = conv_net()
    seen = {}

    class ReadWhileTraining(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                time.sleep(1.5)  # > flush_secs: the writer's thread has flushed by now
                seen["steps"] = list(tb_bnstats.load(tmp_path)["run"].layers["bn1"].steps)

    model.fit(x, y, batch_size=16, verbose=0,
              callbacks=[tb_bnstats.BNStatsCallback(tmp_path / "run", flush_secs=1, verbose=0), ReadWhileTraining()])
    assert seen["steps"][:2] == [1, 2]


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
    # flush_secs=60 never fired: what is on disk was flushed at exit.
    steps = tb_bnstats.load(tmp_path)["run"].layers["bn1"].steps
    np.testing.assert_array_equal(steps, [1, 2, 3])
