"""TFRecord files of `tf.train.Example`s, written and read without TensorFlow.

A TFRecord file is a sequence of records, each framed as

    uint64 length (LE) | uint32 masked crc32c(length bytes) | data | uint32 masked crc32c(data)

with crc32c the Castagnoli CRC and `masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8` (mod 2^32).
The data is a serialized `tf.train.Example`:

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }  (an entry: string key = 1, Feature value = 2)
    Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2;
                       Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1 [packed]; }
    Int64List { repeated int64 value = 1 [packed]; }

encoded here by hand (protobuf's wire format: varints, length-delimited fields, packed repeats),
so `tf.data.TFRecordDataset` + `tf.io.parse_single_example` read these files and nothing needs
TensorFlow to write them. `read_records` / `parse_example` read them back (checking both CRCs).

CRC32C runs in C when the `google-crc32c` or `crc32c` package is installed, else in Python.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c_python(data: bytes | memoryview) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord frames use."""
    crc = _U32
    table = _TABLE
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _U32


def _fast_crc32c() -> Callable[[bytes], int] | None:
    try:
        import google_crc32c

        if google_crc32c.implementation == "c":
            return lambda data: int(google_crc32c.value(bytes(data)))
    except ImportError:
        pass
    try:
        import crc32c

        return lambda data: int(crc32c.crc32c(bytes(data)))
    except ImportError:
        return None


crc32c: Callable[[bytes], int] = _fast_crc32c() or crc32c_python


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _U32


def frame(data: bytes) -> bytes:
    """One TFRecord record holding `data`."""
    length = struct.pack("<Q", len(data))
    return b"".join(
        (
            length,
            struct.pack("<I", masked_crc32c(length)),
            data,
            struct.pack("<I", masked_crc32c(data)),
        )
    )


class TFRecordError(ValueError):
    """A TFRecord file that is truncated or fails its checksums."""


def read_records(stream: BinaryIO) -> Iterator[bytes]:
    """The records of a TFRecord stream, each checked against its two CRCs."""
    while True:
        head = stream.read(12)
        if not head:
            return
        if len(head) < 12:
            raise TFRecordError("truncated record header")
        length_bytes, length_crc = head[:8], struct.unpack("<I", head[8:])[0]
        if masked_crc32c(length_bytes) != length_crc:
            raise TFRecordError("record length fails its crc32c")
        (length,) = struct.unpack("<Q", length_bytes)
        data = stream.read(length)
        tail = stream.read(4)
        if len(data) < length or len(tail) < 4:
            raise TFRecordError("truncated record")
        if masked_crc32c(data) != struct.unpack("<I", tail)[0]:
            raise TFRecordError("record data fails its crc32c")
        yield data


# -- protobuf wire format --------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s: ten bytes of two's complement, as protobuf does
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


Feature = tuple[str, Sequence[Any]]  # ("bytes" | "float" | "int64", values)


def _feature(kind: str, values: Sequence[Any]) -> bytes:
    if kind == "bytes":
        body = b"".join(_field(1, bytes(v)) for v in values)
        return _field(1, body)
    if kind == "float":
        packed = struct.pack(f"<{len(values)}f", *values)
        return _field(2, _field(1, packed) if values else b"")
    if kind == "int64":
        packed = b"".join(_varint(int(v)) for v in values)
        return _field(3, _field(1, packed) if values else b"")
    raise ValueError(f"unknown feature kind {kind!r}")


def encode_example(features: Mapping[str, Feature]) -> bytes:
    """A serialized `tf.train.Example` with these features (name -> (kind, values))."""
    entries = b"".join(
        _field(1, _field(1, name.encode("utf-8")) + _field(2, _feature(kind, values)))
        for name, (kind, values) in features.items()
    )
    return _field(1, entries)


def feature_of(value: Any) -> Feature:
    """img2dataset's mapping of a metadata value to a feature (its TFRecordSampleWriter): ints
    (and bools) int64, floats float, lists by their first element, anything else bytes (None
    as b"", text as UTF-8, other values as JSON text)."""
    if isinstance(value, list | tuple):
        if not value:
            return ("bytes", [])
        if isinstance(value[0], int):
            return ("int64", [int(v) for v in value])
        if isinstance(value[0], float):
            return ("float", [float(v) for v in value])
        return ("bytes", [_bytes(v) for v in value])
    if isinstance(value, int):
        return ("int64", [int(value)])
    if isinstance(value, float):
        return ("float", [value])
    return ("bytes", [_bytes(value)])


def _bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


# -- reading Examples back ---------------------------------------------------------------------


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise TFRecordError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TFRecordError("varint too long")


def _fields(data: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of a message: bytes for wire type 2 and 5, int for 0."""
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise TFRecordError("truncated field")
            yield number, wire, data[pos : pos + length]
            pos += length
        elif wire == 5:
            yield number, wire, data[pos : pos + 4]
            pos += 4
        elif wire == 1:
            yield number, wire, data[pos : pos + 8]
            pos += 8
        else:
            raise TFRecordError(f"unsupported wire type {wire}")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _parse_feature(data: bytes) -> Feature:
    for number, _, value in _fields(data):
        assert isinstance(value, bytes)
        if number == 1:
            return ("bytes", [v for n, _, v in _fields(value) if n == 1])
        if number == 2:
            floats: list[float] = []
            for n, wire, v in _fields(value):
                if n != 1 or not isinstance(v, bytes):
                    continue
                floats += (
                    struct.unpack(f"<{len(v) // 4}f", v)
                    if wire == 2
                    else [struct.unpack("<f", v)[0]]
                )
            return ("float", floats)
        if number == 3:
            ints: list[int] = []
            for n, _wire, v in _fields(value):
                if n != 1:
                    continue
                if isinstance(v, int):
                    ints.append(_signed64(v))
                    continue
                pos = 0
                while pos < len(v):
                    x, pos = _read_varint(v, pos)
                    ints.append(_signed64(x))
            return ("int64", ints)
    return ("bytes", [])


def parse_example(data: bytes) -> dict[str, Feature]:
    """A serialized `tf.train.Example` as {name: (kind, values)}."""
    out: dict[str, Feature] = {}
    for number, _, features in _fields(data):
        if number != 1 or not isinstance(features, bytes):
            continue
        for n, _, entry in _fields(features):
            if n != 1 or not isinstance(entry, bytes):
                continue
            name = ""
            feature: Feature = ("bytes", [])
            for k, _, v in _fields(entry):
                if k == 1 and isinstance(v, bytes):
                    name = v.decode("utf-8")
                elif k == 2 and isinstance(v, bytes):
                    feature = _parse_feature(v)
            out[name] = feature
    return out
