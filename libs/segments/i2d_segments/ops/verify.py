"""Check a dataset's segments against its index (`img2dataset verify`).

Two checks, both over committed segments only (an uncommitted object is not part of the
dataset; `gc` deals with those):

- every segment object is read whole: it must exist, parse as a complete tar, and hash to the
  sha256 and size its index row records; while it streams, every item row of that segment is
  matched against the tar's members (`<item_id>.<ext>` at exactly the recorded data offset and
  length), so a wrong row is found without reading it;
- a random sample of items is read back the way users read them, one ranged read each, and
  the bytes are hashed. They are compared with the row's `data_sha256`, the hash of the
  stored bytes: `item_id` hashes the ORIGINAL download, which differs from the stored bytes
  whenever the image was resized or re-encoded, and equals `data_sha256` when it was not (so
  then the read is checked against the item_id itself). A row without `data_sha256` (written
  before the column existed) is compared with its item_id; a mismatch there cannot tell
  re-encoding from damage, so it is counted as unverifiable rather than reported.
"""

from __future__ import annotations

import bisect
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from i2d_segments.ids import sha256_hex
from i2d_segments.index import Index, ItemRow, SegmentRow
from i2d_segments.naming import object_name_of
from i2d_segments.reader.segment_rows import SegmentRows
from i2d_segments.segment.format import SegmentFormatError
from i2d_segments.segment.scan import scan_segment
from i2d_segments.store import SegmentStore, StoreError

log = logging.getLogger(__name__)

DEFAULT_SAMPLE = 1000


@dataclass(frozen=True, slots=True)
class Mismatch:
    segment_id: str
    item_id: str | None  # None: about the segment object itself
    problem: str

    def __str__(self) -> str:
        where = self.segment_id if self.item_id is None else f"{self.segment_id} {self.item_id}"
        return f"{where}: {self.problem}"


@dataclass(slots=True)
class VerifyReport:
    segments: int = 0  # committed segments checked
    bytes: int = 0  # bytes read and hashed
    items_located: int = 0  # item rows matched against their segment's members
    items_read: int = 0  # items read back with a ranged read
    items_unverifiable: int = 0  # no data_sha256 and the bytes differ from the item_id
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def sample_size(sample: int | float | None, total: int) -> int:
    """How many of `total` items to read: None = all, a float in (0, 1] = that fraction
    (at least one when there are any), an int = that many."""
    if sample is None:
        return total
    if isinstance(sample, float):
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"a sample fraction must be within [0, 1], got {sample}")
        return min(total, max(1 if total and sample > 0 else 0, round(total * sample)))
    if sample < 0:
        raise ValueError(f"a sample size must not be negative, got {sample}")
    return min(total, sample)


def _picks(segments: list[SegmentRow], n: int, rng: random.Random) -> dict[str, list[int]]:
    """`n` item positions drawn without replacement over all segments' items, per segment."""
    starts: list[int] = []
    total = 0
    for seg in segments:
        starts.append(total)
        total += seg.item_count
    out: dict[str, list[int]] = {}
    for position in sorted(rng.sample(range(total), n)):
        i = bisect.bisect_right(starts, position) - 1
        out.setdefault(segments[i].segment_id, []).append(position - starts[i])
    return out


def verify_dataset(
    store: SegmentStore,
    index: Index,
    *,
    sample: int | float | None = DEFAULT_SAMPLE,
    seed: int | None = None,
    on_segment: Callable[[SegmentRow, list[Mismatch]], None] | None = None,
) -> VerifyReport:
    """Check every committed segment and a sample of items (see the module docstring).

    Mismatches are collected, not raised; index errors propagate (nothing can be checked
    against an index that does not answer)."""
    report = VerifyReport()
    rows = SegmentRows(store, index)
    segments = index.segments()
    n = sample_size(sample, sum(s.item_count for s in segments))
    picks = _picks(segments, n, random.Random(seed))
    for seg in segments:
        found: list[Mismatch] = []
        try:
            items = rows.items_for_segment(seg.segment_id)
        except (SegmentFormatError, StoreError, OSError) as e:
            # Its object is checked below all the same, and says what is wrong with it.
            log.warning("verify: cannot read the manifest of %s: %s", seg.segment_id, e)
            items = []
        _check_object(store, seg, items, report, found)
        chosen = [items[i] for i in picks.get(seg.segment_id, []) if i < len(items)]
        for item in chosen:
            _check_read(store, seg, item, report, found)
        report.segments += 1
        report.mismatches.extend(found)
        for m in found:
            log.error("verify: %s", m)
        if on_segment is not None:
            on_segment(seg, found)
    return report


def _check_object(
    store: SegmentStore,
    seg: SegmentRow,
    items: list[ItemRow],
    report: VerifyReport,
    found: list[Mismatch],
) -> None:
    sid = seg.segment_id
    name = object_name_of(sid)
    try:
        with store.open_stream(name) as stream:
            scan = scan_segment(stream)
    except FileNotFoundError:
        found.append(Mismatch(sid, None, f"object {name} is missing"))
        return
    except (StoreError, OSError) as e:
        found.append(Mismatch(sid, None, f"cannot read {name}: {e}"))
        return
    report.bytes += scan.size
    if scan.sha256 != seg.sha256.lower():
        found.append(Mismatch(sid, None, f"sha256 {scan.sha256}, the index has {seg.sha256}"))
    if scan.size != seg.bytes:
        found.append(Mismatch(sid, None, f"{scan.size} bytes, the index has {seg.bytes}"))
    if scan.error is not None:
        found.append(Mismatch(sid, None, f"not a complete tar: {scan.error}"))
    if len(items) != seg.item_count:
        found.append(
            Mismatch(sid, None, f"{len(items)} item rows, the segment row says {seg.item_count}")
        )
    for item in items:
        member = f"{item.item_id}.{item.ext}"
        loc = scan.locations.get(member)
        report.items_located += 1
        if loc is None:
            if scan.error is None:
                found.append(Mismatch(sid, item.item_id, f"the segment has no member {member}"))
            continue
        if (loc.data_offset, loc.data_length) != (item.data_offset, item.data_length):
            found.append(
                Mismatch(
                    sid,
                    item.item_id,
                    f"index row says offset {item.data_offset} length {item.data_length}, "
                    f"{member} is at offset {loc.data_offset} length {loc.data_length}",
                )
            )


def _check_read(
    store: SegmentStore, seg: SegmentRow, item: ItemRow, report: VerifyReport, found: list[Mismatch]
) -> None:
    name = object_name_of(seg.segment_id)
    try:
        data = store.read_range(name, item.data_offset, item.data_length)
    except (FileNotFoundError, StoreError, OSError, ValueError) as e:
        found.append(Mismatch(seg.segment_id, item.item_id, f"ranged read failed: {e}"))
        return
    report.items_read += 1
    digest = sha256_hex(data)
    if item.data_sha256 is not None:
        if digest != item.data_sha256:
            what = "its item_id" if item.data_sha256 == item.item_id else "its data_sha256"
            found.append(
                Mismatch(
                    seg.segment_id,
                    item.item_id,
                    f"ranged read hashes to {digest}, not {what} {item.data_sha256}",
                )
            )
    elif digest != item.item_id:
        report.items_unverifiable += 1
