"""Full index rows (`SampleRow`, `ItemRow`): the index's refs joined with the segments' manifests.

The index keeps what finds a row (keys, outcome, segment, item location); a row's url, caption,
attrs, item dims and full ids are in the `__segment__` manifest of the segment holding it, the
same bytes the commit recorded. `SegmentRows` answers what the index used to answer with those
columns, for the materializer, the reader, consumers, verify, gc, status and the tools:

- a manifest is one ranged read at the segment's `manifest_offset` (a segment committed before
  the index recorded it: one scan of the object), parsed once and kept in a small LRU bounded
  by rows (`cache_rows`);
- a segment's rows are its manifest's rows it still holds (`Index.held_samples`: not those a
  newer segment took, nor those delivered again unchanged whose row stayed in an older one);
- a url lookup takes the index's candidates (a 64-bit hash) and keeps the rows whose manifest
  url is the url asked for, so a hash collision never returns a wrong row.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from i2d_segments.index.base import Index, ItemRow, SampleRow, SegmentRow
from i2d_segments.index.keys import sample_key
from i2d_segments.naming import object_name_of
from i2d_segments.segment import handoff
from i2d_segments.segment.format import SegmentFormatError
from i2d_segments.segment.manifest import SegmentManifest, decode_manifest, decode_sample_tail
from i2d_segments.segment.scan import scan_segment
from i2d_segments.store import SegmentStore

# Rows (samples + items) of the manifests kept parsed, besides the one used last (always kept:
# a segment's samples then its items parse it once). A parsed row is ~0.7 KB (a 10k-row
# manifest: ~4 MB of JSON, ~7 MB parsed). Bounded by rows, not by manifests: a manifest holds
# its segment's rows, whatever --number_sample_per_shard made them, and 8 manifests of the
# default 10,000 rows held ~100 MB in every process that reads rows (`download` and
# `service` among them, whose materializer reads each segment once, then never again).
DEFAULT_CACHE_ROWS = 40_000
# The end of a manifest read for a segment's latest rows (~200 sample lines).
TAIL_BYTES = 64 * 1024

ManifestLoader = Callable[[SegmentRow], SegmentManifest]


class ManifestMissingError(SegmentFormatError):
    """A committed segment whose manifest cannot be read."""


def store_manifests(store: SegmentStore) -> ManifestLoader:
    """Manifests read from the store: one ranged read where the index recorded the member,
    else one scan of the object; or handed over by this process's appender (handoff.py)."""

    def load(segment: SegmentRow) -> SegmentManifest:
        handed = handoff.take(segment)  # the appender of this process just committed it
        if handed is not None:
            return handed
        name = object_name_of(segment.segment_id)
        if segment.manifest_offset is not None and segment.manifest_length is not None:
            data = store.read_range(name, segment.manifest_offset, segment.manifest_length)
        else:
            with store.open_stream(name) as stream:
                scan = scan_segment(stream)
            if scan.manifest is None:
                raise ManifestMissingError(f"segment {segment.segment_id} has no manifest")
            data = scan.manifest
        return decode_manifest(data)

    return load


@dataclass(frozen=True, slots=True)
class _Parsed:
    manifest: SegmentManifest
    items: dict[str, ItemRow]
    samples: dict[str, SampleRow]

    @property
    def rows(self) -> int:
        return len(self.manifest.items) + len(self.manifest.samples)


class SegmentRows:
    """Full rows of a dataset: `SegmentRows(store, index)`, or with any manifest loader.

    `cache_rows`: how many rows the manifests kept parsed may hold besides the one used last
    (0: that one only, for a reader that goes through segments one by one)."""

    def __init__(
        self,
        source: SegmentStore | ManifestLoader,
        index: Index,
        *,
        cache_rows: int = DEFAULT_CACHE_ROWS,
    ) -> None:
        self.index = index
        self._store = source if isinstance(source, SegmentStore) else None
        self._load = store_manifests(source) if isinstance(source, SegmentStore) else source
        self._cache: OrderedDict[str, _Parsed] = OrderedDict()
        self._cache_rows = max(0, cache_rows)
        self._rows_cached = 0
        self._lock = threading.Lock()

    @property
    def cached_rows(self) -> int:
        """Rows of the manifests kept parsed now."""
        with self._lock:
            return self._rows_cached

    def _parsed(self, segment_id: str) -> _Parsed | None:
        with self._lock:
            found = self._cache.get(segment_id)
            if found is not None:
                self._cache.move_to_end(segment_id)
                return found
        segment = self.index.segment(segment_id)
        if segment is None:
            return None
        # Room first: the manifests the new one pushes out of the budget are freed before it
        # is read and parsed, not after (that held one more manifest at every load).
        with self._lock:
            self._evict(keep_last=False)
        manifest = self._load(segment)
        # An item's first line wins and a sample's last, as in the commit.
        parsed = _Parsed(
            manifest,
            {i.item_id: i for i in reversed(manifest.items)},
            {s.sample_id: s for s in manifest.samples},
        )
        with self._lock:
            if segment_id not in self._cache:  # another thread may have parsed it meanwhile
                self._cache[segment_id] = parsed
                self._rows_cached += parsed.rows
            self._cache.move_to_end(segment_id)
            self._evict(keep_last=True)
        return parsed

    def _evict(self, *, keep_last: bool) -> None:
        """Drop the least recently used manifests until those besides the one used last (when
        `keep_last`) hold at most `cache_rows` rows (under the lock)."""
        last = next(reversed(self._cache.values())).rows if keep_last and self._cache else 0
        while len(self._cache) > int(keep_last) and self._rows_cached - last > self._cache_rows:
            _, dropped = self._cache.popitem(last=False)
            self._rows_cached -= dropped.rows

    def manifest(self, segment_id: str) -> SegmentManifest | None:
        """The committed segment's manifest (None: not a committed segment)."""
        parsed = self._parsed(segment_id)
        return None if parsed is None else parsed.manifest

    # -- point lookups --------------------------------------------------------------------

    def item(self, item_id: str) -> ItemRow | None:
        ref = self.index.item_ref(item_id)
        if ref is None:
            return None
        parsed = self._parsed(ref.segment_id)
        row = None if parsed is None else parsed.items.get(item_id)
        if row is None:
            return None
        return replace(row, data_offset=ref.data_offset, data_length=ref.data_length)

    def sample(self, sample_id: str) -> SampleRow | None:
        ref = self.index.sample_ref(sample_id)
        if ref is None:
            return None
        parsed = self._parsed(ref.segment_id)
        return None if parsed is None else parsed.samples.get(sample_id)

    def samples_by_url(self, url: str) -> list[SampleRow]:
        """Every row with this url, by sample_id."""
        out: list[SampleRow] = []
        for ref in self.index.sample_refs_by_url(url):
            parsed = self._parsed(ref.segment_id)
            if parsed is None:
                continue
            out += [
                s
                for s in parsed.samples.values()
                if s.url == url and ref.sample_key == sample_key(s.sample_id)
            ]
        return sorted(out, key=lambda s: s.sample_id)

    # -- a segment's rows -----------------------------------------------------------------

    def items_for_segment(self, segment_id: str) -> list[ItemRow]:
        """The items the index locates in that segment, at the index's location (what a ranged
        read uses; `verify` checks it against the tar), in data_offset order."""
        parsed = self._parsed(segment_id)
        if parsed is None:
            return []
        here = self.index.located_items(segment_id, parsed.items)
        rows = [
            replace(parsed.items[i], data_offset=offset, data_length=length)
            for i, (offset, length) in here.items()
        ]
        return sorted(rows, key=lambda i: i.data_offset)

    def samples_for_segment(self, segment_id: str) -> list[SampleRow]:
        """The sample rows the segment holds now, by sample_id."""
        parsed = self._parsed(segment_id)
        if parsed is None:
            return []
        if self.index.held_count(segment_id) == len(parsed.samples):
            # It holds as many rows as its manifest has ids, so all of them: no lookup of
            # each row (most segments, since rows seldom move).
            return sorted(parsed.samples.values(), key=lambda s: s.sample_id)
        held = self.index.held_samples(segment_id, parsed.samples)
        return sorted((parsed.samples[s] for s in held), key=lambda s: s.sample_id)

    def latest_samples_of_segment(self, segment_id: str, limit: int) -> list[SampleRow]:
        """The segment's rows recorded last first (updated_at, then sample_id), at most
        `limit`: from the end of its manifest (one ranged read of TAIL_BYTES, rows are appended
        in arrival order) when that holds enough rows the segment still holds, else from all
        of them."""
        limit = max(0, limit)
        rows = None if limit == 0 else self._tail(segment_id, limit)
        if rows is None:
            rows = self.samples_for_segment(segment_id)
        rows.sort(key=lambda s: (s.updated_at, s.sample_id), reverse=True)
        return rows[:limit]

    def _tail(self, segment_id: str, limit: int) -> list[SampleRow] | None:
        with self._lock:
            if segment_id in self._cache:
                return None  # parsed already: all of its rows cost nothing more
        segment = self.index.segment(segment_id)
        if segment is None or self._store is None:
            return None
        offset, length = segment.manifest_offset, segment.manifest_length
        if offset is None or length is None:
            return None
        start = max(offset, offset + length - TAIL_BYTES)
        data = self._store.read_range(object_name_of(segment_id), start, offset + length - start)
        tail = decode_sample_tail(data, segment_id, partial=start > offset)
        held = self.index.held_samples(segment_id, (s.sample_id for s in tail))
        rows = [s for s in tail if s.sample_id in held]
        return rows if len(rows) >= limit or start == offset else None
