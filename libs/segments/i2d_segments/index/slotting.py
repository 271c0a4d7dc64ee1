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
from i2d_segments.index.progress import MigrationProgress
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


class _Slots:
    """Slots given in key order: a bucket's identities come together, and take its slots in
    turn."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.bucket: int | None = None
        self.used = 0

    def take(self, identity: Identity) -> int:
        if identity.bucket != self.bucket:
            self.bucket, self.used = identity.bucket, 0
        elif self.used + 1 >= SLOTS:
            raise ValueError(f"index migration 8: {self.what} bucket {self.bucket} is full")
        else:
            self.used += 1
        return identity.bucket + self.used


def _shared_item_buckets(db: MigrationDb, low: Any) -> dict[Identity, int]:
    """The slots of located items whose bucket holds more than one (all others: the first)."""
    shared: dict[Identity, int] = {}
    slots, after = _Slots("item"), low
    while True:
        batch = db.fetch(_LOCATED, (after, BATCH))
        if not batch:
            return shared
        after = batch[-1][0]
        for (key,) in batch:
            item = identity_of(db.legacy_unkey(key))
            slot = slots.take(item)
            if slot != item.bucket:  # only the shared ones are kept
                shared[item] = slot


def slot_index(db: MigrationDb) -> None:
    """Fill the new sample_index from sample_index_0007, then drop it."""
    carrier = {v: k for k, v in outcome_ids(db, {CARRIER}).items()}[CARRIER]
    low = db.legacy_key(b"\x00" * 16)
    shared = _shared_item_buckets(db, low)
    total = int(db.fetch(f"SELECT COUNT(*) FROM {_OLD}")[0][0])
    progress = MigrationProgress(log, SLOTS_VERSION, "rows", total, BACKFILL_LOG_SECONDS)
    log.info("index migration %d: giving %d rows their slots", SLOTS_VERSION, progress.total)
    carriers: dict[Identity, tuple[int, int, int | None, int | None]] = {}
    after, samples = low, _Slots("sample")
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
            hashes = pack_hashes(
                int(url_h) >> URL_SHIFT, sample.check, 0 if item is None else item.check
            )
            row = IndexRow(hashes, samples.take(sample), item_slot, seg, outcome, None, None)
            if length is not None:
                assert item is not None and item_slot is not None and item_seg is not None
                if item_seg == seg:
                    row.data_block, row.data_length = block, length
                else:  # the bytes are in an earlier segment than the row
                    carriers[item] = (item_slot, int(item_seg), block, length)
            rows.append(row)
        db.insert_rows(rows)
        progress.add(len(batch))
    ordered = sorted(carriers.items())
    for start in range(0, len(ordered), BATCH):
        part = ordered[start : start + BATCH]
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
