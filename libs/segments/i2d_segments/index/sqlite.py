"""SQLite adapter of the Index port: the embedded mode's index, a file in the output folder.

Connection settings, and why:
- WAL journal: readers (status, materializer threads) never block the appender's commit, and a
  crash mid-commit leaves the previous state intact.
- synchronous=FULL: in WAL mode NORMAL skips the fsync at commit, so a power cut can roll back
  the last commits after they returned. A returned `commit_segment` has been announced
  (SEGMENT_CLOSED, sidecar files), and losing it would make the appender redo those offsets under
  a new segment name. FULL costs one fsync per transaction, which is one per segment (thousands
  of rows), so it is nearly free here.
- busy_timeout: several processes may open the same file (a `status` command next to a running
  download); a writer waits for the lock instead of failing at once.
- One connection shared by the threads of the embedded mode (check_same_thread=False), guarded by
  a lock: sqlite3 connections are not safe for concurrent use, and there is one writer anyway.
- Autocommit mode (isolation_level=None) with explicit `BEGIN IMMEDIATE`: the write lock is taken
  when the transaction starts, so the epoch check and the writes it guards cannot interleave
  with another process's, and no deferred-transaction upgrade can deadlock.
- wal_autocheckpoint=0: SQLite's automatic checkpoint runs inside the COMMIT that crosses 1000
  WAL pages, and copying a segment's pages back into an index of a million rows made that
  commit take 1.3-1.5 s instead of 0.3 s. A background thread (`WalCheckpointer`) checkpoints
  (PASSIVE: it never blocks a reader or the writer) after each write transaction returns, and
  journal_size_limit bounds the WAL file once it restarts.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from i2d_segments.index.base import IndexAccessError, PartitionLease, SegmentCommit, SegmentMove
from i2d_segments.index.commit import (
    INSERT_ROW_SQL,
    LOCATED_AT_SQL,
    ROWS_AT_SQL,
    UPDATED_COLUMNS,
    IndexRow,
    write_commit,
)
from i2d_segments.index.rows import SEGMENT_COLUMNS, chunked, clean_text, cols, segment_values
from i2d_segments.index.schema import SCHEMA_MIGRATIONS_DDL, load_migrations
from i2d_segments.index.sqlbase import (
    ACQUIRE_SQL,
    ADVANCE_SQL,
    LOOKUP_CHUNK,
    MOVES_INTO_SQL,
    PARTITION_STATE_SQL,
    SEGMENT_EXISTS_SQL,
    SqlIndex,
    check_commit,
    commit_gate,
    to_moves,
)
from i2d_segments.index.sqlite_checkpoint import WalCheckpointer

# SQLite has no identity column: the next number under the write lock.
_INSERT_SEGMENT = (
    f"INSERT INTO segments ({cols(('seg', *SEGMENT_COLUMNS))}) "
    f"SELECT COALESCE(MAX(seg), 0) + 1, {', '.join('?' * len(SEGMENT_COLUMNS))} "
    "FROM segments RETURNING seg"
)
_UPDATE_ROW = (
    f"UPDATE sample_index SET {', '.join(f'{c} = ?' for c in UPDATED_COLUMNS)} WHERE sample_key = ?"
)


# The WAL file is truncated back to this size once a checkpoint let it restart.
WAL_SIZE_LIMIT = 64 * 1024 * 1024


class _Tx:
    """The `totals.Db` and `commit.CommitDb` of one SQLite write transaction."""

    reads_first = True

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(sql, params)

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.conn.executemany(sql, rows)

    def _at(self, sql: str, column: str, slots: Sequence[int]) -> list[IndexRow]:
        out: list[IndexRow] = []
        for batch in chunked(slots, LOOKUP_CHUNK):
            condition = f"{column} IN ({', '.join('?' * len(batch))})"
            out += [IndexRow(*r) for r in self.conn.execute(sql.format(condition), batch)]
        return out

    def rows_at(self, slots: Sequence[int]) -> list[IndexRow]:
        return self._at(ROWS_AT_SQL, "sample_key", slots)

    def located_at(self, slots: Sequence[int]) -> list[IndexRow]:
        return self._at(LOCATED_AT_SQL, "item_key", slots)

    # 0007's keys, for migrations 0007 and 0008 (index/compact.py, index/slotting.py).
    def legacy_key(self, key: bytes) -> bytes:
        return key

    def legacy_unkey(self, value: Any) -> bytes:
        return bytes(value)

    def insert_rows(self, rows: Sequence[IndexRow]) -> set[int]:
        # Under the write lock no other transaction inserts a key meanwhile.
        self.execute_many(INSERT_ROW_SQL, [r.values() for r in rows])
        return {r.sample_key for r in rows}

    def update_rows(self, rows: Sequence[IndexRow]) -> None:
        self.execute_many(
            _UPDATE_ROW,
            [(*(getattr(r, c) for c in UPDATED_COLUMNS), r.sample_key) for r in rows],
        )


class SqliteIndex(SqlIndex):
    """The index in one SQLite file. Call `migrate()` once after opening (or use `open`)."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(
                self.path,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            # busy_timeout first: switching to WAL takes a lock another process may hold.
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        except sqlite3.Error as e:
            raise IndexAccessError(f"cannot open the SQLite index {self.path}: {e}") from e
        self._checkpointer = WalCheckpointer(self.path, busy_timeout)

    @classmethod
    def open(cls, path: str | Path) -> SqliteIndex:
        """Open and migrate: what a caller that just wants a working index needs."""
        index = cls(path)
        try:
            index.migrate()
        except BaseException:
            index.close()
            raise
        return index

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding SQLite's write lock from its first statement."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                    self._checkpointer.request()
                except BaseException:
                    # Some errors (disk full, I/O) already rolled the transaction back.
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise IndexAccessError(f"SQLite index {self.path}: {e}") from e

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as e:
                raise IndexAccessError(f"SQLite index {self.path}: {e}") from e

    def _write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._write() as conn:
            conn.executemany(sql, rows)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction: WAL gives it the state of its first read until it ends.
        Only reads inside (a write would need its own transaction)."""
        with self._lock:
            try:
                self._conn.execute("BEGIN")
            except sqlite3.Error as e:
                raise IndexAccessError(f"SQLite index {self.path}: {e}") from e
            try:
                yield
            finally:
                with contextlib.suppress(sqlite3.Error):  # nothing written: nothing to lose
                    self._conn.execute("COMMIT")

    def migrate(self) -> None:
        for migration in load_migrations("sqlite"):
            with self._write() as conn:
                conn.execute(SCHEMA_MIGRATIONS_DDL)
                # Re-read under the write lock: another process may have just applied it.
                applied = conn.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)
                ).fetchone()
                if applied:
                    continue
                for statement in migration.statements():
                    conn.execute(statement)
                if migration.step is not None:
                    migration.step(_Tx(conn))
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )

    def acquire_partition(self, topic: str, partition: int, owner: str) -> PartitionLease:
        topic = clean_text(topic)
        with self._write() as conn:
            epoch, next_offset = conn.execute(
                ACQUIRE_SQL, (topic, partition, clean_text(owner), time.time())
            ).fetchone()
        return PartitionLease(topic, partition, int(epoch), int(next_offset))

    def commit_segment(self, commit: SegmentCommit) -> list[SegmentMove]:
        check_commit(commit)
        seg_values = segment_values(commit.segment)
        segment_id = seg_values[0]
        now = time.time()
        key = (seg_values[1], commit.segment.partition)
        with self._write() as conn:
            state = conn.execute(PARTITION_STATE_SQL, key).fetchone()

            def already_committed() -> bool:
                return conn.execute(SEGMENT_EXISTS_SQL, (segment_id,)).fetchone() is not None

            if commit_gate(commit, state, already_committed):
                seg_number = int(conn.execute(_INSERT_SEGMENT, seg_values).fetchone()[0])
                write_commit(_Tx(conn), seg_number, segment_id, commit)
                conn.execute(ADVANCE_SQL, (commit.next_offset, now, *key))
            return to_moves(conn.execute(MOVES_INTO_SQL, (segment_id,)).fetchall())

    def close(self) -> None:
        self._checkpointer.close()
        with self._lock:
            self._conn.close()
