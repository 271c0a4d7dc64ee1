"""Migration 0008: 0007's rows (16-byte keys, a 64-bit url hash, byte offsets, an item's
location on a row of any segment) rewritten as today's (keys.py, commit.py), in the migration's
transaction.

Nothing is read but the old rows: 0007's keys are the first 16 bytes of the same hashes the
identities are cut from (keys.identity_of), and its url hash's high 32 bits are today's. Rows are
read in the order of their old key, so the rows of one sample bucket come together and take its
slots in turn; a first pass over the located items does the same for the few item buckets two
items share. A location kept on a row of another segment than the row's (a sample that moved
after storing its item) goes to a carrier row, as a commit does now. A progress line (rows done
of the total, rate) is logged every few seconds on a large index, as 0007 did.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from i2d_segments.index.commit import (
    CARRIER,
    IndexRow,
    carrier_row,
    data_block,
    insert_or_find,
    outcome_ids,
)
from i2d_segments.index.compact import MigrationDb
from i2d_segments.index.keys import (
    SLOTS,
    URL_SHIFT,
    Identity,
    carrier_key,
    identity_of,
    pack_hashes,
)
from i2d_segments.index.totals import BACKFILL_LOG_SECONDS

log = logging.getLogger(__name__)

SLOTS_VERSION = 8
BATCH = 20_000

_OLD = "sample_index_0007"
_LOCATED = (
    f"SELECT item_key FROM {_OLD} WHERE data_length IS NOT NULL AND item_key > ? "
    "ORDER BY item_key LIMIT ?"
)
_ROWS = (
    f"SELECT url_hash, data_offset, sample_key, item_key, seg, outcome, item_seg, data_length "
    f"FROM {_OLD} WHERE sample_key > ? ORDER BY sample_key LIMIT ?"
)


class _Progress:
    def __init__(self, total: int) -> None:
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
            "index migration %d: rows: %d of %d (%.0f rows/s, %.0f s)",
            SLOTS_VERSION,
            self.done,
            self.total,
            self.done / seconds,
            seconds,
        )


def _shared_item_buckets(db: MigrationDb, low: Any) -> dict[Identity, int]:
    """The slots of located items whose bucket holds more than one (all others: the first)."""
    slots: dict[Identity, int] = {}
    after, bucket, here = low, None, 0
    while True:
        batch = db.fetch(_LOCATED, (after, BATCH))
        if not batch:
            return slots
        after = batch[-1][0]
        for (key,) in batch:
            item = identity_of(db.legacy_unkey(key))
            if item.bucket != bucket:
                bucket, here = item.bucket, 0
            elif here + 1 >= SLOTS:
                raise ValueError(f"index migration 8: item bucket {bucket} is full")
            else:
                here += 1
                slots[item] = item.bucket + here
        # Only the shared ones are kept: a bucket's first item takes its first slot.


def slot_index(db: MigrationDb) -> None:
    """Fill the new sample_index from sample_index_0007, then drop it."""
    carrier = {v: k for k, v in outcome_ids(db, {CARRIER}).items()}[CARRIER]
    low = db.legacy_key(b"\x00" * 16)
    shared = _shared_item_buckets(db, low)
    progress = _Progress(int(db.fetch(f"SELECT COUNT(*) FROM {_OLD}")[0][0]))
    log.info("index migration %d: giving %d rows their slots", SLOTS_VERSION, progress.total)
    carriers: dict[Identity, tuple[int, int, int | None, int | None]] = {}
    after, bucket, used = low, None, 0
    while True:
        batch = db.fetch(_ROWS, (after, BATCH))
        if not batch:
            break
        after = batch[-1][2]
        rows: list[IndexRow] = []
        for url_h, offset, key, item_key, seg, outcome, item_seg, length in batch:
            item = None if item_key is None else identity_of(db.legacy_unkey(item_key))
            item_slot = None if item is None else shared.get(item, item.bucket)
            block = None if offset is None else data_block(int(offset))
            if outcome == carrier:
                assert item is not None and item_slot is not None and item_seg is not None
                carriers[item] = (item_slot, int(item_seg), block, length)
                continue
            sample = identity_of(db.legacy_unkey(key))
            if sample.bucket != bucket:
                bucket, used = sample.bucket, 0
            elif used + 1 >= SLOTS:
                raise ValueError(f"index migration 8: sample bucket {bucket} is full")
            else:
                used += 1
            hashes = pack_hashes(
                int(url_h) >> URL_SHIFT, sample.check, 0 if item is None else item.check
            )
            row = IndexRow(hashes, sample.bucket + used, item_slot, seg, outcome, None, None)
            if length is not None:
                assert item is not None and item_slot is not None and item_seg is not None
                if item_seg == seg:
                    row.data_block, row.data_length = block, length
                else:  # the bytes are in an earlier segment than the row
                    carriers[item] = (item_slot, int(item_seg), block, length)
            rows.append(row)
        db.insert_rows(rows)
        progress.add(len(batch))
    for start in range(0, len(carriers), BATCH):
        part = sorted(carriers.items())[start : start + BATCH]
        makers = {
            carrier_key(item): carrier_row(item, slot, seg, carrier, block, length)
            for item, (slot, seg, block, length) in part
        }
        insert_or_find(db, makers)
    progress.log()
    db.execute(f"DROP TABLE {_OLD}")
    log.info(
        "index migration %d: %d rows (%d carriers) in %.1f s",
        SLOTS_VERSION,
        progress.done,
        len(carriers),
        time.monotonic() - progress.started,
    )
