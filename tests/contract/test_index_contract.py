"""The Index port's contract, run against both adapters (SQLite file, PostgreSQL server).

The appender, materializer, status and CLI are written against the port; these are the
behaviours they rely on: fencing of stale owners, the committed position, dedup of items,
"latest outcome wins" for samples, and reads that give the same answers on both engines.
Races run in separate processes (spawned, each with its own connection), as real owners do.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing as mp
import queue
import random
import sqlite3
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from i2d_segments.index import (
    FencedError,
    Index,
    IndexAccessError,
    ItemRow,
    PositionError,
    PostgresIndex,
    SampleRow,
    SegmentCommit,
    SegmentMove,
    SegmentRow,
    SqliteIndex,
)
from i2d_segments.index.schema import Engine, load_migrations
from i2d_segments.naming import segment_id_of, segment_object_name
from i2d_segments.reader import SegmentRows
from i2d_segments.segment.manifest import SegmentManifest
from tests.segment_files import manifest_of
from tests.servers.postgres import PostgresServer

TOPIC = "APPEND"
SPAWN = mp.get_context("spawn")  # no fork of a process holding connections and threads
PROC_TIMEOUT = 120.0


@dataclass(frozen=True)
class Target:
    """Where an index lives; picklable, so child processes can open their own connection."""

    kind: Engine
    where: str  # file path | DSN


def open_index(target: Target) -> Index:
    if target.kind == "sqlite":
        return SqliteIndex(target.where)
    return PostgresIndex(target.where)


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "sqlite":
        return Target("sqlite", str(tmp_path / "index.sqlite"))
    return Target("postgres", request.getfixturevalue("postgres_dsn"))


@pytest.fixture
def index(target: Target) -> Iterator[Index]:
    idx = open_index(target)
    idx.migrate()
    yield idx
    idx.close()


def raw_rows(target: Target, sql: str) -> list[tuple[Any, ...]]:
    """Look under the port, with the engine's own driver."""
    if target.kind == "sqlite":
        with contextlib.closing(sqlite3.connect(target.where)) as conn:
            return conn.execute(sql).fetchall()
    with psycopg.connect(target.where) as pg:
        return pg.execute(sql).fetchall()


def drain(q: Any) -> list[Any]:
    """Everything a finished child process left in a multiprocessing queue."""
    out: list[Any] = []
    while True:
        try:
            out.append(q.get(timeout=0.2))
        except queue.Empty:
            return out


# ---------------------------------------------------------------------------- builders


def seg(
    partition: int, first: int, last: int, epoch: int, *, items: int = 0, samples: int = 0
) -> SegmentRow:
    name = segment_object_name(partition, first, epoch)
    return SegmentRow(
        segment_id=segment_id_of(name),
        topic=TOPIC,
        partition=partition,
        first_offset=first,
        last_offset=last,
        epoch=epoch,
        uri=f"file:///out/{name}",
        item_count=items,
        sample_count=samples,
        bytes=1024 * (items + 1),
        sha256="ab" * 32,
        created_at=1_700_000_000.5,
    )


def item(item_id: str, segment_id: str, offset: int, length: int = 100) -> ItemRow:
    return ItemRow(
        item_id=item_id,
        segment_id=segment_id,
        data_offset=offset,
        data_length=length,
        ext="jpg",
        mime="image/jpeg",
        width=256,
        height=192,
        original_width=1024,
        original_height=768,
        data_sha256="cd" * 32,
    )


def ok_sample(
    sample_id: str, item_id: str, segment_id: str, url: str | None = None, **attrs: Any
) -> SampleRow:
    return SampleRow(
        sample_id=sample_id,
        url=url or f"http://127.0.0.1/{sample_id}.jpg",
        caption=f"caption of {sample_id}",
        status="success",
        error=None,
        item_id=item_id,
        segment_id=segment_id,
        attrs=attrs,
        updated_at=1_700_000_001.25,
    )


def failed_sample(
    sample_id: str, segment_id: str, error: str, status: str = "failed_to_download"
) -> SampleRow:
    return SampleRow(
        sample_id=sample_id,
        url=f"http://127.0.0.1/{sample_id}.jpg",
        caption=None,
        status=status,
        error=error,
        item_id=None,
        segment_id=segment_id,
        updated_at=1_700_000_002.0,
    )


# The manifest each segment built here would carry (segment_id -> manifest): full rows are the
# index's refs joined with the manifests (`SegmentRows`), as the appender writes them.
MANIFESTS: dict[str, SegmentManifest] = {}


def commit_of(
    segment: SegmentRow, items: Sequence[ItemRow] = (), samples: Sequence[SampleRow] = ()
) -> SegmentCommit:
    commit = SegmentCommit(
        epoch=segment.epoch,
        segment=segment,
        items=list(items),
        samples=list(samples),
        next_offset=segment.last_offset + 1,
    )
    MANIFESTS[segment.segment_id] = manifest_of(commit)
    return commit


def index_rows_by_url(index: Index, url: str) -> list[SampleRow]:
    return full_rows(index).samples_by_url(url)


def full_rows(index: Index) -> SegmentRows:
    """Full rows of what this process committed through `commit_of`."""
    return SegmentRows(lambda s: MANIFESTS[s.segment_id], index)


def simple_commit(partition: int, first: int, last: int, epoch: int, tag: str) -> SegmentCommit:
    """A segment with one item and its sample; ids carry `tag` so tests can find them."""
    s = seg(partition, first, last, epoch, items=1, samples=1)
    return commit_of(
        s,
        [item(f"item-{tag}", s.segment_id, 1536)],
        [ok_sample(f"sample-{tag}", f"item-{tag}", s.segment_id)],
    )


# ---------------------------------------------------------------------------- migrations


def test_migrate_is_idempotent(target: Target) -> None:
    idx = open_index(target)
    try:
        idx.migrate()
        idx.migrate()
        idx.migrate()
    finally:
        idx.close()
    versions = [(m.version, m.name) for m in load_migrations("sqlite")]
    assert raw_rows(target, "SELECT version, name FROM schema_migrations ORDER BY version") == (
        versions
    )


def _migrate_worker(target: Target, barrier: Any, errors: Any) -> None:
    try:
        idx = open_index(target)
        try:
            barrier.wait(PROC_TIMEOUT)
            idx.migrate()
            idx.acquire_partition(TOPIC, 7, "migrator")  # the schema is usable right away
        finally:
            idx.close()
    except BaseException:
        errors.put(traceback.format_exc())
        barrier.abort()
        raise


def test_concurrent_migrate_applies_each_version_once(target: Target) -> None:
    barrier, errors = SPAWN.Barrier(3), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=_migrate_worker, args=(target, barrier, errors)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(PROC_TIMEOUT)
    failures = drain(errors)
    assert not failures, "\n".join(failures)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    versions = [m.version for m in load_migrations(target.kind)]
    assert [
        r[0] for r in raw_rows(target, "SELECT version FROM schema_migrations ORDER BY version")
    ] == versions
    idx = open_index(target)
    try:
        row = idx.partition(TOPIC, 7)
        assert row is not None and row.epoch == 3
    finally:
        idx.close()


# ---------------------------------------------------------------------------- ownership


def test_acquire_bumps_epoch_and_keeps_next_offset(index: Index) -> None:
    first = index.acquire_partition(TOPIC, 3, "appender-a")
    assert (first.topic, first.partition, first.epoch, first.next_offset) == (TOPIC, 3, 1, 0)

    index.commit_segment(simple_commit(3, 0, 41, first.epoch, "a"))
    second = index.acquire_partition(TOPIC, 3, "appender-b")
    assert (second.epoch, second.next_offset) == (2, 42)

    row = index.partition(TOPIC, 3)
    assert row is not None
    assert (row.epoch, row.next_offset, row.owner) == (2, 42, "appender-b")
    assert row.updated_at > 0
    assert index.partition(TOPIC, 4) is None
    assert index.partition("other-topic", 3) is None


def test_commit_advances_position_and_is_readable(index: Index) -> None:
    lease = index.acquire_partition(TOPIC, 0, "me")
    s = seg(0, 0, 9, lease.epoch, items=2, samples=3)
    items = [item("i1", s.segment_id, 1536, 2000), item("i2", s.segment_id, 5120, 3000)]
    samples = [
        ok_sample("k1", "i1", s.segment_id),
        ok_sample("k2", "i2", s.segment_id),
        failed_sample("k3", s.segment_id, "HTTP 404"),
    ]
    index.commit_segment(commit_of(s, items, samples))

    row = index.partition(TOPIC, 0)
    assert row is not None and (row.epoch, row.next_offset) == (lease.epoch, 10)
    assert index.segment(s.segment_id) == s
    assert index.segments() == [s]
    assert full_rows(index).item("i1") == items[0]
    assert full_rows(index).items_for_segment(s.segment_id) == items
    assert full_rows(index).sample("k1") == samples[0]
    assert full_rows(index).sample("k3") == samples[2]
    assert full_rows(index).samples_for_segment(s.segment_id) == samples
    assert full_rows(index).item("nope") is None
    assert full_rows(index).sample("nope") is None
    assert index.segment("p00000/00000000000000000099-e1") is None


def test_stale_epoch_is_fenced_and_writes_nothing(index: Index) -> None:
    zombie = index.acquire_partition(TOPIC, 1, "zombie")
    owner = index.acquire_partition(TOPIC, 1, "new-owner")
    assert owner.epoch == zombie.epoch + 1

    stale = simple_commit(1, 0, 9, zombie.epoch, "zombie")
    with pytest.raises(FencedError):
        index.commit_segment(stale)

    assert index.segment(stale.segment.segment_id) is None
    assert index.segments() == []
    assert index.existing_items(["item-zombie"]) == set()
    assert index.known_samples(["sample-zombie"]) == set()
    row = index.partition(TOPIC, 1)
    assert row is not None and (row.epoch, row.next_offset, row.owner) == (2, 0, "new-owner")

    # The current owner commits the same offsets without hindrance.
    index.commit_segment(simple_commit(1, 0, 9, owner.epoch, "owner"))
    assert index.existing_items(["item-owner"]) == {"item-owner"}


def test_commit_to_a_never_acquired_partition_is_fenced(index: Index) -> None:
    with pytest.raises(FencedError):
        index.commit_segment(simple_commit(9, 0, 9, 1, "orphan"))
    assert index.partition(TOPIC, 9) is None
    assert index.segments() == []


def test_first_offset_below_next_offset_is_refused(index: Index) -> None:
    lease = index.acquire_partition(TOPIC, 2, "me")
    index.commit_segment(simple_commit(2, 0, 99, lease.epoch, "first"))

    overlapping = simple_commit(2, 50, 149, lease.epoch, "overlap")
    with pytest.raises(PositionError) as raised:
        index.commit_segment(overlapping)
    assert not isinstance(raised.value, FencedError)
    assert index.segment(overlapping.segment.segment_id) is None
    assert index.existing_items(["item-overlap"]) == set()
    row = index.partition(TOPIC, 2)
    assert row is not None and row.next_offset == 100

    # A gap the writer saw (offsets the bus deleted) is fine: it resumed from next_offset.
    after_gap = replace(simple_commit(2, 120, 149, lease.epoch, "after-gap"), resumed_from=100)
    index.commit_segment(after_gap)
    row = index.partition(TOPIC, 2)
    assert row is not None and row.next_offset == 150


def test_a_commit_that_does_not_follow_the_committed_position_is_refused(index: Index) -> None:
    # The index lost an acknowledged commit (crash without durable commits, failover to an
    # asynchronous replica): its writer, which resumed from 100, must not leave 50..99 behind.
    lease = index.acquire_partition(TOPIC, 2, "me")
    index.commit_segment(simple_commit(2, 0, 49, lease.epoch, "kept"))
    next_one = replace(simple_commit(2, 100, 149, lease.epoch, "after-lost"), resumed_from=100)
    with pytest.raises(PositionError, match="lost acknowledged commits"):
        index.commit_segment(next_one)
    assert index.segment(next_one.segment.segment_id) is None
    assert index.existing_items(["item-after-lost"]) == set()
    row = index.partition(TOPIC, 2)
    assert row is not None and row.next_offset == 50
    # Resumed from where the index is, the same offsets go in.
    index.commit_segment(replace(simple_commit(2, 50, 149, lease.epoch, "again"), resumed_from=50))
    row = index.partition(TOPIC, 2)
    assert row is not None and row.next_offset == 150


def test_held_count_is_the_rows_a_segment_holds_now(index: Index) -> None:
    lease = index.acquire_partition(TOPIC, 0, "me")
    a = seg(0, 0, 9, lease.epoch, samples=3)
    index.commit_segment(
        commit_of(a, [], [failed_sample(f"s{i}", a.segment_id, "404 Not Found") for i in (1, 2, 3)])
    )
    # s1 again with the same outcome stays in a; s3 with another moves to b; s4 is new.
    b = seg(0, 10, 19, lease.epoch, samples=3)
    index.commit_segment(
        commit_of(
            b,
            [],
            [
                failed_sample("s1", b.segment_id, "404 Not Found"),
                failed_sample("s3", b.segment_id, "timeout"),
                failed_sample("s4", b.segment_id, "timeout"),
            ],
        )
    )
    assert index.held_samples(a.segment_id, ["s1", "s2", "s3"]) == {"s1", "s2"}
    assert index.held_samples(b.segment_id, ["s1", "s3", "s4"]) == {"s3", "s4"}
    assert (index.held_count(a.segment_id), index.held_count(b.segment_id)) == (2, 2)
    assert index.held_count("p00000/00000000000000000099-e1") == 0


def test_retrying_a_commit_that_landed_changes_nothing(index: Index) -> None:
    # A caller whose connection dropped during COMMIT cannot tell whether it landed; it retries.
    lease = index.acquire_partition(TOPIC, 0, "me")
    commit = simple_commit(0, 0, 9, lease.epoch, "once")
    index.commit_segment(commit)
    index.commit_segment(commit)
    assert index.segments() == [commit.segment]
    assert full_rows(index).items_for_segment(commit.segment.segment_id) == list(commit.items)
    row = index.partition(TOPIC, 0)
    assert row is not None and row.next_offset == 10
    # ...but a retry after losing the partition is still fenced.
    index.acquire_partition(TOPIC, 0, "other")
    with pytest.raises(FencedError):
        index.commit_segment(commit)


def test_self_contradictory_commit_is_rejected(index: Index) -> None:
    lease = index.acquire_partition(TOPIC, 0, "me")
    good = simple_commit(0, 0, 9, lease.epoch, "x")
    with pytest.raises(ValueError):
        index.commit_segment(
            SegmentCommit(lease.epoch + 1, good.segment, good.items, good.samples, 10)
        )
    with pytest.raises(ValueError):
        index.commit_segment(SegmentCommit(lease.epoch, good.segment, good.items, good.samples, 5))
    assert index.segments() == []


# ---------------------------------------------------------------------------- items & samples


def test_indexed_item_keeps_its_first_location(index: Index) -> None:
    lease = index.acquire_partition(TOPIC, 0, "me")
    a = seg(0, 0, 9, lease.epoch, items=1, samples=1)
    first_item = item("same-bytes", a.segment_id, 1536, 777)
    index.commit_segment(
        commit_of(a, [first_item], [ok_sample("url-1", "same-bytes", a.segment_id)])
    )

    # The same content again (another URL serving the same bytes), stored again in segment b.
    b = seg(0, 10, 19, lease.epoch, items=2, samples=1)
    again = item("same-bytes", b.segment_id, 9728, 555)
    other = item("other-bytes", b.segment_id, 19968, 10)
    index.commit_segment(
        commit_of(b, [again, other], [ok_sample("url-2", "same-bytes", b.segment_id)])
    )

    assert full_rows(index).item("same-bytes") == first_item
    assert full_rows(index).items_for_segment(a.segment_id) == [first_item]
    assert full_rows(index).items_for_segment(b.segment_id) == [other]
    second = full_rows(index).sample("url-2")
    assert second is not None
    assert (second.item_id, second.segment_id) == ("same-bytes", b.segment_id)
    first = full_rows(index).sample("url-1")
    assert first is not None and first.segment_id == a.segment_id


def test_sample_upsert_latest_outcome_wins(index: Index) -> None:
    lease = index.acquire_partition(TOPIC, 0, "me")
    a = seg(0, 0, 0, lease.epoch, samples=1)
    index.commit_segment(commit_of(a, [], [failed_sample("row", a.segment_id, "timeout")]))
    assert index.status_counts() == {"failed_to_download": 1}

    b = seg(0, 1, 1, lease.epoch, items=1, samples=1)
    retried = ok_sample("row", "img", b.segment_id, url="http://127.0.0.1/row.jpg", try_=2)
    index.commit_segment(commit_of(b, [item("img", b.segment_id, 512)], [retried]))
    assert full_rows(index).sample("row") == retried
    assert index.status_counts() == {"success": 1}
    assert index.error_counts() == {}
    assert full_rows(index).samples_for_segment(a.segment_id) == []
    assert full_rows(index).samples_for_segment(b.segment_id) == [retried]

    # And back: a later failure replaces the success (the index reports the latest outcome).
    c = seg(0, 2, 2, lease.epoch, samples=1)
    later = failed_sample("row", c.segment_id, "HTTP 500")
    index.commit_segment(commit_of(c, [], [later]))
    assert full_rows(index).sample("row") == later
    assert (
        full_rows(index).item("img") is not None
    )  # the stored item stays; only the sample row changed


def test_the_same_outcome_again_stays_in_the_segment_that_first_recorded_it(
    index: Index,
) -> None:
    """A redelivered row (its fetcher died before committing the urls offset) is not a new
    outcome: each row stays in exactly one segment, so the per-segment metadata parquet files
    add up to one row per input row."""
    lease = index.acquire_partition(TOPIC, 0, "me")
    a = seg(0, 0, 1, lease.epoch, items=1, samples=2)
    first = [ok_sample("row", "img", a.segment_id, w=3), failed_sample("bad", a.segment_id, "404")]
    index.commit_segment(commit_of(a, [item("img", a.segment_id, 512)], first))
    b = seg(0, 2, 4, lease.epoch, items=1, samples=3)
    again = [
        replace(ok_sample("row", "img", b.segment_id, w=3), updated_at=1.8e9),
        replace(failed_sample("bad", b.segment_id, "404"), updated_at=1.8e9),
        ok_sample("new", "img2", b.segment_id),
    ]
    index.commit_segment(commit_of(b, [item("img2", b.segment_id, 512)], again))
    assert sorted(
        full_rows(index).samples_for_segment(a.segment_id), key=lambda s: s.sample_id
    ) == sorted(first, key=lambda s: s.sample_id)
    assert [s.sample_id for s in full_rows(index).samples_for_segment(b.segment_id)] == ["new"]
    # The outcome is the status, the error, the item and the url: another url is a new one.
    # (Caption and attrs alone are not: the index keeps no copy of them to compare with.)
    c = seg(0, 5, 5, lease.epoch, samples=1)
    changed = ok_sample("row", "img", c.segment_id, url="http://127.0.0.1/moved.jpg", w=4)
    index.commit_segment(commit_of(c, [], [changed]))
    assert full_rows(index).sample("row") == changed
    d = seg(0, 6, 6, lease.epoch, samples=1)
    index.commit_segment(commit_of(d, [], [replace(changed, segment_id=d.segment_id, attrs={})]))
    assert full_rows(index).sample("row") == changed


def test_a_new_outcome_moves_the_row_and_the_commit_records_where_from(index: Index) -> None:
    """A row delivered again with a different outcome (first a timeout, then a success) moves
    to the newer segment, and that commit records which older segment lost it: the older
    segment's metadata is written again without it, so each row is in one segment only."""
    lease = index.acquire_partition(TOPIC, 0, "me")
    a = seg(0, 0, 2, lease.epoch, samples=3)
    first = [
        failed_sample("row", a.segment_id, "timeout"),
        failed_sample("other", a.segment_id, "timeout"),
        failed_sample("kept", a.segment_id, "404"),
    ]
    assert index.commit_segment(commit_of(a, [], first)) == []
    b = seg(0, 3, 5, lease.epoch, items=2, samples=3)
    later = [
        ok_sample("row", "img", b.segment_id),
        ok_sample("other", "img2", b.segment_id),
        failed_sample("kept", b.segment_id, "404"),  # the same outcome again: stays in a
    ]
    items = [item("img", b.segment_id, 512), item("img2", b.segment_id, 2048)]
    moved = [SegmentMove(b.segment_id, a.segment_id, 2)]
    assert index.commit_segment(commit_of(b, items, later)) == moved
    assert index.moves_into(b.segment_id) == moved
    assert index.moves_out_of(a.segment_id) == moved
    assert index.moves_into(a.segment_id) == index.moves_out_of(b.segment_id) == []
    assert [s.sample_id for s in full_rows(index).samples_for_segment(a.segment_id)] == ["kept"]
    assert [s.sample_id for s in full_rows(index).samples_for_segment(b.segment_id)] == [
        "other",
        "row",
    ]
    assert full_rows(index).sample("row") == later[0]  # the latest outcome wins

    # Moving on again (another partition, a failure after the success): b lost "row" to c.
    other = index.acquire_partition(TOPIC, 1, "me")
    c = seg(1, 0, 0, other.epoch, samples=1)
    again = failed_sample("row", c.segment_id, "HTTP 500")
    assert index.commit_segment(commit_of(c, [], [again])) == [
        SegmentMove(c.segment_id, b.segment_id, 1)
    ]
    assert index.moves_out_of(b.segment_id) == [SegmentMove(c.segment_id, b.segment_id, 1)]
    assert index.moves_out_of(a.segment_id) == moved  # a's record stays
    assert full_rows(index).sample("row") == again
    # Each row in exactly one segment.
    held = [
        r.sample_id
        for s in index.segments()
        for r in full_rows(index).samples_for_segment(s.segment_id)
    ]
    assert sorted(held) == ["kept", "other", "row"]


def test_a_retried_commit_returns_the_moves_it_recorded(index: Index) -> None:
    lease = index.acquire_partition(TOPIC, 0, "me")
    a = seg(0, 0, 0, lease.epoch, samples=1)
    index.commit_segment(commit_of(a, [], [failed_sample("row", a.segment_id, "timeout")]))
    b = seg(0, 1, 1, lease.epoch, items=1, samples=1)
    commit = commit_of(b, [item("img", b.segment_id, 512)], [ok_sample("row", "img", b.segment_id)])
    moved = [SegmentMove(b.segment_id, a.segment_id, 1)]
    assert index.commit_segment(commit) == moved
    # The caller lost its connection during COMMIT and retries: nothing written twice.
    assert index.commit_segment(commit) == moved
    assert index.moves_into(b.segment_id) == moved


def test_a_fenced_commit_records_no_move(index: Index) -> None:
    zombie = index.acquire_partition(TOPIC, 0, "zombie")
    a = seg(0, 0, 0, zombie.epoch, samples=1)
    index.commit_segment(commit_of(a, [], [failed_sample("row", a.segment_id, "timeout")]))
    index.acquire_partition(TOPIC, 0, "heir")
    b = seg(0, 1, 1, zombie.epoch, samples=1)
    with pytest.raises(FencedError):
        index.commit_segment(commit_of(b, [], [ok_sample("row", "img", b.segment_id)]))
    assert index.moves_out_of(a.segment_id) == []
    assert [s.sample_id for s in full_rows(index).samples_for_segment(a.segment_id)] == ["row"]


def test_existing_items_and_known_samples_with_10k_ids(index: Index) -> None:
    lease = index.acquire_partition(TOPIC, 0, "me")
    s = seg(0, 0, 4999, lease.epoch, items=5000, samples=5000)
    # Item ids are sha256 hex digests (the index keys an item by its first 16 bytes).
    ids = [hashlib.sha256(b"%d" % n).hexdigest() for n in range(10_000)]
    stored = ids[::2]
    index.commit_segment(
        commit_of(
            s,
            [item(i, s.segment_id, 1536 + 2048 * n) for n, i in enumerate(stored)],
            [ok_sample(f"s{i}", i, s.segment_id) for i in stored],
        )
    )
    asked = list(ids)
    random.Random(7).shuffle(asked)
    # Any iterable, of any size: a generator is consumed once.
    assert index.existing_items(i for i in asked) == set(stored)
    assert index.known_samples(f"s{i}" for i in asked) == {f"s{i}" for i in stored}
    assert index.existing_items([]) == set()
    assert index.known_samples(["s" + stored[0], "s" + stored[0]]) == {"s" + stored[0]}


def test_items_for_segment_in_data_offset_order(index: Index) -> None:
    lease = index.acquire_partition(TOPIC, 0, "me")
    s = seg(0, 0, 99, lease.epoch, items=50)
    offsets = list(range(1536, 1536 + 50 * 4096, 4096))
    items = [
        item(f"z{n:03d}" if n % 2 else f"a{n:03d}", s.segment_id, o) for n, o in enumerate(offsets)
    ]
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)
    index.commit_segment(commit_of(s, shuffled))
    assert [i.data_offset for i in full_rows(index).items_for_segment(s.segment_id)] == offsets
    assert full_rows(index).items_for_segment(s.segment_id) == items


def test_samples_by_url(index: Index) -> None:
    lease = index.acquire_partition(TOPIC, 0, "me")
    s = seg(0, 0, 2, lease.epoch, items=1, samples=3)
    url = "http://127.0.0.1/shared.jpg"
    a = ok_sample("key-a", "x", s.segment_id, url=url)
    b = ok_sample("key-b", "x", s.segment_id, url=url)
    c = ok_sample("key-c", "x", s.segment_id, url="http://127.0.0.1/other.jpg")
    index.commit_segment(commit_of(s, [item("x", s.segment_id, 512)], [c, b, a]))
    assert sorted(full_rows(index).samples_by_url(url), key=lambda r: r.sample_id) == [a, b]
    assert full_rows(index).samples_by_url("http://127.0.0.1/none.jpg") == []


def test_long_urls_and_errors_commit_and_are_found(index: Index) -> None:
    """A url of 10 KB (a data: url, a signed CDN link) is a row like any other: its segment
    commits (a btree entry on PostgreSQL holds at most ~2.7 KB) and it is found by url."""
    lease = index.acquire_partition(TOPIC, 0, "me")
    s = seg(0, 0, 1, lease.epoch, items=1, samples=2)
    noise = random.Random(7).randbytes(5000).hex()  # incompressible
    long_url = f"http://127.0.0.1/{noise}.jpg"
    a = ok_sample("key-a", "x", s.segment_id, url=long_url)
    b = replace(ok_sample("key-b", "x", s.segment_id), error="e" * 10_000)
    index.commit_segment(commit_of(s, [item("x", s.segment_id, 512)], [a, b]))
    assert full_rows(index).samples_by_url(long_url) == [a]


def test_status_and_error_counts(index: Index) -> None:
    lease = index.acquire_partition(TOPIC, 0, "me")
    s = seg(0, 0, 9, lease.epoch, items=2, samples=7)
    samples = [
        ok_sample("ok1", "i1", s.segment_id),
        ok_sample("ok2", "i2", s.segment_id),
        failed_sample("f1", s.segment_id, "HTTP 404"),
        failed_sample("f2", s.segment_id, "HTTP 404"),
        failed_sample("f3", s.segment_id, "timeout"),
        failed_sample("f4", s.segment_id, "image too large", status="failed_to_resize"),
        failed_sample("f5", s.segment_id, "HTTP 404", status="failed_to_resize"),
    ]
    items = [item("i1", s.segment_id, 512), item("i2", s.segment_id, 4096)]
    index.commit_segment(commit_of(s, items, samples))
    assert index.status_counts() == {"success": 2, "failed_to_download": 3, "failed_to_resize": 2}
    assert index.error_counts() == {"HTTP 404": 3, "timeout": 1, "image too large": 1}


def test_empty_index_answers(index: Index) -> None:
    assert index.segments() == []
    assert index.partitions() == []
    assert index.status_counts() == {}
    assert index.error_counts() == {}
    assert full_rows(index).items_for_segment("p00000/00000000000000000000-e1") == []


# ---------------------------------------------------------------------------- listings


def test_segments_ordered_by_partition_then_first_offset(index: Index) -> None:
    # Appenders commit in offset order within their partition, interleaved across partitions.
    leases = {p: index.acquire_partition(TOPIC, p, "o") for p in (2, 0, 1)}
    order = [(2, 0), (0, 0), (1, 0), (2, 10), (0, 10), (1, 10), (0, 20)]
    for p, first in order:
        index.commit_segment(simple_commit(p, first, first + 9, leases[p].epoch, f"{p}-{first}"))
    assert [(s.partition, s.first_offset) for s in index.segments()] == sorted(order)


def test_partitions_lists_every_owned_partition(index: Index) -> None:
    index.acquire_partition(TOPIC, 2, "b")
    index.acquire_partition(TOPIC, 0, "a")
    index.acquire_partition(TOPIC, 0, "c")
    lease = index.acquire_partition("urls", 0, "f")
    index.commit_segment(
        commit_of(
            SegmentRow(
                segment_id="urls-p0-0",
                topic="urls",
                partition=0,
                first_offset=0,
                last_offset=4,
                epoch=lease.epoch,
                uri="file:///x",
                item_count=0,
                sample_count=0,
                bytes=0,
                sha256="00" * 32,
                created_at=1.0,
            )
        )
    )
    rows = [(r.topic, r.partition, r.epoch, r.next_offset, r.owner) for r in index.partitions()]
    assert rows == [
        (TOPIC, 0, 2, 0, "c"),
        (TOPIC, 2, 1, 0, "b"),
        ("urls", 0, 1, 5, "f"),
    ]


# ---------------------------------------------------------------------------- attrs & text


def test_values_json_cannot_carry_are_stored_alike(index: Index) -> None:
    # NaN and NUL reach the index from real inputs (parquet nulls, hostile captions); Postgres
    # refuses both, and a commit that can never succeed would stall the partition forever.
    lease = index.acquire_partition(TOPIC, 0, "me")
    s = seg(0, 0, 0, lease.epoch, samples=1)
    row = SampleRow(
        sample_id="odd",
        url="http://127.0.0.1/a\x00b.jpg",
        caption="cap\x00tion",
        status="failed_to_download",
        error="bad\x00byte",
        item_id=None,
        segment_id=s.segment_id,
        attrs={"nan": float("nan"), "inf": float("-inf"), "nul": "x\x00y", "tuple": (1, 2)},
    )
    index.commit_segment(commit_of(s, [], [row]))
    got = index.sample_ref("odd")
    assert got is not None
    assert (got.status, got.error) == ("failed_to_download", "bad\ufffdbyte")
    assert index.error_counts() == {"bad\ufffdbyte": 1}
    assert index.known_samples(["odd"]) == {"odd"}
    assert [r.sample_id for r in index_rows_by_url(index, row.url)] == ["odd"]


# ---------------------------------------------------------------------------- races


def _race_worker(target: Target, name: str, rounds: int, barrier: Any, results: Any) -> None:
    """Each round: both racers acquire at once, then both commit the offsets they were given."""
    try:
        idx = open_index(target)
        try:
            for r in range(rounds):
                barrier.wait(PROC_TIMEOUT)
                lease = idx.acquire_partition(TOPIC, 0, name)
                barrier.wait(PROC_TIMEOUT)
                first = lease.next_offset
                commit = simple_commit(0, first, first + 9, lease.epoch, f"{name}-{r}")
                try:
                    idx.commit_segment(commit)
                    results.put((r, name, lease.epoch, first, "ok"))
                except FencedError:
                    results.put((r, name, lease.epoch, first, "fenced"))
                barrier.wait(PROC_TIMEOUT)
        finally:
            idx.close()
    except BaseException:
        results.put(("error", name, traceback.format_exc()))
        barrier.abort()  # wake the other racer now instead of at its barrier timeout
        raise


def test_racing_owners_the_loser_of_the_epoch_race_is_fenced(index: Index, target: Target) -> None:
    rounds = 6
    barrier, results = SPAWN.Barrier(2), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=_race_worker, args=(target, name, rounds, barrier, results))
        for name in ("red", "blue")
    ]
    for p in procs:
        p.start()
    outcomes: list[tuple[Any, ...]] = []
    while len(outcomes) < 2 * rounds:
        outcomes.append(results.get(timeout=PROC_TIMEOUT))
        errors = [o for o in outcomes if o[0] == "error"]
        assert not errors, errors
    for p in procs:
        p.join(PROC_TIMEOUT)
    assert [p.exitcode for p in procs] == [0, 0]

    for r in range(rounds):
        got = sorted((o for o in outcomes if o[0] == r), key=lambda o: o[2])
        loser, winner = got
        # Both were given the same position; the later acquire (higher epoch) owns it.
        assert loser[3] == winner[3] == r * 10
        assert winner[2] == loser[2] + 1
        assert (loser[4], winner[4]) == ("fenced", "ok")
        assert index.existing_items([f"item-{loser[1]}-{r}"]) == set()
        assert index.existing_items([f"item-{winner[1]}-{r}"]) == {f"item-{winner[1]}-{r}"}

    row = index.partition(TOPIC, 0)
    assert row is not None
    assert (row.epoch, row.next_offset) == (2 * rounds, 10 * rounds)
    assert [s.first_offset for s in index.segments()] == [10 * r for r in range(rounds)]


# ---------------------------------------------------------------------------- postgres faults


def test_postgres_index_survives_a_server_restart(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    idx = PostgresIndex.open(postgres_dsn)
    try:
        lease = idx.acquire_partition(TOPIC, 0, "me")
        idx.commit_segment(simple_commit(0, 0, 9, lease.epoch, "before"))

        postgres_server.restart()
        # A read reconnects by itself.
        assert idx.existing_items(["item-before"]) == {"item-before"}

        postgres_server.restart()
        # A commit on the dropped connection fails (the caller retries); the retry reconnects.
        after = simple_commit(0, 10, 19, lease.epoch, "after")
        with pytest.raises(IndexAccessError):
            idx.commit_segment(after)
        idx.commit_segment(after)
        row = idx.partition(TOPIC, 0)
        assert row is not None and row.next_offset == 20

        postgres_server.stop()
        with pytest.raises(IndexAccessError):
            idx.segments()
        postgres_server.start()
        assert [s.first_offset for s in idx.segments()] == [0, 10]
    finally:
        idx.close()
        postgres_server.start()


def _partition_writer(
    target: Target, partition: int, segments: int, barrier: Any, errors: Any
) -> None:
    try:
        idx = open_index(target)
        try:
            lease = idx.acquire_partition(TOPIC, partition, f"writer-{partition}")
            barrier.wait(PROC_TIMEOUT)
            for n in range(segments):
                idx.commit_segment(
                    simple_commit(partition, n * 10, n * 10 + 9, lease.epoch, f"{partition}-{n}")
                )
        finally:
            idx.close()
    except BaseException:
        errors.put(traceback.format_exc())
        barrier.abort()
        raise


def test_owners_of_different_partitions_commit_concurrently(index: Index, target: Target) -> None:
    writers, segments = 3, 25
    barrier, errors = SPAWN.Barrier(writers), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=_partition_writer, args=(target, p, segments, barrier, errors))
        for p in range(writers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(PROC_TIMEOUT)
    failures = drain(errors)
    assert not failures, "\n".join(failures)
    assert [p.exitcode for p in procs] == [0] * writers
    assert [(s.partition, s.first_offset) for s in index.segments()] == [
        (p, n * 10) for p in range(writers) for n in range(segments)
    ]
    assert [r.next_offset for r in index.partitions()] == [segments * 10] * writers


def _outcome_writer(
    target: Target, partition: int, segments: int, rows: int, barrier: Any, errors: Any
) -> None:
    """Commits the same sample ids as the other writer, on its own partition: partition 0
    with failures (a timeout), partition 1 with successes (the row fetched again)."""
    try:
        idx = open_index(target)
        try:
            lease = idx.acquire_partition(TOPIC, partition, f"writer-{partition}")
            barrier.wait(PROC_TIMEOUT)
            for n in range(segments):
                s = seg(partition, n * rows, n * rows + rows - 1, lease.epoch, samples=rows)
                ids = [f"row-{n}-{i}" for i in range(rows)]
                if partition == 0:
                    samples = [failed_sample(sid, s.segment_id, "timeout") for sid in ids]
                    idx.commit_segment(commit_of(s, [], samples))
                else:
                    samples = [ok_sample(sid, f"img-{sid}", s.segment_id) for sid in ids]
                    items = [
                        item(f"img-{sid}", s.segment_id, 512 * (i + 1)) for i, sid in enumerate(ids)
                    ]
                    idx.commit_segment(commit_of(s, items, samples))
        finally:
            idx.close()
    except BaseException:
        errors.put(traceback.format_exc())
        barrier.abort()
        raise


def test_concurrent_outcomes_of_the_same_rows_record_every_move(
    index: Index, target: Target
) -> None:
    """Two owners (two partitions: a failure is keyed by sample, a success by item) commit
    outcomes of the same rows at the same time. Whichever lands last holds each row, and the
    segment that lost it is always recorded, even when both inserted it at once."""
    segments, rows = 20, 30
    barrier, errors = SPAWN.Barrier(2), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=_outcome_writer, args=(target, p, segments, rows, barrier, errors))
        for p in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(PROC_TIMEOUT)
    failures = drain(errors)
    assert not failures, "\n".join(failures)
    assert [p.exitcode for p in procs] == [0, 0]
    by_segment = {s.segment_id: s for s in index.segments()}
    assert len(by_segment) == 2 * segments
    moved_from = {
        (m.segment_id, m.from_segment_id): m.samples
        for sid in by_segment
        for m in index.moves_into(sid)
    }
    for n in range(segments):
        pair = [segment_id_of(segment_object_name(p, n * rows, 1)) for p in (0, 1)]
        ids = [f"row-{n}-{i}" for i in range(rows)]  # both segments' rows (_outcome_writer)
        held = {sid: len(index.held_samples(sid, ids)) for sid in pair}
        assert sum(held.values()) == rows  # every row in exactly one of the two
        assert {sid: index.held_count(sid) for sid in pair} == held  # the totals agree
        for holder, loser in (pair, pair[::-1]):
            if held[holder] and held[loser] < rows:
                # The loser's rows that the holder now has: recorded as moved.
                assert moved_from.get((holder, loser)) == rows - held[loser], (holder, loser)
