"""Migration 0007: an index written before it (samples and items with their text columns) made
compact in place, in the migration's transaction.

Sample rows are read in sample_id order, a batch at a time, with their item's location, and
written as sample_index rows (keys computed here, with the same functions the commits use,
index/keys.py); the first success row of an item carries its location, and an item no success
row points at gets a carrier row (index/commit.py). Then the old tables go. A progress line
(rows done of the total, rate) is logged every few seconds on a large index, as 0006's backfill
does. What the old rows held beyond the index's columns (url, caption, attrs, item dims) is in
each segment's manifest already: the segments are the truth, the old columns were copies.
"""

from __future__ import annotations

import logging
import time

from i2d_segments.index.commit import CARRIER, CommitDb, IndexRow, outcome_ids
from i2d_segments.index.keys import carrier_key, item_key, sample_key, url_hash
from i2d_segments.index.rows import SUCCESS_STATUS
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


class _Progress:
    def __init__(self, what: str, total: int) -> None:
        self.what = what
        self.total = total
        self.done = 0
        self.started = self.last = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= BACKFILL_LOG_SECONDS:
            self.last = now
            self.log()

    def log(self) -> None:
        seconds = max(time.monotonic() - self.started, 1e-9)
        log.info(
            "index migration %d: %s: %d of %d (%.0f rows/s, %.0f s)",
            COMPACT_VERSION,
            self.what,
            self.done,
            self.total,
            self.done / seconds,
            seconds,
        )


def compact_index(db: CommitDb) -> None:
    """Fill sample_index from samples and items, then drop them."""
    segs = {str(sid): int(seg) for sid, seg in db.fetch("SELECT segment_id, seg FROM segments")}
    wanted = {(str(s), e) for s, e in db.fetch("SELECT DISTINCT status, error FROM samples")}
    ids = {v: k for k, v in outcome_ids(db, wanted | {CARRIER}).items()}
    samples = _Progress("sample rows", int(db.fetch("SELECT COUNT(*) FROM samples")[0][0]))
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
        located = db.located_keys(
            sorted({item_key(r[4]) for r in batch if r[4] is not None and r[6] is not None})
        )
        rows: list[IndexRow] = []
        for sid, url, status, error, item_id, segment_id, item_seg, offset, length in batch:
            item = item_key(item_id) if status == SUCCESS_STATUS and item_id else None
            row = IndexRow(
                url_hash(url),
                None,
                sample_key(sid),
                item,
                segs[segment_id],
                ids[(status, error)],
                None,
                None,
            )
            if item is not None and item_seg is not None and item not in located:
                located.add(item)
                row.item_seg, row.data_offset, row.data_length = segs[item_seg], offset, length
            rows.append(row)
        db.insert_rows(rows)
        samples.add(len(batch))
    samples.log()
    items = _Progress("items without a success row", 0)
    after = ""
    while True:
        batch = db.fetch(_ITEMS, (after, COMPACT_BATCH))
        if not batch:
            break
        after = str(batch[-1][0])
        keys = {item_key(r[0]): r for r in batch}
        located = db.located_keys(sorted(keys))
        carriers = [
            IndexRow(
                0,
                offset,
                carrier_key(k),
                k,
                segs[sid],
                ids[CARRIER],
                segs[sid],
                length,
            )
            for k, (_, sid, offset, length) in sorted(keys.items())
            if k not in located
        ]
        db.insert_rows(carriers)
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
