"""Migration 0007: an index written before it (samples and items with their text columns) made
compact in place, in the migration's transaction.

Sample rows are read in sample_id order, a batch at a time, with their item's location, and
written as sample_index rows of 0007's format (16-byte keys, computed here: the first 16 bytes
of the hashes keys.py cuts identities from); the first success row of an item carries its
location, and an item no success row points at gets a carrier row. Then the old tables go, and
0008 (index/slotting.py) turns these rows into today's. A progress line
(rows done of the total, rate) is logged every few seconds on a large index, as 0006's backfill
does. What the old rows held beyond the index's columns (url, caption, attrs, item dims) is in
each segment's manifest already: the segments are the truth, the old columns were copies.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from i2d_segments.index.commit import CARRIER, CommitDb, outcome_ids
from i2d_segments.index.keys import item_digest
from i2d_segments.index.progress import MigrationProgress
from i2d_segments.index.rows import SUCCESS_STATUS, chunked
from i2d_segments.index.totals import BACKFILL_LOG_SECONDS

log = logging.getLogger(__name__)

COMPACT_VERSION = 7
# Rows read and written per statement.
COMPACT_BATCH = 20_000

_SAMPLES = (
    "SELECT s.sample_id, s.url, s.status, s.error, s.item_id, s.segment_id, i.segment_id, "
    "i.data_offset, i.data_length FROM samples s LEFT JOIN items i ON i.item_id = s.item_id "
    "WHERE s.sample_id > ? ORDER BY s.sample_id LIMIT ?"
)
_ITEMS = (
    "SELECT item_id, segment_id, data_offset, data_length FROM items WHERE item_id > ? "
    "ORDER BY item_id LIMIT ?"
)


# 0007's sample_index row, as 0007 wrote it (before 0008 gave rows slots).
LEGACY_COLUMNS = (
    "url_hash",
    "data_offset",
    "sample_key",
    "item_key",
    "seg",
    "outcome",
    "item_seg",
    "data_length",
)
_LEGACY_INSERT = (
    f"INSERT INTO sample_index ({', '.join(LEGACY_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(LEGACY_COLUMNS))})"
)
_LEGACY_LOCATED = "SELECT item_key FROM sample_index WHERE data_length IS NOT NULL AND item_key IN "
LegacyRow = tuple[int, int | None, bytes, bytes | None, int, int, int | None, int | None]


class MigrationDb(CommitDb, Protocol):
    """A migration's transaction: a commit's, and the engine's binding of 0007's 16-byte keys
    (SQLite: bytes; PostgreSQL: uuid)."""

    def legacy_key(self, key: bytes) -> Any: ...

    def legacy_unkey(self, value: Any) -> bytes: ...


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def legacy_sample_key(sample_id: str) -> bytes:
    return _sha256(sample_id)[:16]


def legacy_item_key(item_id: str) -> bytes:
    return item_digest(item_id)[:16]


def legacy_url_hash(url: str) -> int:
    return int.from_bytes(_sha256(url)[:8], "big", signed=True)


def legacy_carrier_key(item: bytes) -> bytes:
    return hashlib.sha256(b"\x00item-location\x00" + item).digest()[:16]


def _located(db: MigrationDb, keys: Sequence[bytes]) -> set[bytes]:
    out: set[bytes] = set()
    for batch in chunked(keys, 1000):
        sql = _LEGACY_LOCATED + "(" + ", ".join("?" * len(batch)) + ")"
        out |= {db.legacy_unkey(r[0]) for r in db.fetch(sql, [db.legacy_key(k) for k in batch])}
    return out


def _insert(db: MigrationDb, rows: Sequence[LegacyRow]) -> None:
    k = db.legacy_key
    db.execute_many(
        _LEGACY_INSERT,
        [(u, o, k(s), i if i is None else k(i), g, c, ig, n) for u, o, s, i, g, c, ig, n in rows],
    )


def compact_index(db: MigrationDb) -> None:
    """Fill sample_index from samples and items, then drop them."""
    segs = {str(sid): int(seg) for sid, seg in db.fetch("SELECT segment_id, seg FROM segments")}
    wanted = {(str(s), e) for s, e in db.fetch("SELECT DISTINCT status, error FROM samples")}
    ids = {v: k for k, v in outcome_ids(db, wanted | {CARRIER}).items()}
    total = int(db.fetch("SELECT COUNT(*) FROM samples")[0][0])
    samples = MigrationProgress(log, COMPACT_VERSION, "sample rows", total, BACKFILL_LOG_SECONDS)
    log.info(
        "index migration %d: making the index compact: %d sample rows",
        COMPACT_VERSION,
        samples.total,
    )
    after = ""
    while True:
        batch = db.fetch(_SAMPLES, (after, COMPACT_BATCH))
        if not batch:
            break
        after = str(batch[-1][0])
        located = _located(
            db,
            sorted({legacy_item_key(r[4]) for r in batch if r[4] is not None and r[6] is not None}),
        )
        rows: list[LegacyRow] = []
        for sid, url, status, error, item_id, segment_id, item_seg, offset, length in batch:
            item = legacy_item_key(item_id) if status == SUCCESS_STATUS and item_id else None
            url_h, sample, seg, outcome = (
                legacy_url_hash(url),
                legacy_sample_key(sid),
                segs[segment_id],
                ids[(status, error)],
            )
            if item is not None and item_seg is not None and item not in located:
                located.add(item)
                rows.append((url_h, offset, sample, item, seg, outcome, segs[item_seg], length))
            else:
                rows.append((url_h, None, sample, item, seg, outcome, None, None))
        _insert(db, rows)
        samples.add(len(batch))
    samples.log()
    items = MigrationProgress(
        log, COMPACT_VERSION, "items without a success row", 0, BACKFILL_LOG_SECONDS
    )
    after = ""
    while True:
        batch = db.fetch(_ITEMS, (after, COMPACT_BATCH))
        if not batch:
            break
        after = str(batch[-1][0])
        keys = {legacy_item_key(r[0]): r for r in batch}
        located = _located(db, sorted(keys))
        carriers: list[LegacyRow] = [
            (0, offset, legacy_carrier_key(k), k, segs[sid], ids[CARRIER], segs[sid], length)
            for k, (_, sid, offset, length) in sorted(keys.items())
            if k not in located
        ]
        _insert(db, carriers)
        items.add(len(carriers))
    db.execute("DROP TABLE samples")
    db.execute("DROP TABLE items")
    log.info(
        "index migration %d: %d sample rows and %d carrier rows written in %.1f s",
        COMPACT_VERSION,
        samples.done,
        items.done,
        time.monotonic() - samples.started,
    )
