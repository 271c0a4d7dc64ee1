"""Comparing two indexes row by row: what reindex and the chaos checker assert."""

from __future__ import annotations

from i2d_segments.index import Index
from i2d_segments.reader import SegmentRows
from i2d_segments.store import SegmentStore


def index_differences(
    expected: Index, actual: Index, store: SegmentStore, *, exact_epochs: bool = False
) -> list[str]:
    """How `actual` (say a rebuilt index) differs from `expected`, one line per difference;
    empty when they hold the same segments, items, samples and partition positions.

    A partition's epoch in `actual` may be lower than in `expected` (an owner that took the
    partition and wrote nothing leaves no trace in the store) unless `exact_epochs`.
    """
    out: list[str] = []
    # Full rows: each index's refs joined with the (same) segments' manifests.
    rows_a, rows_b = SegmentRows(store, expected), SegmentRows(store, actual)
    want = {s.segment_id: s for s in expected.segments()}
    got = {s.segment_id: s for s in actual.segments()}
    for sid in sorted(want.keys() - got.keys()):
        out.append(f"segment {sid} missing")
    for sid in sorted(got.keys() - want.keys()):
        out.append(f"segment {sid} not in the expected index")
    for sid in sorted(want.keys() & got.keys()):
        if want[sid] != got[sid]:
            out.append(f"segment {sid}: expected {want[sid]}, got {got[sid]}")
        for kind, a, b in (
            ("item", rows_a.items_for_segment(sid), rows_b.items_for_segment(sid)),
            ("sample", rows_a.samples_for_segment(sid), rows_b.samples_for_segment(sid)),
        ):
            if a != b:
                ids_a = {getattr(r, f"{kind}_id"): r for r in a}
                ids_b = {getattr(r, f"{kind}_id"): r for r in b}
                for rid in sorted(ids_a.keys() | ids_b.keys()):
                    ra, rb = ids_a.get(rid), ids_b.get(rid)
                    if ra != rb:
                        out.append(f"{kind} {rid} of {sid}: expected {ra}, got {rb}")
    parts_a = {(p.topic, p.partition): p for p in expected.partitions()}
    parts_b = {(p.topic, p.partition): p for p in actual.partitions()}
    for key in sorted(parts_a.keys() | parts_b.keys()):
        pa, pb = parts_a.get(key), parts_b.get(key)
        next_a = pa.next_offset if pa else 0
        next_b = pb.next_offset if pb else 0
        epoch_a = pa.epoch if pa else 0
        epoch_b = pb.epoch if pb else 0
        if next_a != next_b:
            out.append(f"partition {key}: next_offset expected {next_a}, got {next_b}")
        if epoch_b > epoch_a or (exact_epochs and epoch_a != epoch_b):
            out.append(f"partition {key}: epoch expected {epoch_a}, got {epoch_b}")
    return out
