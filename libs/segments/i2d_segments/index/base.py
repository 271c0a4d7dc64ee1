"""Index port. Adapters: `sqlite` (embedded, a file in the output folder) and `postgres`.

Both run the same versioned migrations (`index/migrations/NNNN_*.sql`, recorded in
`schema_migrations`) and give the same answers: one contract suite checks both.

The index is the source of truth for partition ownership and position: an appender that takes a
partition bumps its epoch (`acquire_partition`) and resumes from `next_offset`; a segment becomes
visible only through `commit_segment`, one transaction that refuses a stale epoch.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from i2d_segments.index.keys import Identity


class IndexAccessError(RuntimeError):  # named so as not to shadow the builtin IndexError
    """An index operation failed."""


class FencedError(IndexAccessError):
    """The caller's epoch is no longer the partition's: another owner took over (zombie)."""


class PositionError(IndexAccessError):
    """The commit does not continue the partition's committed position: it starts below
    `next_offset`, or its writer resumed from a `next_offset` the index no longer holds (an
    index that lost commits it had acknowledged: a crash without durable commits, a restore, a
    failover to an asynchronous replica). Retrying cannot help; the writer takes the partition
    again and resumes from the index's `next_offset`."""


@dataclass(frozen=True, slots=True)
class PartitionLease:
    topic: str
    partition: int
    epoch: int
    next_offset: int


@dataclass(frozen=True, slots=True)
class PartitionRow:
    topic: str
    partition: int
    epoch: int
    next_offset: int
    owner: str | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class SegmentRow:
    segment_id: str  # e.g. "p00003/00000000000000001200-e2"
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    epoch: int
    uri: str
    item_count: int
    sample_count: int
    bytes: int
    sha256: str
    created_at: float
    # Where the `__segment__` member's data sits in the object (one ranged read of the
    # manifest); None for a segment committed before the index recorded it (found by a scan).
    manifest_offset: int | None = None
    manifest_length: int | None = None


@dataclass(frozen=True, slots=True)
class ItemRef:
    """What the index holds of a stored item: where its bytes are. Everything else about it
    (ext, dims, data_sha256) is its line in that segment's manifest (`reader.SegmentRows`)."""

    item_key: Identity  # keys.item_key(item_id)
    segment_id: str
    data_offset: int
    data_length: int


@dataclass(frozen=True, slots=True)
class SampleRef:
    """What the index holds of a sample row: its latest outcome and the segment whose manifest
    has the row (url, caption, attrs, full ids: `reader.SegmentRows`)."""

    sample_key: Identity  # keys.sample_key(sample_id)
    segment_id: str
    status: str
    error: str | None
    item_key: Identity | None  # the item of a success


@dataclass(frozen=True, slots=True)
class ItemRow:
    item_id: str  # sha256 of the original downloaded bytes
    segment_id: str
    data_offset: int  # byte offset of the image member's data in the segment object
    data_length: int
    ext: str
    mime: str | None
    width: int | None
    height: int | None
    original_width: int | None
    original_height: int | None
    # sha256 of the stored member bytes: item_id hashes the ORIGINAL download (see
    # docs/architecture.md, "Identities"), which differs once the image is re-encoded, so
    # ranged reads are verified against this.
    data_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class SampleRow:
    sample_id: str
    url: str
    caption: str | None
    status: str  # success | failed_to_download | failed_to_resize
    error: str | None
    item_id: str | None
    segment_id: str  # the segment whose offset range carried this row's APPEND record
    attrs: dict[str, Any] = field(default_factory=dict)  # the rest of img2dataset's columns
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class IndexTotals:
    """Sizes of the committed dataset, for dashboards: kept by the commits (one row to read)."""

    segments: int
    items: int  # sum of the segments' item_count
    # Sample rows in the index, each once (a row that moved to a newer segment counts there
    # only): the sum of status_counts(). The segments' sample_count says what each committed.
    samples: int
    bytes: int
    first_created_at: float | None
    last_created_at: float | None


@dataclass(frozen=True, slots=True)
class SegmentMove:
    """Sample rows an older segment lost to a newer one: a row delivered again with a different
    outcome (latest wins) belongs to the segment that committed the newer outcome, so the older
    segment's metadata must no longer list it. Recorded by that commit, in its transaction."""

    segment_id: str  # the newer segment, which took the rows
    from_segment_id: str  # the older one, which held them
    samples: int  # how many rows moved


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """Live figures of one partition, published by its owner (the appender) about every
    second: what its open segment holds before the commit makes it part of the index, where it
    has read to, its current rates and its latest rows. Not part of the dataset: a reader
    trusts it only while it is fresh and of the partition's current epoch."""

    topic: str
    partition: int
    epoch: int
    owner: str | None
    position: int  # the offset after the last record appended (open segment included)
    open_segment_id: str | None  # None: no segment open
    open_first_offset: int | None
    open_samples: int  # sample rows in the open segment (not committed yet)
    open_successes: int
    open_errors: dict[str, int]  # the open segment's failed rows by error (the most frequent)
    open_bytes: int
    samples_per_second: float  # rows appended per second over `window_seconds`
    images_per_second: float  # successes appended per second over `window_seconds`
    window_seconds: float
    # The partition's latest rows, newest first: {sample_id, url, caption, status, error,
    # item_id, width, height, segment_id, at}, text shortened.
    recent: list[dict[str, Any]]
    updated_at: float


@dataclass(frozen=True, slots=True)
class DownloadRun:
    """One `img2dataset download` run, recorded (and updated about every second) by the run:
    its list's size and where its APPEND records start, so its progress is known to any reader
    of the index: rows skipped + records appended since `start_offset`."""

    run_id: str
    url_list: str
    append_topic: str
    append_partition: int
    start_offset: int  # the partition's committed position when the run started
    rows_total: int | None  # the list's rows, when known (counted up front, or once read)
    rows_read: int
    rows_skipped: int  # already recorded (incremental resume): done without a fetch
    started_at: float
    updated_at: float
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class SegmentCommit:
    """One segment's transaction. `items` and `samples` have unique ids within the commit."""

    epoch: int
    segment: SegmentRow
    items: Sequence[ItemRow]
    samples: Sequence[SampleRow]
    next_offset: int  # segment.last_offset + 1
    # The partition's next_offset as the writer last saw it committed: where its reading
    # resumed for this segment. The segment may start later (offsets the bus deleted), but the
    # index must still be there; None skips that check (reindex, tools).
    resumed_from: int | None = None


class Index(ABC):
    @abstractmethod
    def migrate(self) -> None:
        """Apply pending migrations; safe to run concurrently from several processes."""

    @abstractmethod
    def acquire_partition(self, topic: str, partition: int, owner: str) -> PartitionLease:
        """Take ownership: epoch := epoch + 1 (a new row starts at epoch 1, next_offset 0)."""

    @abstractmethod
    def commit_segment(self, commit: SegmentCommit) -> list[SegmentMove]:
        """In one transaction: check the partition's epoch equals `commit.epoch` (else
        FencedError, nothing written), that `commit.segment.first_offset >= next_offset` and
        that `commit.resumed_from`, if given, equals next_offset (else PositionError);
        insert the segment; insert items that are not stored yet (an item already indexed keeps
        its first location); upsert samples (latest outcome wins: a row already recorded with a
        different outcome moves to this segment; the same outcome again stays where it is);
        record which older segments lost rows to this one (`moves_into`); set next_offset.
        Returns those moves (a retried commit that had landed returns what it recorded)."""

    @abstractmethod
    def moves_into(self, segment_id: str) -> list[SegmentMove]:
        """The older segments that lost sample rows to `segment_id` at its commit, by
        from_segment_id: their metadata must be written again without those rows."""

    @abstractmethod
    def moves_out_of(self, segment_id: str) -> list[SegmentMove]:
        """The newer segments that took sample rows from `segment_id`, by segment_id. Rows only
        ever leave a committed segment, each time through one of these, so an unchanged answer
        means an unchanged set of rows."""

    @abstractmethod
    def partition(self, topic: str, partition: int) -> PartitionRow | None: ...

    @abstractmethod
    def partitions(self) -> list[PartitionRow]: ...

    @abstractmethod
    def existing_items(self, item_ids: Iterable[str]) -> set[str]:
        """The subset of `item_ids` already indexed (dedup)."""

    @abstractmethod
    def known_samples(self, sample_ids: Iterable[str]) -> set[str]:
        """The subset of `sample_ids` that already have a row (resume)."""

    @abstractmethod
    def sample_outcomes(self, sample_ids: Iterable[str]) -> dict[str, tuple[str, str | None]]:
        """{sample_id: (status, error)} of the `sample_ids` that already have a row (resume,
        and `--retry_failed`, which fetches some failed rows again)."""

    @abstractmethod
    def allocate_shard(self, list_id: str, local_shard: int) -> int:
        """The dataset-wide shard number of shard `local_shard` of url list `list_id`:
        the one given before, else the next one not given to any list (img2dataset's `key`
        column stays unique within the dataset across lists and enqueues)."""

    @abstractmethod
    def item_ref(self, item_id: str) -> ItemRef | None:
        """Where the item is stored, or None."""

    @abstractmethod
    def sample_ref(self, sample_id: str) -> SampleRef | None:
        """The sample's latest outcome and the segment holding its row, or None."""

    @abstractmethod
    def sample_refs_by_url(self, url: str) -> list[SampleRef]:
        """Candidates: the rows whose url has the same 64-bit hash (usually those with this
        url, rarely another url too). The caller confirms the url against the manifests."""

    @abstractmethod
    def held_samples(self, segment_id: str, sample_ids: Iterable[str]) -> set[str]:
        """The subset of `sample_ids` (rows of the segment's manifest) whose row the segment
        holds now: not those a newer segment took, nor those delivered again unchanged whose
        row stayed in an older segment."""

    def held_count(self, segment_id: str) -> int | None:
        """How many sample rows the segment holds now, from the totals its commits keep
        (no row is read); None where the index keeps none. Its manifest's distinct sample ids
        are a superset of those rows, so an equal count means it holds all of them."""
        return None

    @abstractmethod
    def located_items(self, segment_id: str, item_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
        """{item_id: (data_offset, data_length)} of the `item_ids` (items of the segment's
        manifest) the index locates in it (an item keeps its first location)."""

    @abstractmethod
    def segment(self, segment_id: str) -> SegmentRow | None: ...

    @abstractmethod
    def segments(self) -> list[SegmentRow]:
        """All committed segments ordered by (partition, first_offset)."""

    def partition_segments(
        self, topic: str, partition: int, min_last_offset: int = 0
    ) -> list[SegmentRow]:
        """Committed segments of one partition whose last_offset >= `min_last_offset`, ordered
        by first_offset (the appender re-announces these on taking a partition). The default
        walks `segments()`; the SQL adapters answer with one indexed query."""
        return [
            s
            for s in self.segments()
            if s.topic == topic and s.partition == partition and s.last_offset >= min_last_offset
        ]

    @abstractmethod
    def status_counts(self) -> dict[str, int]:
        """Sample rows per status (the SQL adapters read totals their commits keep)."""

    @abstractmethod
    def error_counts(self) -> dict[str, int]:
        """Failed sample rows per error message (likewise)."""

    def totals(self) -> IndexTotals:
        """Counts and sizes over every committed segment. The default walks `segments()`;
        the SQL adapters read the totals their commits keep."""
        rows = self.segments()
        created = [s.created_at for s in rows]
        return IndexTotals(
            segments=len(rows),
            items=sum(s.item_count for s in rows),
            samples=sum(self.status_counts().values()),
            bytes=sum(s.bytes for s in rows),
            first_created_at=min(created) if created else None,
            last_created_at=max(created) if created else None,
        )

    def recent_segments(self, limit: int, offset: int = 0) -> list[SegmentRow]:
        """Committed segments, newest first (created_at, then segment_id), one page of them."""
        rows = sorted(self.segments(), key=lambda s: (s.created_at, s.segment_id), reverse=True)
        return rows[offset : offset + limit]

    # -- live progress (not part of the dataset; see PartitionProgress and DownloadRun) --------

    @abstractmethod
    def publish_progress(self, rows: Sequence[PartitionProgress]) -> None:
        """Upsert each partition's live figures in one transaction. A row of an older epoch
        than the one stored is ignored (a zombie never hides the live owner's figures)."""

    @abstractmethod
    def progress(self) -> list[PartitionProgress]:
        """Every partition's last published figures, by (topic, partition); empty when the
        index predates them (a read-only reader does not migrate)."""

    @abstractmethod
    def record_run(self, run: DownloadRun) -> None:
        """Insert or update (by run_id) a download run."""

    @abstractmethod
    def latest_run(self) -> DownloadRun | None:
        """The download run started last, or None."""

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one state of the index (no commit lands between two of them), so
        figures read together add up (committed rows and open rows never count a row twice).
        The default promises nothing; the SQL adapters read in one transaction."""
        yield

    @abstractmethod
    def close(self) -> None: ...
