"""TFRecord written without TensorFlow: the CRC-32C, the record framing and the hand-encoded
`tf.train.Example` give the bytes TensorFlow's own writer and protobuf give (the expected hex
below was produced by TensorFlow 2.21's TFRecordWriter and Example.SerializeToString), and
the reader gets everything back and refuses a damaged record."""

from __future__ import annotations

import io
import os

import pytest

from i2d_materializer import tfrecord
from i2d_materializer.tfrecord import (
    Feature,
    TFRecordError,
    crc32c_python,
    encode_example,
    feature_of,
    frame,
    parse_example,
    read_records,
)

# tf.train.Example(features=Features(feature={name: <feature>})).SerializeToString().hex()
TENSORFLOW_EXAMPLES: dict[str, tuple[Feature, str]] = {
    "int64": (
        ("int64", [1, -2, 300]),
        "0a1c0a1a0a05696e74363412111a0f0a0d01feffffffffffffffff01ac02",
    ),
    "float": (("float", [0.5, -1.25]), "0a170a150a05666c6f6174120c120a0a080000003f0000a0bf"),
    "bytes": (
        ("bytes", [b"jpg\x00data", b""]),
        "0a190a170a056279746573120e0a0c0a086a706700646174610a00",
    ),
    "empty": (("bytes", []), "0a0d0a0b0a05656d70747912020a00"),
}
# tf.io.TFRecordWriter writing b"hello" then b"".
TENSORFLOW_FILE = "0500000000000000eab2043e68656c6c6fbb1f1c19000000000000000029039807d8ea82a2"


def test_crc32c_matches_the_standard_vectors() -> None:
    # RFC 3720 (iSCSI) B.4 and the usual check value
    vectors = {
        b"": 0,
        b"123456789": 0xE3069283,
        bytes(32): 0x8A9136AA,
        b"\xff" * 32: 0x62A8AB43,
        bytes(range(32)): 0x46DD794E,
    }
    for data, crc in vectors.items():
        assert crc32c_python(data) == crc
        assert tfrecord.crc32c(data) == crc  # the C implementation, when installed
    blob = os.urandom(100_000)
    assert tfrecord.crc32c(blob) == crc32c_python(blob)


def test_records_are_framed_as_tensorflow_frames_them() -> None:
    written = frame(b"hello") + frame(b"")
    assert written.hex() == TENSORFLOW_FILE
    assert list(read_records(io.BytesIO(written))) == [b"hello", b""]


@pytest.mark.parametrize("name", sorted(TENSORFLOW_EXAMPLES))
def test_examples_are_encoded_as_protobuf_encodes_them(name: str) -> None:
    feature, expected = TENSORFLOW_EXAMPLES[name]
    encoded = encode_example({name: feature})
    assert encoded.hex() == expected
    assert parse_example(encoded) == {name: feature}


def test_a_full_example_round_trips() -> None:
    features: dict[str, Feature] = {
        "key": ("bytes", [b"000010005"]),
        "jpg": ("bytes", [bytes(range(256)) * 40]),
        "txt": ("bytes", ["légende".encode()]),
        "width": ("int64", [256]),
        "big": ("int64", [2**62, -(2**63)]),
        "score": ("float", [0.25]),
        "none": ("bytes", [b""]),
    }
    records = [encode_example(features), encode_example({"k": ("int64", [])})]
    stream = io.BytesIO(b"".join(frame(r) for r in records))
    back = [parse_example(r) for r in read_records(stream)]
    assert back == [features, {"k": ("int64", [])}]


def test_img2dataset_s_value_mapping() -> None:
    assert feature_of(3) == ("int64", [3])
    assert feature_of(True) == ("int64", [1])
    assert feature_of(1.5) == ("float", [1.5])
    assert feature_of(None) == ("bytes", [b""])
    assert feature_of("é") == ("bytes", ["é".encode()])
    assert feature_of([1, 2]) == ("int64", [1, 2])
    assert feature_of([0.1, 0.2]) == ("float", [0.1, 0.2])
    assert feature_of(["a", None]) == ("bytes", [b"a", b""])
    assert feature_of([]) == ("bytes", [])
    assert feature_of({"a": 1}) == ("bytes", [b'{"a": 1}'])


def test_damaged_records_are_refused() -> None:
    good = frame(b"some image bytes")
    flipped = bytearray(good)
    flipped[15] ^= 1  # a data byte
    with pytest.raises(TFRecordError, match="data fails its crc32c"):
        list(read_records(io.BytesIO(bytes(flipped))))
    flipped = bytearray(good)
    flipped[0] ^= 1  # the length
    with pytest.raises(TFRecordError, match="length fails"):
        list(read_records(io.BytesIO(bytes(flipped))))
    with pytest.raises(TFRecordError, match="truncated"):
        list(read_records(io.BytesIO(good[:-2])))
