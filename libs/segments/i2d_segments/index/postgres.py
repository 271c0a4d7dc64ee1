"""PostgreSQL adapter of the Index port (psycopg 3): the distributed mode's shared index.

`commit_segment` is one transaction: lock the partition row (`SELECT ... FOR UPDATE`), check the
epoch and the offset, insert the segment, then write the sample rows (index/commit.py): COPY
them into a session temp table and move them with one `INSERT ... SELECT ... ON CONFLICT DO
NOTHING RETURNING` (the keys it leaves out exist already, or were inserted meanwhile by another
partition: they are read `FOR UPDATE` and handled as existing rows), rewrite the moved ones with
one `UPDATE ... FROM` the temp table, record the rows taken from older segments (`segment_moves`)
and the totals, advance `next_offset`. COPY is the fast path for the ~10k rows a segment
carries; reading and inserting in key order makes concurrent transactions that touch the same
sample rows take their locks in the same order, so they queue instead of deadlocking.

Connection loss (a Postgres restart, a failover, an idle connection cut by a proxy):
- reads, `acquire_partition` and `migrate` reconnect and retry once, and a later call reconnects
  again, so a service survives a database restart without being restarted itself. Retrying
  `acquire_partition` is safe: if the lost attempt did bump the epoch, the retry bumps it again
  and the caller holds the newest lease, which is all fencing needs.
- `commit_segment` does NOT retry by itself: it raises IndexAccessError and the next call
  reconnects. The caller (the appender) retries the same commit; if the lost attempt had in fact
  committed, the retry finds its segment and returns without writing (see `commit_gate`).

One connection per instance, used under a lock, so threads may share an instance; a service that
needs parallel commits opens one instance per worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg

from i2d_segments.index.base import IndexAccessError, PartitionLease, SegmentCommit, SegmentMove
from i2d_segments.index.commit import (
    INDEX_COLUMNS,
    LOCATED_AT_SQL,
    ROWS_AT_SQL,
    UPDATED_COLUMNS,
    IndexRow,
    write_commit,
)
from i2d_segments.index.rows import chunked, clean_text, cols, segment_values
from i2d_segments.index.schema import SCHEMA_MIGRATIONS_DDL, Migration, load_migrations
from i2d_segments.index.sqlbase import (
    ACQUIRE_SQL,
    ADVANCE_SQL,
    INSERT_SEGMENT_SQL,
    MOVES_INTO_SQL,
    PARTITION_STATE_SQL,
    SEGMENT_EXISTS_SQL,
    SqlIndex,
    check_commit,
    commit_gate,
    to_moves,
)

T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]

# Advisory lock serialising migrate() across processes: a fixed 64-bit key derived from a name,
# so it cannot collide with a lock another program picked by hand.
MIGRATE_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"i2d_segments.index.migrate").digest()[:8], "big", signed=True
)

# The session temp table the commit COPYs sample rows into; emptied before each use and at
# each commit. Plain column types (no LIKE), so it does not depend on the schema.
_STAGE = "_i2d_stage_slots"
_CREATE_STAGING = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (hashes BIGINT, sample_key BIGINT, "
    "item_key BIGINT, seg INTEGER, outcome INTEGER, data_block INTEGER, data_length INTEGER) "
    "ON COMMIT DELETE ROWS"
)
_INSERT_STAGED = (
    f"INSERT INTO sample_index ({cols(INDEX_COLUMNS)}) "
    f"SELECT {cols(INDEX_COLUMNS)} FROM {_STAGE} ORDER BY sample_key "
    "ON CONFLICT (sample_key) DO NOTHING RETURNING sample_key"
)
# One array parameter of slots: one plan, one round trip.
_ROWS_AT = ROWS_AT_SQL.format("sample_key = ANY(%s::bigint[])") + " ORDER BY sample_key FOR UPDATE"
_LOCATED_AT = LOCATED_AT_SQL.format("item_key = ANY(%s::bigint[])")
_UPDATE_STAGED = (
    f"UPDATE sample_index si SET {', '.join(f'{c} = st.{c}' for c in UPDATED_COLUMNS)} "
    f"FROM {_STAGE} st WHERE si.sample_key = st.sample_key"
)


_COMMIT_WORK_MEM = "SET LOCAL work_mem = '64MB'"


def _pg(sql: str) -> str:
    """The shared SQL uses `?` placeholders; psycopg wants `%s`."""
    return sql.replace("?", "%s")


def _copy_text(rows: Sequence[IndexRow]) -> str:
    """Rows in COPY's text format, built at once: ints need no escaping, and one write is
    several times faster than a write_row per row (10k rows per commit)."""

    def field(v: int | None) -> str:
        return "\\N" if v is None else str(v)

    return "".join("\t".join(map(field, r.values())) + "\n" for r in rows)


class _Tx:
    """The `totals.Db` and `commit.CommitDb` of one Postgres transaction (`?` placeholders,
    as the shared SQL)."""

    reads_first = False

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(_pg(sql), params).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(_pg(sql), params)

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with self.conn.cursor() as cur:
                cur.executemany(_pg(sql), rows)

    def _at(self, sql: str, slots: Sequence[int]) -> list[IndexRow]:
        # In batches, for index probes (PostgresIndex._lookup_chunk); in slot order, so
        # concurrent commits lock rows in the same order.
        out: list[IndexRow] = []
        for batch in chunked(sorted(slots), PostgresIndex._lookup_chunk):
            out += [IndexRow(*r) for r in self.conn.execute(sql, (batch,))]
        return out

    def rows_at(self, slots: Sequence[int]) -> list[IndexRow]:
        return self._at(_ROWS_AT, slots)

    def located_at(self, slots: Sequence[int]) -> list[IndexRow]:
        return self._at(_LOCATED_AT, slots)

    # 0007's keys, for migrations 0007 and 0008 (index/compact.py, index/slotting.py).
    def legacy_key(self, key: bytes) -> uuid.UUID:
        return uuid.UUID(bytes=key)

    def legacy_unkey(self, value: Any) -> bytes:
        return value.bytes if isinstance(value, uuid.UUID) else bytes(value)

    def _stage(self, cur: psycopg.Cursor[tuple[Any, ...]], rows: Sequence[IndexRow]) -> None:
        cur.execute(f"DELETE FROM {_STAGE}")
        with cur.copy(f"COPY {_STAGE} ({cols(INDEX_COLUMNS)}) FROM STDIN") as copy:
            copy.write(_copy_text(rows))

    def insert_rows(self, rows: Sequence[IndexRow]) -> set[int]:
        if not rows:
            return set()
        with self.conn.cursor() as cur:
            self._stage(cur, rows)
            cur.execute(_INSERT_STAGED)
            return {int(r[0]) for r in cur.fetchall()}

    def update_rows(self, rows: Sequence[IndexRow]) -> None:
        if rows:
            with self.conn.cursor() as cur:
                self._stage(cur, rows)
                cur.execute(_UPDATE_STAGED)


class PostgresIndex(SqlIndex):
    """The index in a PostgreSQL database. Call `migrate()` once after opening (or use `open`)."""

    def __init__(self, dsn: str, *, connect_timeout: float = 10.0) -> None:
        self.dsn = dsn
        self._connect_timeout = connect_timeout
        self._lock = threading.RLock()
        self._conn: Conn | None = None
        self._staging_ready = False
        self._closed = False
        self._in_snapshot = False
        with self._lock:
            self._connection()  # a wrong DSN fails here, not at the first commit

    @classmethod
    def open(cls, dsn: str) -> PostgresIndex:
        index = cls(dsn)
        try:
            index.migrate()
        except BaseException:
            index.close()
            raise
        return index

    # ------------------------------------------------------------------ connection handling

    def _connection(self) -> Conn:
        if self._closed:
            raise IndexAccessError("the Postgres index is closed")
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._drop()
        try:
            # Autocommit: a read is its own statement; writes open explicit transactions.
            self._conn = psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=max(1, int(self._connect_timeout))
            )
        except psycopg.Error as e:
            raise IndexAccessError(f"cannot connect to the Postgres index: {e}") from e
        self._staging_ready = False
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # already gone; nothing to release
                conn.close()

    def _lost(self, conn: Conn) -> bool:
        if conn.closed or conn.broken:
            self._drop()
            return True
        return False

    def _run(self, fn: Callable[[Conn], T], *, retry: bool) -> T:
        with self._lock:
            for attempt in (1, 2):
                conn = self._connection()
                try:
                    return fn(conn)
                except psycopg.Error as e:
                    # Inside a snapshot a new connection would read another state: no retry.
                    if self._lost(conn) and retry and attempt == 1 and not self._in_snapshot:
                        continue
                    raise IndexAccessError(f"Postgres index: {e}") from e
            raise AssertionError("unreachable: the second attempt returns or raises")

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        query = _pg(sql)
        return self._run(lambda conn: conn.execute(query, params).fetchall(), retry=True)

    def _write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        query = _pg(sql)

        def write(conn: Conn) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(query, rows)

        # Upserts of whole rows: running one again after a lost connection changes nothing.
        self._run(write, retry=True)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """One REPEATABLE READ, READ ONLY transaction: every read inside sees one state."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    self._in_snapshot = True
                    try:
                        yield
                    finally:
                        self._in_snapshot = False
            except psycopg.Error as e:
                self._lost(conn)
                raise IndexAccessError(f"Postgres index: {e}") from e

    # One array parameter instead of thousands of bind parameters: one plan, one round trip.
    # 2,000 slots an array: with 10,000 the planner scans a table of a million rows instead of
    # probing its index (a lookup of 10k ids: 80-110 ms in batches of 2,000, 80-200 ms in one).
    _lookup_chunk = 2_000

    def _in_condition(self, column: str, ids: list[Any]) -> tuple[str, Sequence[Any]]:
        return f"{column} = ANY(?::bigint[])", (ids,)

    # ------------------------------------------------------------------ writes

    def migrate(self) -> None:
        for migration in load_migrations("postgres"):

            def apply(conn: Conn, migration: Migration = migration) -> None:
                with conn.transaction():
                    # Held to the end of this transaction: concurrent migrate() calls queue here,
                    # then see the version recorded and skip it.
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK_KEY,))
                    conn.execute(SCHEMA_MIGRATIONS_DDL)
                    applied = conn.execute(
                        "SELECT 1 FROM schema_migrations WHERE version = %s", (migration.version,)
                    ).fetchone()
                    if applied:
                        return
                    for statement in migration.statements():
                        conn.execute(statement)
                    if migration.step is not None:
                        conn.execute(_CREATE_STAGING)  # 0008 writes rows as the commits do
                        migration.step(_Tx(conn))
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) "
                        "VALUES (%s, %s, %s)",
                        (migration.version, migration.name, time.time()),
                    )

            self._run(apply, retry=True)

    def acquire_partition(self, topic: str, partition: int, owner: str) -> PartitionLease:
        topic = clean_text(topic)
        params = (topic, partition, clean_text(owner), time.time())

        def bump(conn: Conn) -> tuple[Any, ...]:
            row = conn.execute(_pg(ACQUIRE_SQL), params).fetchone()
            assert row is not None  # INSERT ... ON CONFLICT DO UPDATE RETURNING always returns
            return row

        epoch, next_offset = self._run(bump, retry=True)
        return PartitionLease(topic, partition, int(epoch), int(next_offset))

    def commit_segment(self, commit: SegmentCommit) -> list[SegmentMove]:
        check_commit(commit)
        seg_values = segment_values(commit.segment)
        segment_id = seg_values[0]
        now = time.time()
        key = (seg_values[1], commit.segment.partition)

        def write(conn: Conn) -> list[SegmentMove]:
            if not self._staging_ready:
                conn.execute(_CREATE_STAGING)
                self._staging_ready = True
            with conn.transaction():
                state = conn.execute(_pg(PARTITION_STATE_SQL) + " FOR UPDATE", key).fetchone()

                def already_committed() -> bool:
                    found = conn.execute(_pg(SEGMENT_EXISTS_SQL), (segment_id,)).fetchone()
                    return found is not None

                if commit_gate(commit, state, already_committed):
                    # The ORDER BY of 10k staged rows spills to a temporary file with the
                    # default work_mem (4 MB) on a busy server: sort them in memory.
                    conn.execute(_COMMIT_WORK_MEM)
                    row = conn.execute(_pg(INSERT_SEGMENT_SQL), seg_values).fetchone()
                    assert row is not None  # RETURNING of an INSERT
                    write_commit(_Tx(conn), int(row[0]), segment_id, commit)
                    conn.execute(_pg(ADVANCE_SQL), (commit.next_offset, now, *key))
                return to_moves(conn.execute(_pg(MOVES_INTO_SQL), (segment_id,)).fetchall())

        # No retry: whether a lost COMMIT landed is unknown here; the caller retries the commit,
        # and a landed one is then recognised by its segment id.
        return self._run(write, retry=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()
