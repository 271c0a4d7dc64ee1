"""SegmentRows' cache of parsed manifests: bounded by rows however many segments are read, room
made before a manifest is parsed, and each manifest parsed once while it is kept."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from i2d_segments.index import Index, SampleRow, SegmentRow
from i2d_segments.reader import SegmentRows
from i2d_segments.segment.manifest import SegmentManifest

ROWS = 100  # rows per segment


def _segment(n: int, rows: int = ROWS) -> SegmentRow:
    sid = f"p00000/{n * rows:020d}-e1"
    return SegmentRow(
        segment_id=sid,
        topic="APPEND",
        partition=0,
        first_offset=n * rows,
        last_offset=n * rows + rows - 1,
        epoch=1,
        uri=f"file:///out/segments/{sid}.tar",
        item_count=0,
        sample_count=rows,
        bytes=0,
        sha256="",
        created_at=1_700_000_000.0 + n,
    )


def _manifest(segment: SegmentRow) -> SegmentManifest:
    samples = [
        SampleRow(
            sample_id=f"{segment.segment_id}/{i}",
            url=f"http://127.0.0.1/{segment.first_offset + i}.jpg",
            caption=None,
            status="failed_to_download",
            error="HTTP Error 404: Not Found",
            item_id=None,
            segment_id=segment.segment_id,
            updated_at=segment.created_at,
        )
        for i in range(segment.sample_count)
    ]
    return SegmentManifest(
        segment_id=segment.segment_id,
        topic=segment.topic,
        partition=segment.partition,
        first_offset=segment.first_offset,
        last_offset=segment.last_offset,
        epoch=segment.epoch,
        created_at=segment.created_at,
        items=[],
        samples=samples,
    )


class _Index:
    """What SegmentRows asks the index for a segment's rows: every row still held."""

    def __init__(self, segments: list[SegmentRow]) -> None:
        self.by_id = {s.segment_id: s for s in segments}

    def segment(self, segment_id: str) -> SegmentRow | None:
        return self.by_id.get(segment_id)

    def held_samples(self, segment_id: str, sample_ids: Iterable[str]) -> set[str]:
        return set(sample_ids)

    def held_count(self, segment_id: str) -> int | None:
        return None  # no totals: every segment's rows are looked up

    def located_items(self, segment_id: str, item_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
        return {}


def _rows(segments: list[SegmentRow], cache_rows: int) -> tuple[SegmentRows, list[str], list[int]]:
    """SegmentRows over `segments`; the ids it loaded, and the rows it held at each load."""
    loaded: list[str] = []
    held_at_load: list[int] = []
    rows: SegmentRows

    def load(segment: SegmentRow) -> SegmentManifest:
        loaded.append(segment.segment_id)
        held_at_load.append(rows.cached_rows)
        return _manifest(segment)

    rows = SegmentRows(load, cast(Index, _Index(segments)), cache_rows=cache_rows)
    return rows, loaded, held_at_load


def test_the_cache_stays_within_its_rows_whatever_the_number_of_segments() -> None:
    segments = [_segment(n) for n in range(40)]
    rows, loaded, held_at_load = _rows(segments, cache_rows=250)
    for seg in segments:
        assert len(rows.samples_for_segment(seg.segment_id)) == ROWS
        assert rows.items_for_segment(seg.segment_id) == []  # the same parse
        # Two earlier manifests fit the budget (250 rows), besides the one used last.
        assert rows.cached_rows <= 250 + ROWS
    assert loaded == [s.segment_id for s in segments]  # each parsed once
    # Room was made before each parse: never more than the budget held while one is read.
    assert max(held_at_load) <= 250
    # The two used before the last are still parsed; an older one is read again.
    for seg in segments[-3:]:
        rows.samples_for_segment(seg.segment_id)
    assert len(loaded) == len(segments)
    rows.samples_for_segment(segments[0].segment_id)
    assert loaded[-1] == segments[0].segment_id


def test_no_budget_keeps_only_the_manifest_in_use() -> None:
    """What the materializer asks for: a segment's rows then its items parse it once, and
    nothing of a segment handled stays parsed once the next one is read."""
    segments = [_segment(n) for n in range(10)]
    rows, loaded, held_at_load = _rows(segments, cache_rows=0)
    for seg in segments:
        rows.samples_for_segment(seg.segment_id)
        rows.items_for_segment(seg.segment_id)
        assert rows.cached_rows == ROWS
    assert loaded == [s.segment_id for s in segments]
    assert held_at_load == [0] * len(segments)


def test_a_segment_larger_than_the_budget_is_still_kept_while_used() -> None:
    big = _segment(0, rows=1000)
    rows, loaded, _ = _rows([big], cache_rows=10)
    assert len(rows.samples_for_segment(big.segment_id)) == 1000
    rows.samples_for_segment(big.segment_id)
    assert loaded == [big.segment_id]


class _Counted(_Index):
    """An index with per-segment totals: `held` rows held now, the last ones given back by
    held_samples, which records that it was asked."""

    def __init__(self, segments: list[SegmentRow], held: int) -> None:
        super().__init__(segments)
        self.held = held
        self.lookups = 0

    def held_count(self, segment_id: str) -> int | None:
        return self.held

    def held_samples(self, segment_id: str, sample_ids: Iterable[str]) -> set[str]:
        self.lookups += 1
        return set(sorted(sample_ids)[-self.held :]) if self.held else set()


def test_a_segment_holding_as_many_rows_as_its_manifest_has_needs_no_lookup() -> None:
    segment = _segment(0)
    every = cast(Index, _Counted([segment], held=ROWS))
    rows = SegmentRows(_manifest, every).samples_for_segment(segment.segment_id)
    assert len(rows) == ROWS and cast(_Counted, every).lookups == 0
    # One row taken by a newer segment: the rows held are looked up.
    fewer = _Counted([segment], held=ROWS - 1)
    rows = SegmentRows(_manifest, cast(Index, fewer)).samples_for_segment(segment.segment_id)
    assert fewer.lookups == 1
    assert [r.sample_id for r in rows] == sorted(r.sample_id for r in _manifest(segment).samples)[
        1:
    ]
