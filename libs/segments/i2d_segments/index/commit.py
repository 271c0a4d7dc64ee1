"""A segment's sample rows, written once for both engines: what `commit_segment` does after
its gate (sqlbase.commit_gate) and the segment row.

Rows and slots (keys.py): a sample's row sits at one slot of its identity's bucket, found by
the check its `hashes` carry. A new identity takes the first slot of its bucket no row holds;
a slot already held by another identity (61 bits in common: a handful of pairs in billions of
rows) sends it to the next one. Rows are never deleted, so the rows of a bucket fill its slots
from the first.

"Latest outcome wins": a row delivered again with the same outcome (same status, error, item
and url) is a redelivery (a fetcher that died before committing its `urls` offsets fetches its
rows again) and stays in the segment that first recorded it; with another outcome it moves to
the committing segment, which then holds its manifest's line for it. The commit learns the rows
of its buckets (PostgreSQL: `FOR UPDATE`), so it knows the segment and outcome each moved row
leaves, for `segment_moves` and the totals (totals.py). SQLite reads them first; PostgreSQL
inserts first and reads only the buckets its insert was refused in (`FOR UPDATE`, so after the
commit that wrote them, even one of another partition running at the same time).

Items: an item has a slot of its own bucket among the rows that locate items. The row that
stored an item first carries its location (data_block, data_length, in its own segment `seg`)
and the item's check; every success row points at its item's slot (`item_key`). A row that
moves to a later segment, or that points at another item now, hands the location to a carrier
row keyed by `keys.carrier_key` (a row then, never before): a location stays in the segment
whose tar holds the bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from i2d_segments.index.base import IndexAccessError, ItemRow, SampleRow, SegmentCommit
from i2d_segments.index.keys import (
    SLOTS,
    Identity,
    bucket_of,
    carrier_key,
    item_check_of,
    item_key,
    pack_hashes,
    sample_check_of,
    sample_key,
    url_hash,
    walk_slots,
)
from i2d_segments.index.rows import SUCCESS_STATUS, clean_opt, clean_text
from i2d_segments.index.totals import Count, Db, Moved, error_key, record_commit

# Tar members start on 512-byte blocks: a data offset is stored as its block number (4 bytes).
TAR_BLOCK = 512

# sample_index's columns, in table order (widest first: no alignment padding on PostgreSQL).
INDEX_COLUMNS = (
    "hashes",
    "sample_key",
    "item_key",
    "seg",
    "outcome",
    "data_block",
    "data_length",
)
# The outcome of a carrier row: no sample's (statuses are never empty), counted in no total.
CARRIER_STATUS = ""
CARRIER = (CARRIER_STATUS, None)
_OUTCOMES_SQL = "SELECT outcome, status, error FROM outcomes"
_ADD_OUTCOME_SQL = (
    "INSERT INTO outcomes (status, error_key, error) VALUES (?, ?, ?) "
    "ON CONFLICT (status, error_key) DO NOTHING"
)
_SEGMENT_IDS_SQL = "SELECT seg, segment_id FROM segments WHERE seg IN ({})"
INSERT_ROW_SQL = (
    f"INSERT INTO sample_index ({', '.join(INDEX_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(INDEX_COLUMNS))})"
)
UPDATED_COLUMNS = tuple(c for c in INDEX_COLUMNS if c != "sample_key")


# The engines' CommitDb statements ({} is the engine's "slot in these" condition).
ROWS_AT_SQL = f"SELECT {', '.join(INDEX_COLUMNS)} FROM sample_index WHERE {{}}"
LOCATED_AT_SQL = f"{ROWS_AT_SQL} AND data_length IS NOT NULL"


def data_block(offset: int) -> int:
    block, rest = divmod(offset, TAR_BLOCK)
    if rest:
        raise ValueError(f"data offset {offset} is not on a {TAR_BLOCK}-byte tar block")
    return block


@dataclass(slots=True)
class IndexRow:
    """One sample_index row (INDEX_COLUMNS)."""

    hashes: int  # keys.pack_hashes(url, sample check, item check)
    sample_key: int  # the row's slot
    item_key: int | None  # the slot of its item (a success)
    seg: int
    outcome: int
    data_block: int | None  # set with data_length on the row that locates its item
    data_length: int | None

    @property
    def located(self) -> bool:
        return self.data_length is not None

    @property
    def identity(self) -> Identity:
        return Identity.at(self.sample_key, sample_check_of(self.hashes))

    @property
    def item(self) -> Identity | None:
        if self.item_key is None:
            return None
        return Identity.at(self.item_key, item_check_of(self.hashes))

    def values(self) -> tuple[Any, ...]:
        return (
            self.hashes,
            self.sample_key,
            self.item_key,
            self.seg,
            self.outcome,
            self.data_block,
            self.data_length,
        )


class CommitDb(Db, Protocol):
    """The engine's side of a commit, in its transaction."""

    # Read the rows of the commit's identities before inserting (SQLite: cheap, and its plain
    # INSERT must not meet an existing slot). PostgreSQL inserts first and reads only where
    # the insert was refused: one index probe per new row instead of two.
    reads_first: bool

    def rows_at(self, slots: Sequence[int]) -> list[IndexRow]:
        """The rows at these sample slots (PostgreSQL: locked, in slot order)."""
        ...

    def located_at(self, slots: Sequence[int]) -> list[IndexRow]:
        """The rows that locate an item at these item slots."""
        ...

    def insert_rows(self, rows: Sequence[IndexRow]) -> set[int]:
        """Insert rows whose slot is free; returns the slots inserted (a slot taken meanwhile
        by another transaction is left out)."""
        ...

    def update_rows(self, rows: Sequence[IndexRow]) -> None:
        """Overwrite the rows at these slots."""
        ...


@dataclass(frozen=True, slots=True)
class _Incoming:
    url: int
    item: Identity | None  # the item of a success
    outcome: int
    status: str
    error: str | None


@dataclass(frozen=True, slots=True)
class CommitCounts:
    """What the commit did, for the totals (totals.record_commit)."""

    held: list[Count]
    moved: list[Moved]


def outcome_ids(db: Db, wanted: set[tuple[str, str | None]]) -> dict[int, tuple[str, str | None]]:
    """{outcome: (status, error)} with every `wanted` outcome in it (added when missing)."""
    known = {int(o): (str(s), e) for o, s, e in db.fetch(_OUTCOMES_SQL)}
    missing = wanted - set(known.values())
    if missing:
        db.execute_many(
            _ADD_OUTCOME_SQL, [(s, error_key(e), e) for s, e in sorted(missing, key=_order)]
        )
        known = {int(o): (str(s), e) for o, s, e in db.fetch(_OUTCOMES_SQL)}
    return known


def _order(outcome: tuple[str, str | None]) -> tuple[str, str]:
    return outcome[0], outcome[1] or ""


def free_slot(identity: Identity, taken: set[int]) -> int:
    for slot in range(identity.bucket, identity.bucket + SLOTS):
        if slot not in taken:
            return slot
    raise IndexAccessError(
        f"index bucket {identity.bucket} has no free slot: {SLOTS} identities share its 61 bits"
    )


def item_slots(db: CommitDb, wanted: Iterable[Identity]) -> tuple[dict[Identity, int], set[int]]:
    """Each wanted item's slot, and the set of those that locate an item already: the slot of
    its location, else the first free slot of its bucket (the one it takes when stored)."""
    wanted = sorted(set(wanted))
    taken: dict[int, set[int]] = {}
    slots: dict[Identity, int] = {}
    for row in walk_slots(db.located_at, wanted, _item_of):
        assert row.item_key is not None and row.item is not None
        taken.setdefault(row.item.bucket, set()).add(row.item_key)
        slots[row.item] = row.item_key
    located = {slots[i] for i in wanted if i in slots}
    for identity in wanted:
        if identity not in slots:
            bucket = taken.setdefault(identity.bucket, set())
            slots[identity] = free_slot(identity, bucket)
            bucket.add(slots[identity])
    return slots, located


def _item_of(row: IndexRow) -> Identity:
    assert row.item is not None  # a row that locates an item
    return row.item


def _identity_of(row: IndexRow) -> Identity:
    return row.identity


def insert_or_find(
    db: CommitDb,
    make: dict[Identity, Callable[[int], IndexRow]],
    *,
    refused: Callable[[IndexRow], None] = lambda row: None,
) -> tuple[list[IndexRow], dict[Identity, IndexRow]]:
    """Insert a row for each identity of `make` (built by `make[identity](slot)`) that has none;
    returns the rows inserted and the rows found (identity -> row). `refused` hears of each row
    built but not inserted (its slot was taken)."""
    taken: dict[int, set[int]] = {}
    found: dict[Identity, IndexRow] = {}

    def learn(rows: list[IndexRow]) -> None:
        for row in rows:
            taken.setdefault(bucket_of(row.sample_key), set()).add(row.sample_key)
            if row.identity in make:
                found[row.identity] = row

    pending = sorted(make)
    known: set[int] = set()  # buckets read up to their first free slot, or to the identity
    if db.reads_first:
        known = {i.bucket for i in pending}
        learn(walk_slots(db.rows_at, pending, _identity_of))
    inserted: list[IndexRow] = []
    # Each round inserts rows, or learns the rows of their buckets.
    for _ in range(SLOTS + 2):
        fresh: list[IndexRow] = []
        unsure: list[Identity] = []
        blind: set[int] = set()
        for identity in pending:
            if identity in found:
                continue
            if identity.bucket in known:
                bucket = taken.setdefault(identity.bucket, set())
                slot = free_slot(identity, bucket)
                bucket.add(slot)
                fresh.append(make[identity](slot))
            elif identity.bucket not in blind:
                # Unread, only a bucket's first slot may be tried: rows fill a bucket from it,
                # so the identity has no row elsewhere if that slot is free.
                blind.add(identity.bucket)
                fresh.append(make[identity](identity.bucket))
            else:
                unsure.append(identity)
        done = db.insert_rows(fresh) if fresh else set()
        inserted += [r for r in fresh if r.sample_key in done]
        failed = [r for r in fresh if r.sample_key not in done]
        if not failed and not unsure:
            return inserted, found
        for row in failed:
            refused(row)
            # Taken by an existing row (this identity's own, or another's), maybe meanwhile.
            taken.get(bucket_of(row.sample_key), set()).discard(row.sample_key)
        pending = sorted({r.identity for r in failed} | set(unsure))
        learn(walk_slots(db.rows_at, pending, _identity_of))
        known |= {i.bucket for i in pending}
    raise IndexAccessError("index rows could not be placed: their slots kept being taken")


def carrier_row(
    item: Identity, item_slot: int, seg: int, outcome: int, block: int | None, length: int | None
) -> Callable[[int], IndexRow]:
    """The carrier of `item`'s location (in `seg`), at the slot it is given."""
    hashes = pack_hashes(0, carrier_key(item).check, item.check)

    def make(slot: int) -> IndexRow:
        return IndexRow(hashes, slot, item_slot, seg, outcome, block, length)

    return make


def write_commit(db: CommitDb, seg: int, segment_id: str, commit: SegmentCommit) -> None:
    """After the segment row `seg`: its sample rows and item locations, then its moves and the
    totals (totals.record_commit)."""
    counts = write_samples(db, seg, commit.items, commit.samples)
    s = commit.segment
    record_commit(db, segment_id, counts.held, counts.moved, s.item_count, s.bytes, s.created_at)


def write_samples(
    db: CommitDb,
    seg: int,
    items: Sequence[ItemRow],
    samples: Sequence[SampleRow],
) -> CommitCounts:
    """Write a commit's sample rows and item locations; returns its held and moved counts."""
    by_outcome = {(clean_text(s.status), clean_opt(s.error)) for s in samples}
    outcomes = outcome_ids(db, by_outcome | {CARRIER})
    ids = {v: k for k, v in outcomes.items()}
    incoming: dict[Identity, _Incoming] = {}
    for s in samples:  # the last row of a key wins, as in the manifest
        status, error = clean_text(s.status), clean_opt(s.error)
        item = item_key(s.item_id) if status == SUCCESS_STATUS and s.item_id else None
        incoming[sample_key(s.sample_id)] = _Incoming(
            url_hash(s.url), item, ids[(status, error)], status, error
        )
    stored: dict[Identity, tuple[int, int]] = {}
    for i in items:  # the first location of an id wins
        stored.setdefault(item_key(i.item_id), (data_block(i.data_offset), i.data_length))
    pointed = {inc.item for inc in incoming.values() if inc.item is not None}
    slots, located = item_slots(db, set(stored) | pointed)
    new_items = {i: loc for i, loc in stored.items() if slots[i] not in located}
    plan = _Plan(seg, ids[CARRIER], slots, new_items)

    inserted, existing = insert_or_find(
        db, {k: plan.maker(k, incoming[k]) for k in incoming}, refused=plan.unplace
    )
    for row in inserted:
        plan.hold(incoming[row.identity])
    updates: list[IndexRow] = []
    for k in sorted(existing):
        moved = plan.update(existing[k], incoming[k])
        if moved is not None:
            updates.append(moved)
    db.update_rows(updates)
    # After the updates: a location moves to its carrier only once its old row let it go.
    carriers = plan.carriers + plan.unplaced_items()
    _, found = insert_or_find(db, {carrier_key(item): make for item, make in carriers})
    if found:
        # A location is on one row at a time (sample_index_item_slot): a carrier of an item that has
        # one already would mean two.
        raise IndexAccessError(f"index: {len(found)} item locations have a carrier already")
    return plan.counts(db, outcomes)


class _Plan:
    """The commit's decisions, row by row."""

    def __init__(
        self,
        seg: int,
        carrier_outcome: int,
        slots: dict[Identity, int],
        new_items: dict[Identity, tuple[int, int]],
    ) -> None:
        self.seg = seg
        self.carrier_outcome = carrier_outcome
        self.slots = slots
        self.new_items = new_items  # items this commit stored that no row locates yet
        self.placed: set[Identity] = set()
        self.carriers: list[tuple[Identity, Callable[[int], IndexRow]]] = []
        self.held: dict[tuple[str, str | None], int] = {}
        self.moved: dict[tuple[int, int], int] = {}  # (seg left, outcome there) -> rows

    def _row(self, slot: int, key: Identity, inc: _Incoming) -> IndexRow:
        item_slot = None if inc.item is None else self.slots[inc.item]
        item_check = 0 if inc.item is None else inc.item.check
        row = IndexRow(
            pack_hashes(inc.url, key.check, item_check),
            slot,
            item_slot,
            self.seg,
            inc.outcome,
            None,
            None,
        )
        # The location of its item if this commit stored it and no row has it yet.
        item = inc.item
        if item is not None and item in self.new_items and item not in self.placed:
            self.placed.add(item)
            row.data_block, row.data_length = self.new_items[item]
        return row

    def maker(self, key: Identity, inc: _Incoming) -> Callable[[int], IndexRow]:
        """The new row of a sample, at the slot it is given."""
        return lambda slot: self._row(slot, key, inc)

    def unplace(self, row: IndexRow) -> None:
        if row.located and row.item is not None:
            self.placed.discard(row.item)

    def hold(self, inc: _Incoming) -> None:
        self.held[(inc.status, inc.error)] = self.held.get((inc.status, inc.error), 0) + 1

    def update(self, old: IndexRow, inc: _Incoming) -> IndexRow | None:
        row = self._row(old.sample_key, old.identity, inc)
        if (old.outcome, old.item_key, old.hashes) == (row.outcome, row.item_key, row.hashes):
            self.unplace(row)
            return None  # delivered again unchanged: stays where it is
        if old.located:
            # The bytes stay in the old segment's tar: so does their location.
            assert old.item is not None and old.item_key is not None
            self.carriers.append(
                (
                    old.item,
                    self._carrier(old.item, old.item_key, old.seg, old.data_block, old.data_length),
                )
            )
        self.hold(inc)
        move = (old.seg, old.outcome)
        self.moved[move] = self.moved.get(move, 0) + 1
        return row

    def _carrier(
        self, item: Identity, item_slot: int, seg: int, block: int | None, length: int | None
    ) -> Callable[[int], IndexRow]:
        return carrier_row(item, item_slot, seg, self.carrier_outcome, block, length)

    def unplaced_items(self) -> list[tuple[Identity, Callable[[int], IndexRow]]]:
        """Items this commit stored that no row of it carries (no success row points at them)."""
        return [
            (item, self._carrier(item, self.slots[item], self.seg, block, length))
            for item, (block, length) in sorted(self.new_items.items())
            if item not in self.placed
        ]

    def counts(self, db: Db, outcomes: dict[int, tuple[str, str | None]]) -> CommitCounts:
        if {outcome for _, outcome in self.moved} - outcomes.keys():
            # A row another partition's commit wrote after this one read the outcomes.
            outcomes = {int(o): (str(s), e) for o, s, e in db.fetch(_OUTCOMES_SQL)}
        segs = sorted({seg for seg, _ in self.moved})
        names: dict[int, str] = {}
        for start in range(0, len(segs), 500):
            batch = segs[start : start + 500]
            rows = db.fetch(_SEGMENT_IDS_SQL.format(", ".join("?" * len(batch))), batch)
            names.update({int(seg): str(sid) for seg, sid in rows})
        moved = [
            (names[seg], *outcomes[outcome], n) for (seg, outcome), n in sorted(self.moved.items())
        ]
        held = [(s, e, n) for (s, e), n in sorted(self.held.items(), key=lambda kv: _order(kv[0]))]
        return CommitCounts(held, moved)
