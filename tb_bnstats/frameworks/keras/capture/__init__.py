"""Keras captures: Keras 3's, one module per backend (:mod:`.tensorflow`,
:mod:`.jax` and :mod:`.torch`), and tf_keras' (Keras 2, :mod:`.tf_keras`, on
the TensorFlow one), on what they share (:mod:`.hooks`, :mod:`tb_bnstats.capture.rows`,
:mod:`.layers`).

:func:`capture_for` picks the module of the running backend;
:func:`check_backend` says at construction time, with a clear
``ValueError``, when a backend is not supported.
"""

import importlib

SUPPORTED_BACKENDS = ("tensorflow", "jax", "torch")
_CAPTURES = {"tensorflow": "TensorFlowCapture", "jax": "JaxCapture", "torch": "TorchCapture"}


def check_backend():
    """Returns the running Keras backend's name.

    Raises:
        ValueError: the backend has no capture (Keras' ``numpy`` backend,
            which cannot train, or ``openvino``).
    """
    import keras

    backend = keras.backend.backend()
    if backend not in SUPPORTED_BACKENDS:
        raise ValueError(
            f"tb_bnstats captures BatchNormalization moments with Keras' {' / '.join(SUPPORTED_BACKENDS)} "
            f"backends; this process runs KERAS_BACKEND={backend!r}. Set KERAS_BACKEND to one of them (before "
            f"importing keras), or log moments yourself with tb_bnstats.Writer.layer_moments")
    return backend


def backend_module():
    """The capture module of the running backend.

    Raises:
        ValueError: the backend is not supported (:func:`check_backend`).
    """
    return importlib.import_module(f"tb_bnstats.frameworks.keras.capture.{check_backend()}")


def capture_for(model):
    """A :class:`tb_bnstats.capture.Capture` instrumenting ``model`` with the
    running backend's module (:mod:`.tf_keras` for a tf_keras model).

    Raises:
        ValueError: the backend is not supported (:func:`check_backend`).
    """
    from tb_bnstats.frameworks.keras.capture import tf_keras

    if tf_keras.is_tf_keras_model(model):
        return tf_keras.TfKerasCapture(model)
    backend = check_backend()
    return getattr(backend_module(), _CAPTURES[backend])(model)


def end_of_data_errors():
    """The exceptions the running backend's train function raises when its
    data ends (Keras ends the epoch on them; they are not failures)."""
    return backend_module().end_of_data_errors()


def processes():
    """``(index, count)``: this process among the processes training the
    model together -- JAX's (``jax.distributed``: every process runs the same
    step on its devices); ``(0, 1)`` on the other backends (Keras 3 has no
    multi-worker strategy on TensorFlow, keras-team/keras#20601)."""
    if check_backend() == "jax":
        import jax

        return int(jax.process_index()), int(jax.process_count())
    return 0, 1
