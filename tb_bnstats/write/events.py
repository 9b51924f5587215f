"""Serialized ``Event`` s of scalar values for many steps at once, without a
protobuf per value.

An ``Event`` whose ``summary`` holds ``n`` values, each a scalar float
tensor under a fixed tag and without metadata, serializes as

    0x09 <wall_time: 8-byte double>  0x10 <step: varint>  0x2a <len: varint> <summary>

(fields 1, 2 and 5 of ``tensorboard/compat/proto/event.proto``, in field
order as protobuf writes them) where ``summary`` has the same length for
every step and each value's float is its last 4 bytes (``float_val`` is the
last field of its ``TensorProto``, ``tensor`` the last of its ``Value``).
:class:`ScalarEvents` serializes that summary once, with protobuf, finds the
float offsets, and fills them for a whole block of steps with numpy. The
constructor parses one filled event back and checks it, so a protobuf that
serialized differently would fail loudly there, not write wrong files.
"""

import struct
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2


def scalar_tensor(value: float) -> tensor_pb2.TensorProto:
    """A scalar float ``TensorProto`` holding ``value``."""
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                                  float_val=[value])


def _varint(value: int) -> bytes:
    """Protobuf's varint of an int64 (a negative one as its 64-bit two's complement, 10 bytes)."""
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class ScalarEvents:
    """Events of one scalar value per tag of ``tags``, step after step.

    Args:
        tags: the tags, in the order of the values' columns.
    """

    def __init__(self, tags: Iterable[str]) -> None:
        self.tags = tuple(tags)
        values = [summary_pb2.Summary.Value(tag=tag, tensor=scalar_tensor(0.0)) for tag in self.tags]
        pieces = [summary_pb2.Summary(value=[v]).SerializeToString() for v in values]
        self._summary = np.frombuffer(b"".join(pieces), np.uint8)
        ends = np.cumsum([len(p) for p in pieces])
        # The 4 bytes of each value's float, as indices into the summary.
        self._float_bytes = (ends - 4)[:, None] + np.arange(4)
        self._summary_header = b"\x2a" + _varint(len(self._summary))
        self._check()

    def _check(self) -> None:
        values = np.arange(1, len(self.tags) + 1, dtype=np.float64) / 8.0
        (data,) = self.serialize(np.array([123456789]), np.array([1.5]), values[None, :])
        event = event_pb2.Event.FromString(data)
        got = [(v.tag, v.tensor.float_val[0]) for v in event.summary.value]
        if (event.step, event.wall_time, got) != (123456789, 1.5, list(zip(self.tags, values))):
            raise RuntimeError("tb_bnstats: this protobuf serializes Events differently than expected")

    def serialize(self, steps: Iterable[int], wall_times: Iterable[float], values: npt.ArrayLike) -> list[bytes]:
        """``[bytes]``: one serialized ``Event`` per row.

        Args:
            steps: int [S], the events' steps (>= 0).
            wall_times: float [S], their wall-clock times (seconds).
            values: float [S, n], one column per tag (stored as float32, as
                TensorBoard's scalar summaries are).
        """
        values = np.asarray(values, np.float64)
        rows = np.tile(self._summary, (len(values), 1))
        rows[:, self._float_bytes] = values.astype("<f4").view(np.uint8).reshape(len(values), len(self.tags), 4)
        header = self._summary_header
        return [b"\x09" + struct.pack("<d", float(t)) + b"\x10" + _varint(int(s)) + header + row.tobytes()
                for s, t, row in zip(steps, wall_times, rows)]
