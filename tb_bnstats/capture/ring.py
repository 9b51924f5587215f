"""The ring's row, defined once: its columns, their dtypes, how one step's
row is packed into a backend's buffers and how the buffers read back are
unpacked into :class:`tb_bnstats.capture.rows.Rows` (then
:class:`tb_bnstats.capture.Block`, :meth:`Rows.block`). numpy only.

A row holds, for the layers of one :class:`tb_bnstats.capture.rows.Layout`,
the column groups of :mod:`tb_bnstats.capture.rows` (``n``, ``step``,
``counts`` [L], ``values`` [V], ``moments`` [R * 4 sum(C)] float32,
``samples`` [R * L] when the layout has them). A backend makes a
:class:`RingFormat` of the layout and a :class:`Storage`, allocates each of
its arrays (:meth:`RingFormat.shape`, :attr:`Array.dtype`; ``host`` arrays:
:meth:`RingFormat.host_arrays`) with its own zeros, and at each step hands
:meth:`RingFormat.row` the groups' values (its own tensors: scalars or 1-D)
and an :class:`Ops` of its own (two functions: join parts into a 1-D of a
dtype; reinterpret float32 pairs as float64), and writes the row it gets
back into row ``(n - 1) % K`` of that array with its own op. A drain reads
each device array once and :meth:`RingFormat.rows` turns them back into
:class:`Rows`. The ring's K comes from :attr:`RingFormat.row_bytes`, the
bytes a row takes on the device.

One row, several storages. The columns are the same everywhere; where they
live and in which physical dtype is a :class:`Storage`, because the
backends' buffers cannot all be the same:

* :data:`FLOAT64` (TensorFlow): one ``float64`` variable, so that a step
  writes its row with one ``scatter_update`` (a variable has one dtype).
  The integers (``n``, ``step``, ``counts``) are float64, exact up to
  2**53 (an int64 past it is rounded to the nearest float64); ``values``
  and ``samples`` keep float64 (a log is not rounded to float32); the
  float32 ``moments`` go two to a float64 element (bitcast, a zero after an
  odd count), so the moments take 4 bytes as elsewhere.
* :data:`INT32` (JAX): an ``int32`` array of the integers and a ``float32``
  array of the rest: JAX runs without 64-bit types unless ``jax_enable_x64``
  (and TPUs have no float64). The integers are kept modulo 2**32, read as
  signed: exact below 2**31 (an int32 counter wraps past it); ``values``
  and ``samples`` are rounded to float32 (1e300 becomes inf).
* :data:`STEP_ON_DEVICE` (Keras on torch, eager): ``float32`` values and
  moments and the optimizer's ``int64`` step on the device; ``n`` and the
  update counts are Python integers the step already has, kept in a host
  array (no device op for them).
* :data:`COUNTS_ON_DEVICE` (PyTorch): ``float32`` values and moments and
  the modules' ``int64`` ``num_batches_tracked`` on the device; ``n``, the
  step, the metrics given as Python numbers (``host_values``, float32 as
  the device's values) and the values per channel (float64) on the host.
* :data:`GATHERED` (PyTorch on several ranks, DDP): as
  :data:`COUNTS_ON_DEVICE`, but each rank's moments and values per channel
  (float32) are one row gathered from every rank into an array of
  ``[K, R, width]`` (``per_replica``), replica after replica as the layout
  orders them.

Each storage round-trips its columns exactly within those ranges
(``tests/test_ring_layout.py``).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from tb_bnstats.capture.rows import Layout, Rows

# The column groups of a row (tb_bnstats.capture.rows). ``values`` are the values kept on the device,
# ``host_values`` those a backend keeps on the host (RingFormat.host_values says which are which).
N, STEP, COUNTS, VALUES, HOST_VALUES, MOMENTS, SAMPLES = (
    "n", "step", "counts", "values", "host_values", "moments", "samples")
GROUPS = (N, STEP, COUNTS, VALUES, HOST_VALUES, MOMENTS, SAMPLES)
MOMENTS_DTYPE = "float32"  # the moments' dtype in every storage


@dataclasses.dataclass(frozen=True)
class Array:
    """One buffer of a ring: ``[K, width]`` of ``dtype`` holding ``columns``
    in order (``[K, R, width]`` when ``per_replica``: one replica's part of
    each column, gathered from every replica). ``host``: a numpy array the
    backend writes from Python, not a device buffer (not in the row's
    device bytes). ``packed``: columns of float32 kept two to an element of
    a float64 array."""

    name: str
    dtype: str
    columns: tuple[str, ...]
    host: bool = False
    per_replica: bool = False
    packed: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Storage:
    """Where a row's columns live and as what (module docstring)."""

    name: str
    arrays: tuple[Array, ...]


FLOAT64 = Storage("float64", (Array("rows", "float64", (N, STEP, COUNTS, VALUES, SAMPLES, MOMENTS),
                                    packed=(MOMENTS,)),))
INT32 = Storage("int32", (Array("ints", "int32", (N, STEP, COUNTS)),
                          Array("floats", "float32", (VALUES, MOMENTS, SAMPLES))))
STEP_ON_DEVICE = Storage("step on device", (Array("floats", "float32", (VALUES, MOMENTS)),
                                            Array("steps", "int64", (STEP,)),
                                            Array("ints", "int64", (N, COUNTS), host=True)))
COUNTS_ON_DEVICE = Storage("counts on device", (Array("floats", "float32", (VALUES, MOMENTS)),
                                                Array("counts", "int64", (COUNTS,)),
                                                Array("ints", "int64", (N, STEP), host=True),
                                                Array("host_values", "float32", (HOST_VALUES,), host=True),
                                                Array("samples", "float64", (SAMPLES,), host=True)))
GATHERED = Storage("gathered", (Array("floats", "float32", (VALUES,)),
                                Array("gathered", "float32", (MOMENTS, SAMPLES), per_replica=True),
                                Array("counts", "int64", (COUNTS,)),
                                Array("ints", "int64", (N, STEP), host=True),
                                Array("host_values", "float32", (HOST_VALUES,), host=True)))
STORAGES = (FLOAT64, INT32, STEP_ON_DEVICE, COUNTS_ON_DEVICE, GATHERED)


class Ops(Protocol):
    """A backend's two operations for :meth:`RingFormat.row` (dtypes by
    numpy name)."""

    def vector(self, parts: Sequence[Any], dtype: str, out: Any = None) -> Any:
        """``parts`` (scalars and 1-D, the backend's or Python numbers) cast
        to ``dtype`` and joined in order into one 1-D (into ``out`` when
        given and the backend can)."""

    def bitcast_pairs(self, vector: Any) -> Any:
        """A float32 1-D of even length 2m as the float64 1-D [m] of the same bytes."""


class NumpyOps:
    """:class:`Ops` in numpy: host arrays, and the reference of the tests."""

    def vector(self, parts: Sequence[Any], dtype: str, out: Any = None) -> np.ndarray:
        row = (np.concatenate([np.asarray(p).reshape(-1).astype(dtype) for p in parts]) if len(parts)
               else np.zeros([0], dtype))
        if out is None:
            return row
        out[...] = row
        return out

    def bitcast_pairs(self, vector: Any) -> np.ndarray:
        return np.ascontiguousarray(vector, np.float32).view(np.float64)


NUMPY = NumpyOps()


class RingFormat:
    """The row of ``layout`` in ``storage``: each column's array, offset and
    width, the arrays' shapes, the pack (:meth:`row`) and the unpack
    (:meth:`rows`).

    Args:
        layout: the layers, logs and metrics of the rows.
        storage: one of :data:`STORAGES`.
        host_values: per value (``layout.num_values``), whether the backend
            keeps it on the host (``HOST_VALUES``); none by default.
    """

    def __init__(self, layout: Layout, storage: Storage, host_values: Sequence[bool] | None = None):
        self.layout, self.storage = layout, storage
        values = layout.num_values
        self.host_values = tuple(bool(h) for h in host_values) if host_values is not None else (False,) * values
        if len(self.host_values) != values:
            raise ValueError(f"host_values: {len(self.host_values)} flags for {values} values")
        on_host = sum(self.host_values)
        replicas = layout.replicas
        widths = {N: 1, STEP: 1, COUNTS: len(layout.layers), VALUES: values - on_host, HOST_VALUES: on_host,
                  MOMENTS: layout.num_moments, SAMPLES: layout.num_samples}
        self.arrays = {array.name: array for array in storage.arrays}
        self.columns: dict[str, tuple[Array, int, int]] = {}  # group -> (array, start, width in its own items)
        self.widths: dict[str, int] = {}  # array -> elements of a row (of one replica's part when per_replica)
        for array in storage.arrays:
            start = 0
            for group in array.columns:
                width = widths[group] // replicas if array.per_replica else widths[group]
                self.columns[group] = (array, start, width)
                start += (width + 1) // 2 if group in array.packed else width
            self.widths[array.name] = start
        missing = [group for group, width in widths.items() if width and group not in self.columns]
        if missing:
            raise ValueError(f"the {storage.name} storage has no column for {missing}")

    def shape(self, name: str, steps: int) -> list[int]:
        """The shape of array ``name`` in a ring of ``steps`` rows."""
        per_replica = [self.layout.replicas] if self.arrays[name].per_replica else []
        return [int(steps)] + per_replica + [self.widths[name]]

    def dtype(self, group: str) -> str:
        """The dtype ``group``'s values are stored as."""
        array = self.columns[group][0]
        return MOMENTS_DTYPE if group in array.packed else array.dtype

    @property
    def row_bytes(self) -> int:
        """Bytes a row takes on the device (host arrays not counted): what
        :func:`tb_bnstats.capture.rows.ring_steps` sizes the ring by."""
        return sum(self.widths[a.name] * np.dtype(a.dtype).itemsize * (self.layout.replicas if a.per_replica else 1)
                   for a in self.storage.arrays if not a.host)

    def device_arrays(self) -> list[Array]:
        return [array for array in self.storage.arrays if not array.host]

    def host_arrays(self, steps: int) -> dict[str, np.ndarray]:
        """The host arrays, zeros, for a ring of ``steps`` rows."""
        return {a.name: np.zeros(self.shape(a.name, steps), a.dtype) for a in self.storage.arrays if a.host}

    # -- pack ------------------------------------------------------------------------

    def row(self, name: str, ops: Ops, columns: dict[str, Sequence[Any]], out: Any = None) -> Any:
        """Array ``name``'s part of one step's row (one replica's part of a
        ``per_replica`` array), 1-D, from ``columns``: per group, its values
        in order as scalars and 1-D parts (the backend's or Python
        numbers); a group of no width may be left out."""
        array, parts = self.arrays[name], []
        for group in array.columns:
            width = self.columns[group][2]
            if not width:
                continue
            given = list(columns[group])
            if group in array.packed:
                if width % 2:
                    given.append(0.0)
                parts.append(ops.bitcast_pairs(ops.vector(given, MOMENTS_DTYPE)))
            else:
                parts += given
        return ops.vector(parts, array.dtype, out=out)

    # -- unpack ----------------------------------------------------------------------

    def _column(self, arrays: dict[str, np.ndarray], group: str) -> np.ndarray:
        array, start, width = self.columns[group]
        data = arrays[array.name]
        if group in array.packed:
            return np.ascontiguousarray(data[:, start:start + (width + 1) // 2]).view(np.float32)[:, :width]
        if array.per_replica:
            return data[:, :, start:start + width].reshape(len(data), -1)
        return data[:, start:start + width]

    def rows(self, arrays: dict[str, np.ndarray]) -> Rows:
        """The :class:`Rows` of the ring's arrays as read (numpy, one per
        array of the storage; host arrays are copied)."""
        arrays = {name: np.array(data) if self.arrays[name].host else data for name, data in arrays.items()}
        values = self._column(arrays, VALUES)
        if any(self.host_values):
            host = np.array(self.host_values)
            on_host = self._column(arrays, HOST_VALUES)
            joined = np.empty([len(values), len(host)], np.result_type(values, on_host))
            joined[:, ~host], joined[:, host] = values, on_host
            values = joined
        samples = self._column(arrays, SAMPLES) if self.layout.samples else None
        return Rows(self.layout, n=self._column(arrays, N)[:, 0], step=self._column(arrays, STEP)[:, 0],
                    counts=self._column(arrays, COUNTS), values=values, moments=self._column(arrays, MOMENTS),
                    samples=samples)
