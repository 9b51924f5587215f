"""Keras 3 captures, one module per backend.

:func:`capture_for` picks the module of the running backend;
:func:`check_backend` says at construction time, with a clear
``ValueError``, when a backend is not supported yet.
"""

SUPPORTED_BACKENDS = ("tensorflow",)


def check_backend():
    """Returns the running Keras backend's name.

    Raises:
        ValueError: the backend has no capture yet.
    """
    import keras

    backend = keras.backend.backend()
    if backend not in SUPPORTED_BACKENDS:
        raise ValueError(
            f"tb_bnstats captures BatchNormalization moments with Keras' {' / '.join(SUPPORTED_BACKENDS)} "
            f"backend; this process runs KERAS_BACKEND={backend!r}. Set KERAS_BACKEND=tensorflow (before "
            f"importing keras), or log moments yourself with tb_bnstats.Writer.layer_moments")
    return backend


def capture_for(model):
    """A :class:`tb_bnstats.capture.Capture` instrumenting ``model`` with the
    running backend's module.

    Raises:
        ValueError: the backend is not supported (:func:`check_backend`).
    """
    check_backend()
    from tb_bnstats.capture.keras.tensorflow import TensorFlowCapture

    return TensorFlowCapture(model)


def end_of_data_errors():
    """The exceptions the running backend's train function raises when its
    data ends (Keras ends the epoch on them; they are not failures)."""
    check_backend()
    from tb_bnstats.capture.keras import tensorflow

    return tensorflow.end_of_data_errors()
