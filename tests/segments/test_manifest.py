"""The segment manifest read back: every row as written, whatever characters its text holds,
with the strings rows repeat held once."""

from __future__ import annotations

from dataclasses import replace

import pytest

from i2d_segments.index import ItemRow, SampleRow
from i2d_segments.segment.format import SegmentFormatError
from i2d_segments.segment.manifest import (
    SegmentManifest,
    decode_manifest,
    decode_sample_tail,
    encode_manifest,
)

SID = "p00000/00000000000000000000-e1"
# Line and paragraph separators JSON leaves unescaped (str.splitlines splits on them).
SEPARATORS = "\u2028 \u2029 \x85 \x1c \x1d \x1e \x0b \x0c \r"


def _sample(n: int, **changes: object) -> SampleRow:
    row = SampleRow(
        sample_id=f"s{n}",
        url=f"http://127.0.0.1/{n}.jpg",
        caption=None,
        status="failed_to_download",
        error="HTTP Error 404: Not Found",
        item_id=None,
        segment_id=SID,
        attrs={"key": f"{n:09d}", "width": None, "exif": None},
        updated_at=1_700_000_000.5 + n,
    )
    return replace(row, **changes)  # type: ignore[arg-type]


def _manifest(samples: list[SampleRow], items: list[ItemRow] | None = None) -> SegmentManifest:
    return SegmentManifest(
        segment_id=SID,
        topic="APPEND",
        partition=0,
        first_offset=0,
        last_offset=len(samples) - 1,
        epoch=1,
        created_at=1_700_000_000.0,
        items=items or [],
        samples=samples,
    )


def test_rows_round_trip_whatever_separators_their_text_holds() -> None:
    item = ItemRow(
        item_id="ab" * 32,
        segment_id=SID,
        data_offset=1536,
        data_length=100,
        ext="jpg",
        mime="image/jpeg",
        width=64,
        height=48,
        original_width=640,
        original_height=480,
        data_sha256="cd" * 32,
    )
    samples = [
        _sample(0),
        _sample(
            1,
            url=f"http://127.0.0.1/a{SEPARATORS}b.jpg",
            caption=f"two{SEPARATORS}lines\n",
            status="success",
            error=None,
            item_id=item.item_id,
            attrs={"key": "000000001", "license": f"cc{SEPARATORS}", "width": 64},
        ),
        _sample(2),
    ]
    manifest = _manifest(samples, [item])
    assert decode_manifest(encode_manifest(manifest)) == manifest
    tail = decode_sample_tail(encode_manifest(manifest), SID, partial=False)
    assert tail == samples


def test_repeated_strings_are_held_once() -> None:
    decoded = decode_manifest(encode_manifest(_manifest([_sample(n) for n in range(3)]))).samples
    a, b, c = decoded
    assert a.error is b.error is c.error
    assert a.status is b.status is c.status
    for key_a, key_b in zip(a.attrs, b.attrs, strict=True):
        assert key_a is key_b


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "does not start with its segment line"),
        (b"not json\n", "is not JSON lines"),
        (b'{"kind":"sample"}\n', "does not start with its segment line"),
    ],
)
def test_what_is_not_a_manifest_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(SegmentFormatError, match=reason):
        decode_manifest(data)


def test_a_broken_or_missing_row_is_refused() -> None:
    good = encode_manifest(_manifest([_sample(0), _sample(1)]))
    head, first, _second = good.splitlines(keepends=True)
    with pytest.raises(SegmentFormatError, match="is not JSON lines"):
        decode_manifest(head + first + b'{"kind":"sample",\n')
    with pytest.raises(SegmentFormatError, match="row counts differ"):
        decode_manifest(head + first)
    with pytest.raises(SegmentFormatError, match="incomplete"):
        decode_manifest(head + first + b'{"kind":"sample","sample_id":"s1"}\n')
