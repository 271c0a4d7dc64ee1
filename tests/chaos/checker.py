"""The chaos suite's checker: the invariants, read from the index and the store after each round.

The index says, per partition, that every offset below `next_offset` is committed. So at any
moment, crash or not, the acknowledged records below it must each have exactly one sample row,
and those at or past it none yet; once an appender has drained the topic, that is all of them.

Checked each round (the names are what the summary counts):

    next_offset_monotonic   no partition's next_offset ever went back
    acked_exactly_once      each acknowledged record below next_offset has its one sample row,
                            with its status and item, in the segment whose offsets carry it;
                            none past next_offset has one yet; and (after a drain) none is missing
    rows_not_lost_or_duped  per partition the committed segments tile the offsets without overlap;
                            sample rows = sum of the segments' sample counts = the rows of their
                            manifests, each sample in one manifest, each item written once
    items_read_back         each indexed item's ranged read (data_offset, data_length) hashes to
                            its item_id and data_sha256; each segment object hashes to its sha256
    readers_see_committed   every segment readers can reach (the index, the reader API) has its
                            committed row; every other object in the store is garbage gc lists
    manifests_reproduce     the rows in the committed segments' `__segment__` manifests are the
                            index's rows
    reindex_reproduces      (after a drain, appenders stopped) `rebuild_index` from the store
                            alone equals the index, and leaves out exactly the garbage
    segments_announced      (after a drain) every committed segment is on SEGMENT_CLOSED, and
                            nothing else is but a segment the index lost after its announcement
                            (a crash that loses acknowledged commits), whose offsets a later
                            epoch's segments hold
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from i2d_segments.index import Index, ItemRow, SampleRow, SegmentRow
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.naming import SEGMENTS_PREFIX, object_name_of
from i2d_segments.ops.gc import find_abandoned_uploads, find_garbage
from i2d_segments.ops.reindex import rebuild_index
from i2d_segments.reader import DatasetReader, SegmentRows
from i2d_segments.records import SegmentClosed
from i2d_segments.segment.manifest import MANIFEST_NAME, SegmentManifest, decode_manifest
from i2d_segments.segment.stream import iter_members
from i2d_segments.store import SegmentStore
from tests.chaos.workload import Ledger
from tests.index_diff import index_differences

INVARIANTS = (
    "next_offset_monotonic",
    "acked_exactly_once",
    "rows_not_lost_or_duped",
    "items_read_back",
    "readers_see_committed",
    "manifests_reproduce",
    "reindex_reproduces",
    "segments_announced",
)


class InvariantError(AssertionError):
    pass


def _require(ok: bool, invariant: str, detail: str) -> None:
    if not ok:
        raise InvariantError(f"[{invariant}] {detail}")


@dataclass
class Snapshot:
    """What one check saw, for the summary and the next round's comparison."""

    next_offsets: dict[int, int]
    segments: int
    samples: int
    items: int
    garbage: list[str]
    abandoned_uploads: list[str]


@dataclass
class Checker:
    index: Index
    store: SegmentStore
    ledger: Ledger
    topic: str
    partitions: int
    scratch: Path  # where rebuilt indexes are written (and removed)
    # Every SEGMENT_CLOSED event so far, by segment id (None: not checked).
    announcements: Callable[[], dict[str, SegmentClosed]] | None = None
    held: Counter[str] = field(default_factory=Counter)
    checks: int = 0
    reindexes: int = 0
    _last_next: dict[int, int] = field(default_factory=dict)
    _manifests: dict[str, SegmentManifest] = field(default_factory=dict)  # cache, by segment
    _verified_segments: dict[str, SegmentRow] = field(default_factory=dict)
    _verified_items: dict[str, ItemRow] = field(default_factory=dict)

    @property
    def rows(self) -> SegmentRows:
        """Full rows: the index's refs joined with the manifests (read again at each use)."""
        return SegmentRows(self.store, self.index)

    def check(self, drained: bool = False) -> Snapshot:
        """Every invariant, now. `drained`: an appender committed past every acknowledged
        offset (so every acknowledged record must be in the index) and the appenders are
        stopped (so `img2dataset reindex` may run: its rebuild must equal the index)."""
        self.checks += 1
        next_offsets = self._next_offsets()
        segments = self.index.segments()
        committed = {s.segment_id: s for s in segments}
        samples = self._all_samples(segments)
        items = self._all_items(segments)

        self._monotonic(next_offsets)
        self._acked_exactly_once(next_offsets, committed, samples, items, drained)
        manifests = self._rows_not_lost_or_duped(segments, next_offsets, samples)
        self._items_read_back(segments, items)
        garbage, uploads = self._readers_see_committed(committed, items, samples)
        self._manifests_reproduce(manifests, committed, items, samples)
        if drained:
            self._reindex_reproduces(garbage)
            if self.announcements is not None:
                self._announced(committed)
        return Snapshot(next_offsets, len(segments), len(samples), len(items), garbage, uploads)

    # ------------------------------------------------------------------ reads

    def _next_offsets(self) -> dict[int, int]:
        out = {}
        for p in range(self.partitions):
            row = self.index.partition(self.topic, p)
            out[p] = row.next_offset if row is not None else 0
        return out

    def _all_samples(self, segments: list[SegmentRow]) -> dict[str, SampleRow]:
        out: dict[str, SampleRow] = {}
        for seg in segments:
            for s in self.rows.samples_for_segment(seg.segment_id):
                _require(s.sample_id not in out, "rows_not_lost_or_duped", f"{s.sample_id} twice")
                out[s.sample_id] = s
        return out

    def _all_items(self, segments: list[SegmentRow]) -> dict[str, ItemRow]:
        out: dict[str, ItemRow] = {}
        for seg in segments:
            for i in self.rows.items_for_segment(seg.segment_id):
                _require(i.item_id not in out, "rows_not_lost_or_duped", f"{i.item_id} twice")
                out[i.item_id] = i
        return out

    def _manifest(self, seg: SegmentRow) -> SegmentManifest:
        cached = self._manifests.get(seg.segment_id)
        if cached is None:
            blob = self.store.get(object_name_of(seg.segment_id))
            members = [m for m in iter_members(io.BytesIO(blob)) if m.name == MANIFEST_NAME]
            _require(len(members) == 1, "reindex_reproduces", f"{seg.segment_id}: no manifest")
            cached = decode_manifest(members[0].data)
            self._manifests[seg.segment_id] = cached
        return cached

    # ------------------------------------------------------------------ invariants

    def _monotonic(self, next_offsets: dict[int, int]) -> None:
        for p, off in next_offsets.items():
            before = self._last_next.get(p, 0)
            _require(off >= before, "next_offset_monotonic", f"p{p}: {before} -> {off}")
        self._last_next = dict(next_offsets)
        self.held["next_offset_monotonic"] += 1

    def _acked_exactly_once(
        self,
        next_offsets: dict[int, int],
        committed: dict[str, SegmentRow],
        samples: dict[str, SampleRow],
        items: dict[str, ItemRow],
        drained: bool,
    ) -> None:
        inv = "acked_exactly_once"
        acked = self.ledger.acked_list()
        seen: set[str] = set()
        for a in acked:
            if a.sent.sample_id in seen:
                continue  # the same record acknowledged at two offsets: one sample row
            row = samples.get(a.sent.sample_id)
            below = a.offset < next_offsets.get(a.partition, 0)
            if drained:
                _require(below, inv, f"drained, yet p{a.partition}@{a.offset} >= next_offset")
            if not below:
                _require(row is None, inv, f"{a.sent.sample_id} indexed past next_offset")
                continue
            seen.add(a.sent.sample_id)
            _require(row is not None, inv, f"{a.sent.sample_id} (p{a.partition}@{a.offset}) lost")
            assert row is not None
            _require(row.status == a.sent.status, inv, f"{row.sample_id}: status {row.status}")
            _require(row.item_id == a.sent.item_id, inv, f"{row.sample_id}: item {row.item_id}")
            seg = committed.get(row.segment_id)
            _require(seg is not None, inv, f"{row.sample_id}: segment {row.segment_id} unknown")
            assert seg is not None
            _require(
                seg.partition == a.partition and seg.first_offset <= a.offset <= seg.last_offset,
                inv,
                f"{row.sample_id} at p{a.partition}@{a.offset} recorded in {seg.segment_id}",
            )
            if a.sent.item_id is not None:
                _require(a.sent.item_id in items, inv, f"{row.sample_id}: its item is not stored")
        known = {s.sample_id for s in self.ledger.sent.values()}
        strangers = set(samples) - known
        _require(not strangers, inv, f"sample rows nobody produced: {sorted(strangers)[:3]}")
        self.held[inv] += 1

    def _rows_not_lost_or_duped(
        self,
        segments: list[SegmentRow],
        next_offsets: dict[int, int],
        samples: dict[str, SampleRow],
    ) -> dict[str, SegmentManifest]:
        inv = "rows_not_lost_or_duped"
        by_partition: dict[int, list[SegmentRow]] = {}
        for seg in segments:
            _require(seg.topic == self.topic, inv, f"{seg.segment_id}: topic {seg.topic}")
            by_partition.setdefault(seg.partition, []).append(seg)
        for p, segs in by_partition.items():
            segs.sort(key=lambda s: s.first_offset)
            end = 0
            for seg in segs:
                _require(seg.first_offset >= end, inv, f"{seg.segment_id} overlaps offset {end}")
                end = seg.last_offset + 1
            _require(end <= next_offsets.get(p, 0), inv, f"p{p}: segments pass next_offset")
        _require(
            sum(s.sample_count for s in segments) == len(samples),
            inv,
            f"{len(samples)} sample rows, segments count {sum(s.sample_count for s in segments)}",
        )
        manifests: dict[str, SegmentManifest] = {}
        in_manifests: Counter[str] = Counter()
        items_written: Counter[str] = Counter()
        for seg in segments:
            manifest = self._manifest(seg)
            manifests[seg.segment_id] = manifest
            in_manifests.update(s.sample_id for s in manifest.samples)
            items_written.update(i.item_id for i in manifest.items)
            _require(
                len(manifest.samples) == seg.sample_count and len(manifest.items) == seg.item_count,
                inv,
                f"{seg.segment_id}: manifest counts differ from its row",
            )
        twice = [k for k, n in in_manifests.items() if n > 1]
        _require(not twice, inv, f"samples in two committed segments: {twice[:3]}")
        _require(set(in_manifests) == set(samples), inv, "manifests and sample rows differ")
        stored_twice = [k for k, n in items_written.items() if n > 1]
        _require(not stored_twice, inv, f"items written twice: {stored_twice[:3]}")
        self.held[inv] += 1
        return manifests

    def _items_read_back(self, segments: list[SegmentRow], items: dict[str, ItemRow]) -> None:
        """Segments and items are immutable once committed: each is read back once, and its
        index row is compared with the row that was verified on every later check."""
        inv = "items_read_back"
        for seg in segments:
            if self._verified_segments.get(seg.segment_id) == seg:
                continue
            _require(seg.segment_id not in self._verified_segments, inv, f"{seg} changed")
            blob = self.store.get(object_name_of(seg.segment_id))
            digest = hashlib.sha256(blob).hexdigest()
            _require(
                digest == seg.sha256 and len(blob) == seg.bytes, inv, f"{seg.segment_id}: sha256"
            )
            self._verified_segments[seg.segment_id] = seg
        reader = DatasetReader(self.store, self.index)
        for item in items.values():
            if self._verified_items.get(item.item_id) == item:
                continue
            _require(item.item_id not in self._verified_items, inv, f"{item} changed")
            data = self.store.read_range(
                object_name_of(item.segment_id), item.data_offset, item.data_length
            )
            digest = hashlib.sha256(data).hexdigest()
            _require(digest == item.item_id, inv, f"{item.item_id}: ranged read hashes to {digest}")
            _require(item.data_sha256 == digest, inv, f"{item.item_id}: data_sha256 differs")
            _require(data == self.ledger.payloads[item.item_id], inv, f"{item.item_id}: bytes")
            got = reader.get(item.item_id)  # the reader API's random access, verified
            _require(got is not None and got.image == data, inv, f"reader.get({item.item_id})")
            self._verified_items[item.item_id] = item
        self.held[inv] += 1

    def _readers_see_committed(
        self,
        committed: dict[str, SegmentRow],
        items: dict[str, ItemRow],
        samples: dict[str, SampleRow],
    ) -> tuple[list[str], list[str]]:
        inv = "readers_see_committed"
        # The reader lists the committed segments that hold an image (one of failures only is
        # no shard a reader can load), and every item is in a listed one.
        listed = set(DatasetReader(self.store, self.index).segment_ids())
        with_images = sorted(sid for sid, seg in committed.items() if seg.item_count > 0)
        _require(sorted(listed) == with_images, inv, "the reader lists other segments")
        for item in items.values():
            _require(item.segment_id in committed, inv, f"{item.item_id} in an uncommitted segment")
            _require(item.segment_id in listed, inv, f"{item.item_id} in no listed segment")
            found = self.rows.item(item.item_id)
            _require(found == item, inv, f"rows.item({item.item_id}) differs")
        for s in samples.values():
            if s.item_id is not None:
                _require(s.item_id in items, inv, f"{s.sample_id} points at a missing item")
        # Everything in the store that is not a committed segment is garbage gc finds.
        garbage = {g.name for g in find_garbage(self.store, self.index, grace_seconds=-60)}
        uploads = [u.name for u in find_abandoned_uploads(self.store, grace_seconds=-60)]
        for info in self.store.list(SEGMENTS_PREFIX):
            seg_id = info.name[len(SEGMENTS_PREFIX) : -len(".tar")]
            if info.name.endswith(".tar") and seg_id in committed:
                _require(info.name not in garbage, inv, f"gc would delete {info.name}")
            else:
                _require(info.name in garbage, inv, f"{info.name}: neither committed nor garbage")
        # Open uploads are invisible to readers and gc aborts them all (the end of the run
        # checks that verify still passes after `gc --delete`). One may carry a committed
        # segment's name: when the reply to CreateMultipartUpload is lost, botocore asks
        # again and the first upload id is left open; aborting it never touches the object.
        self.held[inv] += 1
        return sorted(garbage), uploads

    def _announced(self, committed: dict[str, SegmentRow]) -> None:
        """SEGMENT_CLOSED is at least once: whoever takes a partition re-announces what its
        dead predecessor committed and may not have announced. Only committed segments are
        announced, with their row's values."""
        inv = "segments_announced"
        assert self.announcements is not None
        events = self.announcements()
        missing = sorted(set(committed) - set(events))
        _require(not missing, inv, f"committed, never announced: {missing[:5]}")
        for sid, ev in events.items():
            seg = committed.get(sid)
            if seg is None:
                # An index that lost acknowledged commits (PostgreSQL crashed with
                # synchronous_commit off) can lose a segment already announced. Its appender
                # then re-read those offsets into segments of a later epoch.
                _require(_rewritten(ev, committed), inv, f"{sid} announced, not committed")
                continue
            _require(
                (ev.sha256, ev.first_offset, ev.last_offset, ev.epoch)
                == (seg.sha256, seg.first_offset, seg.last_offset, seg.epoch),
                inv,
                f"{sid}: the announcement differs from the segment row",
            )
        self.held[inv] += 1

    def _reindex_reproduces(self, garbage: list[str]) -> None:
        """`rebuild_index` (what `img2dataset reindex` runs) into a new, empty index: equal to
        the index (segments, items, samples, next_offset), and what it leaves out as garbage
        by its epoch rule is exactly what no commit names. With every crash followed by a
        drain, no uncommitted object is its partition's last, the one case the rule keeps."""
        inv = "reindex_reproduces"
        self.reindexes += 1
        path = self.scratch / f"reindex-{self.reindexes}.sqlite"
        rebuilt = SqliteIndex(path)
        try:
            rebuilt.migrate()
            report = rebuild_index(self.store, rebuilt, topic=self.topic)
            _require(report.ok, inv, f"objects reindex cannot read: {report.invalid}")
            diffs = index_differences(self.index, rebuilt, self.store)
            _require(not diffs, inv, "rebuilt index differs: " + "; ".join(diffs[:5]))
            left_out = sorted(s.name for s in report.superseded)
            tars = sorted(g for g in garbage if g.endswith(".tar"))
            _require(left_out == tars, inv, f"reindex left out {left_out}, garbage is {tars}")
        finally:
            rebuilt.close()
            path.unlink(missing_ok=True)
        self.held[inv] += 1

    def _manifests_reproduce(
        self,
        manifests: dict[str, SegmentManifest],
        committed: dict[str, SegmentRow],
        items: dict[str, ItemRow],
        samples: dict[str, SampleRow],
    ) -> None:
        inv = "manifests_reproduce"
        rebuilt_items: dict[str, ItemRow] = {}
        rebuilt_samples: dict[str, SampleRow] = {}
        for seg_id, m in manifests.items():
            seg = committed[seg_id]
            _require(
                (m.topic, m.partition, m.first_offset, m.last_offset, m.epoch)
                == (seg.topic, seg.partition, seg.first_offset, seg.last_offset, seg.epoch),
                inv,
                f"{seg_id}: manifest header differs from the segment row",
            )
            for i in m.items:
                rebuilt_items.setdefault(i.item_id, i)
            for s in m.samples:
                rebuilt_samples[s.sample_id] = s
        _require(rebuilt_items == items, inv, "items rebuilt from manifests differ")
        for sid, s in samples.items():
            r = rebuilt_samples.get(sid)
            _require(
                r is not None
                and (r.url, r.caption, r.status, r.error, r.item_id, r.segment_id, r.attrs)
                == (s.url, s.caption, s.status, s.error, s.item_id, s.segment_id, s.attrs),
                inv,
                f"{sid}: rebuilt sample differs",
            )
        self.held[inv] += 1


def _rewritten(event: SegmentClosed, committed: dict[str, SegmentRow]) -> bool:
    """Whether committed segments of a later epoch hold every offset of `event`'s segment."""
    later = [
        s
        for s in committed.values()
        if (s.topic, s.partition) == (event.topic, event.partition) and s.epoch > event.epoch
    ]
    return all(
        any(s.first_offset <= offset <= s.last_offset for s in later)
        for offset in range(event.first_offset, event.last_offset + 1)
    )
