"""A segment's sample rows, written once for both engines: what `commit_segment` does after
its gate (sqlbase.commit_gate) and the segment row.

"Latest outcome wins": a row delivered again with the same outcome (same status, error, item
and url) is a redelivery (a fetcher that died before committing its `urls` offsets fetches its
rows again) and stays in the segment that first recorded it; with another outcome it moves to
the committing segment, which then holds its manifest's line for it. The commit reads the rows
of its keys first (PostgreSQL: `FOR UPDATE`), so it knows the segment and outcome each moved row
leaves, for `segment_moves` and the totals (totals.py). PostgreSQL inserts first and reads
only the keys its insert left out (`FOR UPDATE`, so after the commit that wrote them, even one
of another partition running at the same time), and handles them as existing rows.

Items: the row that stored an item first carries its location (item_seg, data_offset,
data_length); an item already located keeps its first location. If that row later points at
another item (its url served other bytes), the location moves to a carrier row keyed by
`keys.carrier_key` (rare: it costs a row then, never before).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from i2d_segments.index.base import ItemRow, SampleRow, SegmentCommit
from i2d_segments.index.keys import carrier_key, item_key, sample_key, url_hash
from i2d_segments.index.rows import SUCCESS_STATUS, clean_opt, clean_text
from i2d_segments.index.totals import Count, Db, Moved, error_key, record_commit

# sample_index's columns, in table order (widest first: no alignment padding on PostgreSQL).
INDEX_COLUMNS = (
    "url_hash",
    "data_offset",
    "sample_key",
    "item_key",
    "seg",
    "outcome",
    "item_seg",
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
# The engines' CommitDb statements ({} is the engine's "key in these" condition).
ROWS_BY_KEYS_SQL = f"SELECT {', '.join(INDEX_COLUMNS)} FROM sample_index WHERE {{}}"
LOCATED_KEYS_SQL = "SELECT item_key FROM sample_index WHERE data_length IS NOT NULL AND {}"
INSERT_ROW_SQL = (
    f"INSERT INTO sample_index ({', '.join(INDEX_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(INDEX_COLUMNS))})"
)
UPDATED_COLUMNS = tuple(c for c in INDEX_COLUMNS if c != "sample_key")


@dataclass(slots=True)
class IndexRow:
    """One sample_index row (INDEX_COLUMNS), keys as bytes."""

    url_hash: int
    data_offset: int | None
    sample_key: bytes
    item_key: bytes | None
    seg: int
    outcome: int
    item_seg: int | None
    data_length: int | None

    @property
    def located(self) -> bool:
        return self.data_length is not None

    def values(self) -> tuple[Any, ...]:
        return (
            self.url_hash,
            self.data_offset,
            self.sample_key,
            self.item_key,
            self.seg,
            self.outcome,
            self.item_seg,
            self.data_length,
        )


class CommitDb(Db, Protocol):
    """The engine's side of a commit, in its transaction."""

    # Read the rows of the commit's keys before inserting (SQLite: cheap, and its plain INSERT
    # must not meet an existing key). PostgreSQL inserts first and reads only the keys the
    # insert left out: one index probe per new row instead of two.
    reads_first: bool

    def rows_by_keys(self, keys: Sequence[bytes]) -> list[IndexRow]:
        """The existing rows of `keys` (PostgreSQL: locked, in key order)."""
        ...

    def located_keys(self, keys: Sequence[bytes]) -> set[bytes]:
        """The subset of item `keys` the index already locates."""
        ...

    def insert_rows(self, rows: Sequence[IndexRow]) -> set[bytes]:
        """Insert rows whose key is not there yet; returns the keys inserted (a key inserted
        concurrently by another transaction is left out)."""
        ...

    def update_rows(self, rows: Sequence[IndexRow]) -> None:
        """Overwrite the rows with these keys."""
        ...


@dataclass(frozen=True, slots=True)
class _Incoming:
    url_hash: int
    item_key: bytes | None  # the item of a success
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
    incoming: dict[bytes, _Incoming] = {}
    for s in samples:  # the last row of a key wins, as in the manifest
        status, error = clean_text(s.status), clean_opt(s.error)
        item = item_key(s.item_id) if status == SUCCESS_STATUS and s.item_id else None
        incoming[sample_key(s.sample_id)] = _Incoming(
            url_hash(s.url), item, ids[(status, error)], status, error
        )
    new_items: dict[bytes, tuple[int, int]] = {}
    for i in items:  # the first location of an id wins
        new_items.setdefault(item_key(i.item_id), (i.data_offset, i.data_length))
    for located in db.located_keys(sorted(new_items)):
        del new_items[located]
    plan = _Plan(seg, ids[CARRIER], new_items)

    keys = sorted(incoming)
    existing = {r.sample_key: r for r in db.rows_by_keys(keys)} if db.reads_first else {}
    fresh = [plan.insert(k, incoming[k]) for k in keys if k not in existing]
    inserted = db.insert_rows(fresh)
    conflicts = [r for r in fresh if r.sample_key not in inserted]
    for row in conflicts:  # another partition's commit inserted them meanwhile
        plan.unplace(row)
    if conflicts:
        again = db.rows_by_keys([r.sample_key for r in conflicts])
        existing.update({r.sample_key: r for r in again})
    for row in fresh:
        if row.sample_key in inserted:
            plan.hold(incoming[row.sample_key])
    updates: list[IndexRow] = []
    for k in keys:
        old = existing.get(k)
        if old is not None:
            moved = plan.update(old, incoming[k])
            if moved is not None:
                updates.append(moved)
    db.update_rows(updates)
    # After the updates: a location moves to its carrier only once its old row let it go.
    db.insert_rows(plan.carriers + plan.unplaced_items())
    return plan.counts(db, outcomes)


class _Plan:
    """The commit's decisions, row by row."""

    def __init__(
        self,
        seg: int,
        carrier_outcome: int,
        new_items: dict[bytes, tuple[int, int]],
    ) -> None:
        self.seg = seg
        self.carrier_outcome = carrier_outcome
        self.new_items = new_items
        self.placed: set[bytes] = set()
        self.carriers: list[IndexRow] = []
        self.held: dict[tuple[str, str | None], int] = {}
        self.moved: dict[tuple[int, int], int] = {}  # (seg left, outcome there) -> rows

    def _place(self, row: IndexRow) -> None:
        """Give the row the location of its item if this commit stored it and no row has it."""
        item = row.item_key
        if item is not None and item in self.new_items and item not in self.placed:
            self.placed.add(item)
            row.item_seg = self.seg
            row.data_offset, row.data_length = self.new_items[item]

    def unplace(self, row: IndexRow) -> None:
        if row.located and row.item_key is not None:
            self.placed.discard(row.item_key)

    def insert(self, key: bytes, inc: _Incoming) -> IndexRow:
        row = IndexRow(inc.url_hash, None, key, inc.item_key, self.seg, inc.outcome, None, None)
        self._place(row)
        return row

    def hold(self, inc: _Incoming) -> None:
        self.held[(inc.status, inc.error)] = self.held.get((inc.status, inc.error), 0) + 1

    def update(self, old: IndexRow, inc: _Incoming) -> IndexRow | None:
        if (old.outcome, old.item_key, old.url_hash) == (inc.outcome, inc.item_key, inc.url_hash):
            return None  # delivered again unchanged: stays where it is
        row = IndexRow(
            inc.url_hash, None, old.sample_key, inc.item_key, self.seg, inc.outcome, None, None
        )
        if old.located and old.item_key == inc.item_key:
            row.item_seg, row.data_offset, row.data_length = (
                old.item_seg,
                old.data_offset,
                old.data_length,
            )
        else:
            if old.located and old.item_key is not None:
                self.carriers.append(
                    self._carrier(old.item_key, old.item_seg, old.data_offset, old.data_length)
                )
            self._place(row)
        self.hold(inc)
        move = (old.seg, old.outcome)
        self.moved[move] = self.moved.get(move, 0) + 1
        return row

    def _carrier(
        self, item: bytes, seg: int | None, offset: int | None, length: int | None
    ) -> IndexRow:
        assert seg is not None
        return IndexRow(0, offset, carrier_key(item), item, seg, self.carrier_outcome, seg, length)

    def unplaced_items(self) -> list[IndexRow]:
        """Items this commit stored that no row of it carries (no success row points at them)."""
        return [
            self._carrier(item, self.seg, offset, length)
            for item, (offset, length) in sorted(self.new_items.items())
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
