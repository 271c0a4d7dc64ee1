"""Totals kept with the rows: what every figure of `status`, the dashboard and the REST API reads.

Counting sample rows at read time costs a scan of every row (at 5 M rows: 0.2-0.9 s per query,
run again at each refresh). Instead each segment's commit writes, in its own transaction
(migration 0006):

- `segment_counts(segment_id, status, error_key, error, samples)`: the rows the segment holds,
  by outcome. Written from the commit's own rows (those it inserted and those it took from
  older segments; a row delivered again with the same outcome stays where it was and is not
  counted here), and lowered when a later commit takes rows away.
- `outcome_totals(status, error_key, error, samples)`: the same, dataset-wide.
- `dataset_totals` (one row): segments, items, sample rows, bytes, first and last created_at.

`error_key` is '' for a row without an error and a hash of the error otherwise, so a key of any
length fits a b-tree entry and NULL has its own key in both engines.

Moves ("latest outcome wins", see index/commit.py): the commit reads the rows of its sample
keys before writing them (on PostgreSQL `FOR UPDATE`, and a key another partition inserted
meanwhile is read again the same way), so it knows the segment and outcome each moved row had,
even when two partitions commit the same row at once: the second sees the first's outcome and
subtracts exactly that one. It subtracts the moved rows' previous outcomes from their old
segments' counts and adds the difference to the dataset-wide totals. Every statement touching a
shared row (an older segment's counts, an outcome total, `dataset_totals`) runs in one order
(old segments' counts sorted, then the outcome totals sorted, then `dataset_totals`), after the
sample rows are written, so two commits queue on those rows instead of deadlocking; they are
locked only from that point to the commit's end.

`segments.sample_count` stays what the segment committed (its manifest: segments never change
once committed); the rows it holds now are its `segment_counts`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)

# The migration that created the totals tables: a reader that does not migrate (status) over an
# older index counts the rows instead.
TOTALS_VERSION = 6

# Seconds between two progress lines of the backfill of a large index.
BACKFILL_LOG_SECONDS = 5.0
# Sample rows counted per query of the backfill (whole segments, so at least one segment).
BACKFILL_ROWS_PER_QUERY = 200_000


class Db(Protocol):
    """One transaction of either engine, with `?` placeholders."""

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


def error_key(error: str | None) -> str:
    """The key of an error message in the totals: '' for none, else a 128-bit hash of it."""
    if error is None:
        return ""
    return hashlib.sha256(error.encode("utf-8", "surrogatepass")).hexdigest()[:32]


# -- reads --------------------------------------------------------------------------------------

DATASET_TOTALS_SQL = (
    "SELECT segments, items, samples, bytes, first_created_at, last_created_at "
    "FROM dataset_totals WHERE id = 1"
)
STATUS_COUNTS_SQL = (
    "SELECT status, SUM(samples) FROM outcome_totals GROUP BY status HAVING SUM(samples) <> 0"
)
ERROR_COUNTS_SQL = (
    "SELECT error, SUM(samples) FROM outcome_totals WHERE status <> ? AND error IS NOT NULL "
    "GROUP BY error HAVING SUM(samples) <> 0"
)
HELD_COUNT_SQL = "SELECT COALESCE(SUM(samples), 0) FROM segment_counts WHERE segment_id = ?"

# -- the commit's writes ------------------------------------------------------------------------

INSERT_MOVE_SQL = (
    "INSERT INTO segment_moves (segment_id, from_segment_id, samples) VALUES (?, ?, ?)"
)
INSERT_SEGMENT_COUNT_SQL = (
    "INSERT INTO segment_counts (segment_id, status, error_key, error, samples) "
    "VALUES (?, ?, ?, ?, ?)"
)
ADD_SEGMENT_COUNT_SQL = (
    f"{INSERT_SEGMENT_COUNT_SQL} ON CONFLICT (segment_id, status, error_key) "
    "DO UPDATE SET samples = segment_counts.samples + excluded.samples"
)
ADD_OUTCOME_SQL = (
    "INSERT INTO outcome_totals (status, error_key, error, samples) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (status, error_key) DO UPDATE SET samples = outcome_totals.samples + "
    "excluded.samples"
)
# CASE rather than LEAST/MIN(a, b): the same text in both engines.
ADD_SEGMENT_SQL = (
    "UPDATE dataset_totals SET segments = segments + 1, items = items + ?, "
    "samples = samples + ?, bytes = bytes + ?, "
    "first_created_at = CASE WHEN first_created_at IS NULL OR first_created_at > ? THEN ? "
    "ELSE first_created_at END, "
    "last_created_at = CASE WHEN last_created_at IS NULL OR last_created_at < ? THEN ? "
    "ELSE last_created_at END "
    "WHERE id = 1"
)


Count = tuple[str, str | None, int]  # status, error, rows
Moved = tuple[str, str, str | None, int]  # the segment left, its status and error there, rows


def record_commit(
    db: Db,
    segment_id: str,
    held: Sequence[Count],
    moved: Sequence[Moved],
    item_count: int,
    size: int,
    created_at: float,
) -> None:
    """In the commit's transaction, after its sample rows: record the moves and the totals.
    `held`: the rows the segment holds (inserted or taken), by outcome; `moved`: those it took,
    by the segment and outcome they had."""
    from_segments: dict[str, int] = {}
    for previous_segment, _, _, n in moved:
        from_segments[previous_segment] = from_segments.get(previous_segment, 0) + int(n)
    db.execute_many(INSERT_MOVE_SQL, [(segment_id, s, n) for s, n in sorted(from_segments.items())])

    outcomes: dict[tuple[str, str], list[Any]] = {}  # (status, error_key) -> [error, delta]
    own: list[tuple[Any, ...]] = []
    for status, error, n in held:
        key = (status, error_key(error))
        own.append((segment_id, status, key[1], error, int(n)))
        outcomes.setdefault(key, [error, 0])[1] += int(n)
    db.execute_many(INSERT_SEGMENT_COUNT_SQL, sorted(own, key=_count_order))

    lost: list[tuple[Any, ...]] = []
    for previous_segment, status, error, n in moved:
        key = (status, error_key(error))
        lost.append((previous_segment, status, key[1], error, -int(n)))
        outcomes.setdefault(key, [error, 0])[1] -= int(n)
    db.execute_many(ADD_SEGMENT_COUNT_SQL, sorted(lost, key=_count_order))

    db.execute_many(
        ADD_OUTCOME_SQL,
        [(s, k, e, n) for (s, k), (e, n) in sorted(outcomes.items(), key=lambda kv: kv[0]) if n],
    )
    new_rows = sum(int(r[2]) for r in held) - sum(int(r[3]) for r in moved)
    db.execute(
        ADD_SEGMENT_SQL,
        (item_count, new_rows, size, created_at, created_at, created_at, created_at),
    )


def _count_order(row: Sequence[Any]) -> tuple[str, str, str]:
    return (row[0], row[1], row[2])


# -- migration 0006: totals of an index written before ------------------------------------------

_BACKFILL_COUNTS = (
    "SELECT segment_id, status, error, COUNT(*) FROM samples WHERE segment_id IN ({}) "
    "GROUP BY segment_id, status, error"
)


def backfill_totals(db: Db) -> None:
    """Fill the totals from the rows already there (migration 0006, in its transaction): one
    pass over the sample rows, a segment's rows at a time, logging progress on a large index."""
    started = time.monotonic()
    segments = db.fetch("SELECT segment_id, sample_count FROM segments ORDER BY segment_id")
    expected = sum(int(r[1]) for r in segments)
    large = expected >= BACKFILL_ROWS_PER_QUERY
    if large:
        log.info(
            "index migration %d: counting the sample rows of %d segments (about %d rows) "
            "into per-segment and dataset totals",
            TOTALS_VERSION,
            len(segments),
            expected,
        )
    counted = done = 0
    last_log = started
    batch: list[str] = []
    batch_rows = 0
    for n, (segment_id, sample_count) in enumerate(segments, start=1):
        batch.append(segment_id)
        batch_rows += int(sample_count)
        if batch_rows < BACKFILL_ROWS_PER_QUERY and n < len(segments) and len(batch) < 500:
            continue
        rows = db.fetch(_BACKFILL_COUNTS.format(", ".join("?" * len(batch))), batch)
        db.execute_many(
            INSERT_SEGMENT_COUNT_SQL,
            sorted(((s, st, error_key(e), e, int(c)) for s, st, e, c in rows), key=_count_order),
        )
        counted += sum(int(r[3]) for r in rows)
        done = n
        batch, batch_rows = [], 0
        now = time.monotonic()
        if large and now - last_log >= BACKFILL_LOG_SECONDS:
            last_log = now
            log.info(
                "index migration %d: %d of %d segments, %d sample rows counted (%.0f s)",
                TOTALS_VERSION,
                done,
                len(segments),
                counted,
                now - started,
            )
    db.execute(
        "INSERT INTO outcome_totals (status, error_key, error, samples) "
        "SELECT status, error_key, MIN(error), SUM(samples) FROM segment_counts "
        "GROUP BY status, error_key"
    )
    db.execute(
        "INSERT INTO dataset_totals (id, segments, items, samples, bytes, first_created_at, "
        "last_created_at) SELECT 1, COUNT(*), COALESCE(SUM(item_count), 0), ?, "
        "COALESCE(SUM(bytes), 0), MIN(created_at), MAX(created_at) FROM segments",
        (counted,),
    )
    if large:
        log.info(
            "index migration %d: %d sample rows of %d segments counted in %.1f s",
            TOTALS_VERSION,
            counted,
            len(segments),
            time.monotonic() - started,
        )
