"""Where the process imported TensorFlow (a Keras program on TensorFlow), a
URL's scheme that TensorFlow's file systems handle goes through
``tf.io.gfile``: here ``ram://``, which fsspec does not know (construction
would fail through fsspec), written by the Keras callback and read back with
TensorFlow. The S3 server tests are in tests/remote."""

import numpy as np
import tensorflow as tf

import tb_bnstats
from keras_models import conv_net, data


def test_a_scheme_of_tensorflow_is_written_and_read_through_tf_io_gfile():
    x, y = data(n=64)
    model = conv_net()
    cb = tb_bnstats.BNStatsCallback("ram://logs/run", verbose=0, snapshot_every_n_steps=1)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb])
    files = tf.io.gfile.listdir("ram://logs/run")
    assert len(files) == 1 and files[0].startswith("events.out.tfevents."), files
    run = tb_bnstats.load("ram://logs")["run"]
    assert list(run.layers["bn1"].steps) == [1, 2, 3, 4]
    np.testing.assert_allclose(run.layers["bn1"].snapshots["moving_mean"][-1],
                               model.get_layer("bn1").moving_mean.numpy(), rtol=1e-6, atol=1e-7)


def test_gs_needs_no_gcsfs_where_tensorflow_handles_it():
    """TensorFlow has ``gs://``: no fsspec package is asked for (gcsfs is not
    installed in this venv)."""
    assert "gs" in tf.io.gfile.get_registered_schemes()
    assert tb_bnstats.Options("gs://bucket/run").log_dir == "gs://bucket/run"
