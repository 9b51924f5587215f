"""The record framing of an event file (a TFRecord file), written and checked
in one place.

A record is ``uint64 length`` (little endian), ``uint32`` masked CRC32C of
those 8 bytes, ``length`` bytes of data (a serialized ``Event``), ``uint32``
masked CRC32C of the data. The mask is TensorFlow's
(``tensorflow/core/lib/hash/crc32c.h``): ``((crc >> 15) | (crc << 17)) +
0xa282ead8`` modulo 2**32. CRC32C itself comes from ``google-crc32c`` (C,
about 0.2 microseconds per kB; TensorBoard's pure-Python one is ~1,000x
slower), so writing needs neither TensorFlow nor a slow checksum.
"""

import struct

import google_crc32c

HEADER_BYTES = 12  # length and its checksum
FOOTER_BYTES = 4  # the data's checksum
_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    """The masked CRC32C of ``data`` (see the module)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record holding ``data``."""
    length = struct.pack("<Q", len(data))
    return b"".join((length, struct.pack("<I", masked_crc32c(length)), data, struct.pack("<I", masked_crc32c(data))))


def data_length(header: bytes) -> int | None:
    """The data length a record's 12-byte ``header`` announces, or None when
    the length's checksum does not match (a corrupted record)."""
    length = header[:8]
    if int.from_bytes(header[8:HEADER_BYTES], "little") != masked_crc32c(length):
        return None
    return int.from_bytes(length, "little")
