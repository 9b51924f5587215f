"""Data for the measurements: arrays, tensors, datasets, data loaders and
iterables of batches, all turned into ``(x, y_or_None)`` batches the same
way. numpy only (a Keras ``PyDataset`` is recognized without importing Keras
first; torch tensors are cut as torch tensors)."""

import sys

import numpy as np


def _is_keras_py_dataset(data):
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(data, keras.utils.PyDataset)


def first_leaf(x):
    """The first array of a nested dict / list / tuple."""
    while isinstance(x, (dict, list, tuple)):
        x = next(iter(x.values())) if isinstance(x, dict) else x[0]
    return x


def num_rows(x):
    """Rows (the batch axis) of an array or of the first array of a structure."""
    return int(first_leaf(x).shape[0])


def split_element(element):
    """A batch as given by a dataset or generator: ``x``, ``(x,)``, ``(x, y)``
    or ``(x, y, sample_weight)``; a dict is ``x``."""
    if isinstance(element, (tuple, list)):
        if len(element) == 0:
            raise ValueError("empty batch")
        return element[0], (element[1] if len(element) > 1 else None)
    return element, None


def slice_rows(x, idx):
    """``x[idx]`` on the batch axis of every array of a structure."""
    if isinstance(x, dict):
        return {k: slice_rows(v, idx) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(slice_rows(v, idx) for v in x)
    if type(x).__module__.startswith("torch"):
        return x[idx]  # a torch tensor stays one, on its device
    return np.asarray(x)[idx]


def validate_data(data, name="data"):
    """Checks that ``data`` can give batches, at construction time.

    Args:
        data: ``x``, ``(x, y)`` or ``(x, y, sample_weight)`` arrays with the
            same number of rows (>= 1), or an iterable of batches
            (``tf.data.Dataset``, ``PyDataset``, a list of batches).
        name: the argument named in the message.

    Raises:
        ValueError: ``data`` is none of these.
    """
    array_like = lambda a: hasattr(a, "shape") and hasattr(a, "dtype")  # noqa: E731
    if isinstance(data, (str, bytes)) or np.isscalar(data):
        raise ValueError(f"{name} must be arrays (x, y) or a dataset of batches, got {type(data).__name__}")
    if array_like(data) or (isinstance(data, tuple) and data and array_like(data[0])):
        parts = data if isinstance(data, tuple) else (data,)
        if len(parts) > 3 or not all(array_like(p) and len(p.shape) >= 1 for p in parts):
            raise ValueError(f"{name} as arrays must be x, (x, y) or (x, y, sample_weight), each with a batch axis")
        rows = {int(p.shape[0]) for p in parts}
        if len(rows) != 1 or 0 in rows:
            raise ValueError(f"{name} arrays must have the same number of rows (>= 1), got {sorted(rows)}")
        return
    if isinstance(data, dict) or not hasattr(data, "__iter__"):
        raise ValueError(f"{name} must be arrays (x, y) or an iterable of (x, y) batches, got {type(data).__name__}")


def iter_batches(data, batch_size=32, shuffle=False, seed=0):
    """Yields ``(x, y_or_None)`` batches from ``data``:

    * an array, a tensor or a dict of arrays: ``x``, cut into ``batch_size`` rows;
    * a tuple ``(x, y)`` or ``(x, y, sample_weight)`` of arrays: the same;
    * anything else iterable -- a batched ``tf.data.Dataset``, a
      ``keras.utils.PyDataset``, a generator, a list of batches -- yields batches
      as they come (``x`` or ``(x, y[, w])``).

    ``shuffle`` permutes array rows (with ``seed``) before batching.
    """

    array_like = lambda a: hasattr(a, "shape") and hasattr(a, "dtype")  # noqa: E731
    x = y = None
    if array_like(data) or (isinstance(data, dict) and all(array_like(v) for v in data.values())):
        x = data
    elif isinstance(data, tuple) and data and (array_like(data[0]) or isinstance(data[0], dict)):
        x, y = data[0], (data[1] if len(data) > 1 else None)
    if x is not None:
        n = num_rows(x)
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield slice_rows(x, idx), (None if y is None else slice_rows(y, idx))
        return
    if _is_keras_py_dataset(data):
        for i in range(len(data)):
            yield split_element(data[i])
        return
    for element in data:
        yield split_element(element)
