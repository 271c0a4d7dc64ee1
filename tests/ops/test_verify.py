"""`img2dataset verify`: a clean dataset passes; a flipped byte in a segment and a wrong index
row are each reported, and the command exits non-zero."""

from __future__ import annotations

import pytest

from i2d_cli.main import main
from i2d_segments.index.keys import item_key
from i2d_segments.naming import object_name_of
from i2d_segments.ops.verify import sample_size, verify_dataset
from i2d_segments.reader import SegmentRows
from tests.ops.conftest import Backend
from tests.ops.helpers import build_dataset


def test_clean_dataset_verifies(backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    build_dataset(backend.store, backend.index)
    assert main(["verify", *backend.flags(), "--sample", "all"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "3/3" in captured.err and "segments/s" in captured.err  # progress, with its rate
    items = backend.index.totals().items
    assert "verified 3 segments" in printed and f"{items} items read back" in printed
    assert "MISMATCH" not in printed
    # The stored bytes are not the original ones (resized): checked against data_sha256.
    report = verify_dataset(backend.store, backend.index, sample=None)
    assert report.ok and report.items_read == items and report.items_unverifiable == 0


def test_corrupted_byte_is_found(backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    build_dataset(backend.store, backend.index)
    seg = backend.index.segments()[1]
    item = SegmentRows(backend.store, backend.index).items_for_segment(seg.segment_id)[0]
    name = object_name_of(seg.segment_id)
    blob = bytearray(backend.store.get(name))
    blob[item.data_offset + 3] ^= 0x01  # inside the image: the tar still parses
    backend.store.put(name, bytes(blob))

    assert main(["verify", *backend.flags(), "--sample", "all"]) == 1
    printed = capsys.readouterr().out
    assert f"MISMATCH {seg.segment_id}: sha256" in printed
    assert f"MISMATCH {seg.segment_id} {item.item_id}: ranged read hashes to" in printed
    assert "2 mismatches" in printed


def test_wrong_index_row_is_found(backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    build_dataset(backend.store, backend.index)
    seg = backend.index.segments()[0]
    item = SegmentRows(backend.store, backend.index).items_for_segment(seg.segment_id)[1]
    key = item_key(item.item_id)  # its row is at a slot of this bucket (keys.py)
    backend.execute(
        "UPDATE sample_index SET data_block = data_block + 1 "
        "WHERE item_key BETWEEN ? AND ? AND data_length IS NOT NULL",
        (key.bucket, key.last_slot),
    )
    # Found from the segment pass alone, without reading the item back.
    assert main(["verify", *backend.flags(), "--sample", "0"]) == 1
    printed = capsys.readouterr().out
    assert f"MISMATCH {seg.segment_id} {item.item_id}: index row says offset" in printed
    assert "0 items read back" in printed
    report = verify_dataset(backend.store, backend.index, sample=None)
    assert {(m.segment_id, m.item_id) for m in report.mismatches} == {
        (seg.segment_id, item.item_id)
    }
    assert any("ranged read" in m.problem for m in report.mismatches)


def test_sample_size() -> None:
    assert sample_size(None, 50) == 50
    assert sample_size(10, 50) == 10 and sample_size(100, 50) == 50
    assert sample_size(0.1, 50) == 5 and sample_size(0.001, 50) == 1 and sample_size(0.0, 50) == 0
    with pytest.raises(ValueError):
        sample_size(1.5, 50)
