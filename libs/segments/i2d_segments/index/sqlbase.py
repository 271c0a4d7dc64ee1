"""The read side of the index, written once for both engines.

Every query here is plain SQL both engines run unchanged, with `?` placeholders (the adapter
translates them for psycopg). Keeping one text per query is what makes "both adapters give the
same answers" true by construction rather than by two copies kept in step.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from i2d_segments.index.base import (
    DownloadRun,
    FencedError,
    Index,
    IndexAccessError,
    IndexTotals,
    ItemRef,
    PartitionProgress,
    PartitionRow,
    PositionError,
    SampleRef,
    SegmentCommit,
    SegmentMove,
    SegmentRow,
)
from i2d_segments.index.commit import TAR_BLOCK
from i2d_segments.index.compact import COMPACT_VERSION
from i2d_segments.index.keys import (
    Identity,
    item_check_of,
    item_key,
    sample_check_of,
    sample_key,
    url_range,
    walk_slots,
)
from i2d_segments.index.rows import (
    PARTITION_COLUMNS,
    PROGRESS_COLUMNS,
    RUN_COLUMNS,
    SEGMENT_COLUMNS,
    SUCCESS_STATUS,
    chunked,
    clean_text,
    cols,
    progress_values,
    run_values,
    to_partition,
    to_progress,
    to_run,
    to_segment,
)
from i2d_segments.index.schema import load_migrations
from i2d_segments.index.totals import (
    DATASET_TOTALS_SQL,
    ERROR_COUNTS_SQL,
    HELD_COUNT_SQL,
    STATUS_COUNTS_SQL,
    TOTALS_VERSION,
)

# Ids per lookup query: far under SQLite's bind limit (32766) and a cheap plan for Postgres.
LOOKUP_CHUNK = 1000

T = TypeVar("T")

_PARTITION = f"SELECT {cols(PARTITION_COLUMNS)} FROM partitions"
_SEGMENT = f"SELECT {cols(SEGMENT_COLUMNS)} FROM segments"
# A sample's ref: its outcome and the segment whose manifest holds its row.
_SAMPLE_REF = (
    "SELECT si.sample_key, si.hashes, g.segment_id, o.status, o.error, si.item_key "
    "FROM sample_index si JOIN segments g ON g.seg = si.seg "
    "JOIN outcomes o ON o.outcome = si.outcome"
)
_ITEM_REF = (
    "SELECT si.item_key, si.hashes, g.segment_id, si.data_block, si.data_length "
    "FROM sample_index si JOIN segments g ON g.seg = si.seg WHERE si.data_length IS NOT NULL"
)
# The rows at a batch of slots (`keys.walk_slots`), for the identities they may hold.
_AT_SLOTS = "SELECT si.{column}, si.hashes, si.seg{select} FROM sample_index si{joins} WHERE "
_PROGRESS = f"SELECT {cols(PROGRESS_COLUMNS)} FROM partition_progress"
_RUN = f"SELECT {cols(RUN_COLUMNS)} FROM download_runs"

# The migration that created partition_progress and download_runs: a reader that does not
# migrate (status) over an older index answers without them.
LIVE_PROGRESS_VERSION = 3


_LIST_SHARD = "SELECT shard FROM list_shards WHERE list_id = ? AND local_shard = ?"
# `WHERE TRUE`: SQLite needs a WHERE before ON CONFLICT in an INSERT ... SELECT.
ALLOCATE_SHARD_SQL = (
    "INSERT INTO list_shards (list_id, local_shard, shard, created_at) "
    "SELECT ?, ?, COALESCE(MAX(shard) + 1, 0), ? FROM list_shards WHERE TRUE "
    "ON CONFLICT (list_id, local_shard) DO NOTHING"
)

# Writes both engines run with the same text (SQLite >= 3.35 for RETURNING).
ACQUIRE_SQL = (
    f"INSERT INTO partitions ({cols(PARTITION_COLUMNS)}) VALUES (?, ?, 1, 0, ?, ?) "
    'ON CONFLICT (topic, "partition") DO UPDATE SET epoch = partitions.epoch + 1, '
    "owner = excluded.owner, updated_at = excluded.updated_at "
    "RETURNING epoch, next_offset"
)
PARTITION_STATE_SQL = (
    'SELECT epoch, next_offset FROM partitions WHERE topic = ? AND "partition" = ?'
)
SEGMENT_EXISTS_SQL = "SELECT 1 FROM segments WHERE segment_id = ?"
INSERT_SEGMENT_SQL = (
    f"INSERT INTO segments ({cols(SEGMENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(SEGMENT_COLUMNS))}) RETURNING seg"
)
ADVANCE_SQL = (
    'UPDATE partitions SET next_offset = ?, updated_at = ? WHERE topic = ? AND "partition" = ?'
)
_MOVES = "SELECT segment_id, from_segment_id, samples FROM segment_moves"
MOVES_INTO_SQL = f"{_MOVES} WHERE segment_id = ? ORDER BY from_segment_id"
MOVES_OUT_OF_SQL = f"{_MOVES} WHERE from_segment_id = ? ORDER BY segment_id"
# Live figures: the newest epoch's owner wins; an older epoch's write changes nothing.
UPSERT_PROGRESS_SQL = (
    f"INSERT INTO partition_progress ({cols(PROGRESS_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(PROGRESS_COLUMNS))}) "
    'ON CONFLICT (topic, "partition") DO UPDATE SET '
    + ", ".join(f"{c} = excluded.{c}" for c in PROGRESS_COLUMNS[2:])
    + " WHERE partition_progress.epoch <= excluded.epoch"
)
UPSERT_RUN_SQL = (
    f"INSERT INTO download_runs ({cols(RUN_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(RUN_COLUMNS))}) "
    "ON CONFLICT (run_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in RUN_COLUMNS[1:])
)


def check_commit(commit: SegmentCommit) -> None:
    """Reject a commit that contradicts itself before touching the database."""
    seg = commit.segment
    if seg.epoch != commit.epoch:
        raise ValueError(f"segment epoch {seg.epoch} differs from commit epoch {commit.epoch}")
    if seg.last_offset < seg.first_offset:
        raise ValueError(f"segment last_offset {seg.last_offset} < first_offset {seg.first_offset}")
    if commit.next_offset <= seg.last_offset:
        raise ValueError(
            f"commit next_offset {commit.next_offset} must pass last_offset {seg.last_offset}"
        )


def commit_gate(
    commit: SegmentCommit,
    state: Sequence[Any] | None,
    already_committed: Callable[[], bool],
) -> bool:
    """Decide a commit under the partition's lock, from its (epoch, next_offset) row.

    Returns True to write, False when this very segment is already committed: a caller that lost
    its connection during COMMIT cannot know whether it landed, retries, and must not then be told
    its offsets are stale. The same segment id means the same partition, first offset and epoch,
    so the same owner's same data. Raises FencedError for a stale or missing epoch, PositionError
    for a commit that does not continue the committed position.
    """
    current = None if state is None else int(state[0])
    if current != commit.epoch:
        raise fenced(commit, current)
    if already_committed():
        return False
    assert state is not None
    next_offset = int(state[1])
    seg = commit.segment
    where = f"partition {seg.topic}/{seg.partition}'s committed next_offset {next_offset}"
    if seg.first_offset < next_offset:
        raise PositionError(
            f"segment {seg.segment_id} starts at offset {seg.first_offset}, below {where}"
        )
    if commit.resumed_from is not None and commit.resumed_from != next_offset:
        # A gap the writer did not see: commits it was told had landed are gone.
        raise PositionError(
            f"segment {seg.segment_id} follows offset {commit.resumed_from}, but {where}: "
            "the index lost acknowledged commits"
        )
    return True


def fenced(commit: SegmentCommit, current: int | None) -> FencedError:
    seg = commit.segment
    if current is None:
        return FencedError(f"partition {seg.topic}/{seg.partition} was never acquired")
    return FencedError(
        f"partition {seg.topic}/{seg.partition} is at epoch {current}, "
        f"commit of {seg.segment_id} carries epoch {commit.epoch}"
    )


def to_moves(rows: Sequence[Sequence[Any]]) -> list[SegmentMove]:
    return [SegmentMove(str(r[0]), str(r[1]), int(r[2])) for r in rows]


class SqlIndex(Index):
    """Implements every read of the port over `_fetch`; adapters add writes and connections."""

    _versions: frozenset[int] = frozenset()  # migrations seen applied (once seen, for good)

    @abstractmethod
    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read-only statement (`?` placeholders) and return all its rows."""

    @abstractmethod
    def _write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement (`?` placeholders) once per row, all in one write transaction."""

    def partition(self, topic: str, partition: int) -> PartitionRow | None:
        rows = self._fetch(f'{_PARTITION} WHERE topic = ? AND "partition" = ?', (topic, partition))
        return to_partition(rows[0]) if rows else None

    def partitions(self) -> list[PartitionRow]:
        return [to_partition(r) for r in self._fetch(f'{_PARTITION} ORDER BY topic, "partition"')]

    def _find(
        self,
        wanted: dict[Identity, T],
        *,
        items: bool = False,
        select: str = "",
        joins: str = "",
        segment_id: str | None = None,
    ) -> list[tuple[T, tuple[Any, ...]]]:
        """(wanted value, the row's `select` columns) for the row of each wanted identity (a
        sample's, or among the rows that locate an item an item's), if in `segment_id` when
        given."""
        column = "item_key" if items else "sample_key"
        check_of = item_check_of if items else sample_check_of
        sql = _AT_SLOTS.format(
            column=column,
            select="".join(", " + c.strip() for c in select.split(",") if c.strip()),
            joins=joins,
        )
        located = " AND si.data_length IS NOT NULL" if items else ""

        def read(slots: list[int]) -> list[tuple[Any, ...]]:
            out: list[tuple[Any, ...]] = []
            for batch in chunked(slots, self._lookup_chunk):
                condition, params = self._in_condition(f"si.{column}", batch)
                out += self._fetch(sql + condition + located, params)
            return out

        def identity(row: tuple[Any, ...]) -> Identity:
            return Identity.at(row[0], check_of(row[1]))

        seg = None
        if segment_id is not None:
            found = self._fetch("SELECT seg FROM segments WHERE segment_id = ?", (segment_id,))
            if not found:
                return []
            seg = int(found[0][0])
        out: list[tuple[T, tuple[Any, ...]]] = []
        for r in walk_slots(read, wanted, identity):
            value = wanted.get(identity(r))
            if value is not None and (seg is None or r[2] == seg):
                out.append((value, tuple(r[3:])))
        return out

    def existing_items(self, item_ids: Iterable[str]) -> set[str]:
        return {i for i, _ in self._find({item_key(i): i for i in item_ids}, items=True)}

    def known_samples(self, sample_ids: Iterable[str]) -> set[str]:
        return {s for s, _ in self._find({sample_key(s): s for s in sample_ids})}

    _lookup_chunk = LOOKUP_CHUNK

    def sample_outcomes(self, sample_ids: Iterable[str]) -> dict[str, tuple[str, str | None]]:
        rows = self._find(
            {sample_key(s): s for s in sample_ids},
            select="o.status, o.error",
            joins=" JOIN outcomes o ON o.outcome = si.outcome",
        )
        return {s: (str(r[0]), r[1]) for s, r in rows}

    def held_samples(self, segment_id: str, sample_ids: Iterable[str]) -> set[str]:
        rows = self._find({sample_key(s): s for s in sample_ids}, segment_id=clean_text(segment_id))
        return {s for s, _ in rows}

    def held_count(self, segment_id: str) -> int | None:
        if not self._has_totals():
            return None
        rows = self._fetch(HELD_COUNT_SQL, (clean_text(segment_id),))
        return int(rows[0][0])

    def located_items(self, segment_id: str, item_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
        rows = self._find(
            {item_key(i): i for i in item_ids},
            items=True,
            select="si.data_block, si.data_length",
            segment_id=clean_text(segment_id),
        )
        return {i: (int(r[0]) * TAR_BLOCK, int(r[1])) for i, r in rows}

    def _in_condition(self, column: str, ids: list[Any]) -> tuple[str, Sequence[Any]]:
        """`column IN (?, ?, ...)`: portable; an adapter may offer a cheaper form."""
        return f"{column} IN ({', '.join('?' * len(ids))})", ids

    def allocate_shard(self, list_id: str, local_shard: int) -> int:
        key = (clean_text(list_id), local_shard)
        for attempt in range(5):
            rows = self._fetch(_LIST_SHARD, key)
            if rows:
                return int(rows[0][0])
            try:
                self._write_many(ALLOCATE_SHARD_SQL, [(*key, time.time())])
            except IndexAccessError:
                # Postgres: another list took the same next number at the same time (the
                # shard column is unique); read again, then take the next one.
                if attempt == 4:
                    raise
        rows = self._fetch(_LIST_SHARD, key)
        return int(rows[0][0])

    @staticmethod
    def _sample_ref(row: Sequence[Any]) -> SampleRef:
        slot, hashes, segment_id, status, error, item_slot = row
        item = None if item_slot is None else Identity.at(item_slot, item_check_of(hashes))
        identity = Identity.at(slot, sample_check_of(hashes))
        return SampleRef(identity, str(segment_id), str(status), error, item)

    def item_ref(self, item_id: str) -> ItemRef | None:
        item = item_key(item_id)
        rows = self._fetch(
            f"{_ITEM_REF} AND si.item_key BETWEEN ? AND ?", (item.bucket, item.last_slot)
        )
        for _, hashes, segment_id, block, length in rows:
            if item_check_of(int(hashes)) == item.check:
                return ItemRef(item, str(segment_id), int(block) * TAR_BLOCK, int(length))
        return None

    def sample_ref(self, sample_id: str) -> SampleRef | None:
        sample = sample_key(sample_id)
        rows = self._fetch(
            f"{_SAMPLE_REF} WHERE si.sample_key BETWEEN ? AND ?", (sample.bucket, sample.last_slot)
        )
        for row in rows:
            if sample_check_of(int(row[1])) == sample.check:
                return self._sample_ref(row)
        return None

    def sample_refs_by_url(self, url: str) -> list[SampleRef]:
        rows = self._fetch(
            f"{_SAMPLE_REF} WHERE si.hashes BETWEEN ? AND ? ORDER BY si.sample_key", url_range(url)
        )
        return [self._sample_ref(r) for r in rows]

    def segment(self, segment_id: str) -> SegmentRow | None:
        rows = self._fetch(
            f"{self._segment_select()} WHERE segment_id = ?", (clean_text(segment_id),)
        )
        return to_segment(rows[0]) if rows else None

    def segments(self) -> list[SegmentRow]:
        rows = self._fetch(
            f'{self._segment_select()} ORDER BY "partition", first_offset, topic, segment_id'
        )
        return [to_segment(r) for r in rows]

    def partition_segments(
        self, topic: str, partition: int, min_last_offset: int = 0
    ) -> list[SegmentRow]:
        rows = self._fetch(
            f'{self._segment_select()} WHERE topic = ? AND "partition" = ? AND last_offset >= ? '
            "ORDER BY first_offset",
            (clean_text(topic), partition, min_last_offset),
        )
        return [to_segment(r) for r in rows]

    def moves_into(self, segment_id: str) -> list[SegmentMove]:
        return to_moves(self._fetch(MOVES_INTO_SQL, (clean_text(segment_id),)))

    def moves_out_of(self, segment_id: str) -> list[SegmentMove]:
        return to_moves(self._fetch(MOVES_OUT_OF_SQL, (clean_text(segment_id),)))

    def totals(self) -> IndexTotals:
        if self._has_totals():
            rows = self._fetch(DATASET_TOTALS_SQL)
        else:
            # An index older than the totals, read without migrating it (status): what it can
            # say from the segment rows alone (a row that moved counts in both segments).
            rows = self._fetch(
                "SELECT COUNT(*), COALESCE(SUM(item_count), 0), COALESCE(SUM(sample_count), 0), "
                "COALESCE(SUM(bytes), 0), MIN(created_at), MAX(created_at) FROM segments"
            )
        n, items, samples, size, first, last = rows[0]
        return IndexTotals(
            segments=int(n),
            items=int(items),
            samples=int(samples),
            bytes=int(size),
            first_created_at=None if first is None else float(first),
            last_created_at=None if last is None else float(last),
        )

    def recent_segments(self, limit: int, offset: int = 0) -> list[SegmentRow]:
        rows = self._fetch(
            f"{self._segment_select()} ORDER BY created_at DESC, segment_id DESC LIMIT ? OFFSET ?",
            (max(0, int(limit)), max(0, int(offset))),
        )
        return [to_segment(r) for r in rows]

    def _segment_select(self) -> str:
        # An index older than 0007 read without migrating it (status) has no manifest columns.
        if self._has_version(COMPACT_VERSION):
            return _SEGMENT
        return _SEGMENT.replace("manifest_offset, manifest_length", "NULL, NULL")

    def needs_migration(self) -> bool:
        """An index written before the newest migration (one a reader opened as it is)."""
        return not self._has_version(load_migrations("sqlite")[-1].version)

    def _has_version(self, version: int) -> bool:
        if version not in self._versions:
            rows = self._fetch("SELECT 1 FROM schema_migrations WHERE version = ?", (version,))
            if rows:
                self._versions = self._versions | {version}  # once seen, for good
            else:
                return False
        return True

    # -- live progress --------------------------------------------------------------------

    def _has_live_progress(self) -> bool:
        return self._has_version(LIVE_PROGRESS_VERSION)

    def publish_progress(self, rows: Sequence[PartitionProgress]) -> None:
        if rows:
            self._write_many(UPSERT_PROGRESS_SQL, [progress_values(p) for p in rows])

    def progress(self) -> list[PartitionProgress]:
        if not self._has_live_progress():
            return []
        return [to_progress(r) for r in self._fetch(f'{_PROGRESS} ORDER BY topic, "partition"')]

    def record_run(self, run: DownloadRun) -> None:
        self._write_many(UPSERT_RUN_SQL, [run_values(run)])

    def latest_run(self) -> DownloadRun | None:
        if not self._has_live_progress():
            return None
        rows = self._fetch(f"{_RUN} ORDER BY started_at DESC, run_id DESC LIMIT 1")
        return to_run(rows[0]) if rows else None

    # -- totals (see totals.py): kept by each commit, read without counting rows -------------

    def _has_totals(self) -> bool:
        return self._has_version(TOTALS_VERSION)

    def status_counts(self) -> dict[str, int]:
        if self._has_totals():
            rows = self._fetch(STATUS_COUNTS_SQL)
        else:
            rows = self._fetch("SELECT status, COUNT(*) FROM samples GROUP BY status")
        return {str(status): int(n) for status, n in rows}

    def error_counts(self) -> dict[str, int]:
        if self._has_totals():
            rows = self._fetch(ERROR_COUNTS_SQL, (SUCCESS_STATUS,))
        else:
            rows = self._fetch(
                "SELECT error, COUNT(*) FROM samples WHERE status <> ? AND error IS NOT NULL "
                "GROUP BY error",
                (SUCCESS_STATUS,),
            )
        return {str(error): int(n) for error, n in rows}
