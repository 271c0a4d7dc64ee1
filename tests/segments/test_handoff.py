"""A manifest the appender hands to the materializer of its process is the one parsing the
committed segment gives back, row for row (i2d_segments.segment.handoff)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from i2d_appender.service import AppenderService
from i2d_segments.index import SegmentRow
from i2d_segments.naming import object_name_of
from i2d_segments.reader.segment_rows import store_manifests
from i2d_segments.records import AppendMeta, AppendRecord, SampleStatus
from i2d_segments.segment import handoff
from i2d_segments.segment.manifest import SegmentManifest, decode_manifest
from tests.append_records import failure, success
from tests.services.test_appender import Harness, run_until


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    handoff.clear()
    harness = Harness(tmp_path)
    yield harness
    harness.index.close()
    handoff.clear()


def _committed_manifest(h: Harness, segment: SegmentRow) -> SegmentManifest:
    """The manifest parsed from the committed object in the store."""
    name = object_name_of(segment.segment_id)
    offset, length = segment.manifest_offset, segment.manifest_length
    assert offset is not None and length is not None
    return decode_manifest(h.store.read_range(name, offset, length))


def _unusual(n: int) -> AppendRecord:
    """A success whose columns JSON must escape or nest, with exif and an extra hash."""
    base = success(n).meta
    meta = base.model_copy(
        update={
            "caption": 'line\u2028sep \u00e9t\u00e9 "quoted" \\ tab\t',
            "exif": '{"Image Make": "Canon"}',
            "hashes": {**base.hashes, "md5": "0" * 32},
            "extra": {"nested": {"a": [1, 2.5, None, True]}, "empty": "", "big": 2**60},
        }
    )
    return AppendRecord(meta=meta, payload=success(n).payload)


def test_the_handed_manifest_is_the_committed_one_parsed(h: Harness) -> None:
    records = [
        success(0),
        failure(1),
        _unusual(2),
        success(3, content=b"original-0"),  # the same image as row 0: stored once
        AppendRecord(
            meta=AppendMeta(
                sample_id="f1",  # row 1 again, now a success: the last one wins
                url="http://127.0.0.1/missing/1",
                status=SampleStatus.SUCCESS,
                item_id=success(4).meta.item_id,
                ext="jpg",
                mime="image/jpeg",
                width=8,
                height=8,
                hashes={"sha256": success(4).meta.item_id or ""},
            ),
            payload=b"\xff\xd8 again",
        ),
        *(failure(n) for n in range(5, 10)),
    ]
    h.send(records)
    app = AppenderService(h.bus, h.store, h.index, h.settings(), hand_off_manifests=True)
    run_until(app, lambda: len(h.index.segments()) == 2)
    for segment in h.index.segments():
        handed = handoff.take(segment)
        assert handed is not None
        assert handed == _committed_manifest(h, segment)
        assert handoff.take(segment) is None  # once: a second reader parses the store's copy


def test_only_the_committed_object_is_handed_over(h: Harness) -> None:
    h.send([failure(n) for n in range(5)])
    app = AppenderService(h.bus, h.store, h.index, h.settings(), hand_off_manifests=True)
    run_until(app, lambda: len(h.index.segments()) == 1)
    segment = h.index.segments()[0]
    parsed = _committed_manifest(h, segment)
    # Another object under the same name (e.g. written again by a new owner): not handed.
    assert handoff.take(dataclasses.replace(segment, sha256="0" * 64)) is None
    reads: list[str] = []
    read_range = h.store.read_range

    def counted(name: str, offset: int, length: int) -> bytes:
        reads.append(name)
        return read_range(name, offset, length)

    h.store.read_range = counted  # type: ignore[method-assign]
    load = store_manifests(h.store)
    assert load(segment) == parsed and reads == []  # handed over: the store is not read
    assert load(segment) == parsed and len(reads) == 1  # then read from the store


def test_an_appender_with_no_materializer_beside_it_holds_none(h: Harness) -> None:
    """`serve appender`: the materializer is another process; nothing would take them."""
    h.send([failure(n) for n in range(5)])
    run_until(h.appender(), lambda: len(h.index.segments()) == 1)
    assert handoff.take(h.index.segments()[0]) is None
