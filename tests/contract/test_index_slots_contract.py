"""Rows at slots (index/keys.py, index/commit.py), on both engines: identities that share a
bucket each keep their own row, and a dataset written with 0007's 16-byte keys is migrated to
slots (0008) and reads back the same.

Real 61-bit collisions are out of reach in a test, so `keys.identity_of` is narrowed to one
bucket: every sample, item and carrier then shares the first bucket of its kind, and only
their 16-bit checks tell them apart, as two colliding identities among billions would be.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pytest

from i2d_segments.index import Index, IndexAccessError
from i2d_segments.index import keys as keys_module
from i2d_segments.index import postgres as postgres_module
from i2d_segments.index import slotting as slotting_module
from i2d_segments.index import sqlite as sqlite_module
from i2d_segments.index.keys import Identity
from i2d_segments.index.schema import load_migrations
from tests.contract import test_index_contract as contract
from tests.contract.test_index_contract import (
    TOPIC,
    Target,
    commit_of,
    failed_sample,
    full_rows,
    item,
    ok_sample,
    open_index,
    raw_rows,
    seg,
)
from tests.index_before_0007 import OldWriter

# The contract's fixtures: the same two engines.
target = contract.target
index = contract.index


def _one_bucket(digest: bytes) -> Identity:
    return Identity(0, int.from_bytes(digest[8:10], "big"))


@pytest.fixture
def crowded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys_module, "identity_of", _one_bucket)


def _hex(name: str) -> str:
    """An item id as the appender makes them (a sha256 hex): its bytes are its identity."""
    return hashlib.sha256(name.encode()).hexdigest()


def test_identities_sharing_a_bucket_keep_a_row_each(
    index: Index, target: Target, crowded: None
) -> None:
    i1, i2, i3 = _hex("one"), _hex("two"), _hex("three")
    lease = index.acquire_partition(TOPIC, 0, "me")
    a = seg(0, 0, 9, lease.epoch, items=2, samples=3)
    index.commit_segment(
        commit_of(
            a,
            [item(i1, a.segment_id, 1536, 11), item(i2, a.segment_id, 4096, 22)],
            [
                failed_sample("s1", a.segment_id, "HTTP Error 404: Not Found"),
                ok_sample("s2", i1, a.segment_id),
                ok_sample("s3", i2, a.segment_id),
            ],
        )
    )
    b = seg(0, 10, 19, lease.epoch, items=1, samples=4)
    index.commit_segment(
        commit_of(
            b,
            [item(i3, b.segment_id, 512, 33)],
            [
                ok_sample("s1", i1, b.segment_id),  # fetched again: now the item s2 stored
                ok_sample("s2", i1, b.segment_id),  # redelivered unchanged: stays in a
                ok_sample("s3", i2, b.segment_id, url="http://127.0.0.1/moved.jpg"),  # moves
                failed_sample("s4", b.segment_id, "timeout"),
            ],
        )
    )

    # Every row of the bucket is a slot of it, one per identity (4 samples, 1 carrier of i2,
    # whose bytes stay in a while s3 moved to b; 1 carrier of i3, which no sample points at).
    slots = sorted(int(r[0]) for r in raw_rows(target, "SELECT sample_key FROM sample_index"))
    assert slots == list(range(6))

    refs = {s: index.sample_ref(s) for s in ("s1", "s2", "s3", "s4")}
    assert {s: (r.segment_id, r.status) for s, r in refs.items() if r} == {
        "s1": (b.segment_id, "success"),
        "s2": (a.segment_id, "success"),
        "s3": (b.segment_id, "success"),
        "s4": (b.segment_id, "failed_to_download"),
    }
    assert refs["s1"].item_key == refs["s2"].item_key == keys_module.item_key(i1)  # type: ignore[union-attr]
    assert index.sample_ref("s5") is None
    assert index.known_samples(["s1", "s2", "s3", "s4", "s5"]) == {"s1", "s2", "s3", "s4"}
    assert index.existing_items([i1, i2, i3, _hex("four")]) == {i1, i2, i3}
    assert index.status_counts() == {"success": 3, "failed_to_download": 1}

    rows = full_rows(index)
    # Each item where its bytes are: i2 in a although the row that stored it moved to b.
    assert [
        (i.item_id, i.data_offset, i.data_length) for i in rows.items_for_segment(a.segment_id)
    ] == [
        (i1, 1536, 11),
        (i2, 4096, 22),
    ]
    assert [(i.item_id, i.data_offset) for i in rows.items_for_segment(b.segment_id)] == [(i3, 512)]
    assert [s.sample_id for s in rows.samples_for_segment(b.segment_id)] == ["s1", "s3", "s4"]
    assert [s.sample_id for s in rows.samples_by_url("http://127.0.0.1/moved.jpg")] == ["s3"]
    got = rows.sample("s3")
    assert got is not None and got.item_id == i2


def test_a_full_bucket_fails_the_commit_loudly(index: Index, crowded: None) -> None:
    lease = index.acquire_partition(TOPIC, 0, "me")
    a = seg(0, 0, 8, lease.epoch, samples=9)
    samples = [failed_sample(f"s{n}", a.segment_id, "timeout") for n in range(9)]
    with pytest.raises(IndexAccessError, match="no free slot"):
        index.commit_segment(commit_of(a, [], samples))
    # Nothing of it was written: the appender retries it, and no row is lost in silence.
    assert index.segments() == [] and index.known_samples([s.sample_id for s in samples]) == set()
    assert index.partition(TOPIC, 0).next_offset == 0  # type: ignore[union-attr]


def _migrate_up_to(target: Target, version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    module = sqlite_module if target.kind == "sqlite" else postgres_module
    with monkeypatch.context() as m:
        m.setattr(
            module,
            "load_migrations",
            lambda e: [x for x in load_migrations(e) if x.version <= version],
        )
        index = open_index(target)
        try:
            index.migrate()
        finally:
            index.close()


def test_a_dataset_with_0007_rows_gets_slots_and_reads_the_same(
    target: Target, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    i1, i2, i3 = _hex("one"), _hex("two"), _hex("three")
    writer = OldWriter(target.kind, target.where)
    a = seg(0, 0, 9, 1, items=2, samples=3)
    b = seg(0, 10, 19, 1, items=1, samples=2)
    try:
        writer.commit(
            commit_of(
                a,
                [item(i1, a.segment_id, 1536, 11), item(i2, a.segment_id, 4096, 22)],
                [
                    ok_sample("s1", i1, a.segment_id),
                    ok_sample("s2", i2, a.segment_id),
                    failed_sample("s3", a.segment_id, "HTTP Error 404: Not Found"),
                ],
            )
        )
        writer.commit(
            commit_of(
                b,
                [item(i3, b.segment_id, 512, 33)],
                [
                    ok_sample("s1", i1, b.segment_id, url="http://127.0.0.1/moved.jpg"),
                    failed_sample("s4", b.segment_id, "timeout"),
                ],
            )
        )
    finally:
        writer.close()
    _migrate_up_to(target, 7, monkeypatch)
    # 0007 kept i1's location on s1's row, now in b; i3 (no sample) on a carrier.
    legacy = raw_rows(
        target, "SELECT seg, item_seg FROM sample_index WHERE data_length IS NOT NULL"
    )
    assert sorted(legacy) == [(1, 1), (2, 1), (2, 2)]

    monkeypatch.setattr(slotting_module, "BATCH", 2)
    monkeypatch.setattr(slotting_module, "BACKFILL_LOG_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger=slotting_module.__name__):
        index = open_index(target)
        index.migrate()
    try:
        logged = [r.getMessage() for r in caplog.records]
        assert any("index migration 8: rows: 2 of 5 (" in m for m in logged), logged
        assert any("index migration 8: 5 rows (2 carriers)" in m for m in logged), logged
        # 4 samples, the carrier 0007 gave i3, and one for i1, whose bytes are in a: 0007 kept
        # its location on s1's row, which moved to b.
        assert raw_rows(target, "SELECT COUNT(*) FROM sample_index") == [(6,)]
        rows = full_rows(index)
        assert [(i.item_id, i.data_offset) for i in rows.items_for_segment(a.segment_id)] == [
            (i1, 1536),
            (i2, 4096),
        ]
        assert [(i.item_id, i.data_offset) for i in rows.items_for_segment(b.segment_id)] == [
            (i3, 512)
        ]
        refs: dict[str, Any] = {s: index.sample_ref(s) for s in ("s1", "s2", "s3", "s4")}
        assert {s: (r.segment_id, r.status) for s, r in refs.items()} == {
            "s1": (b.segment_id, "success"),
            "s2": (a.segment_id, "success"),
            "s3": (a.segment_id, "failed_to_download"),
            "s4": (b.segment_id, "failed_to_download"),
        }
        assert refs["s1"].item_key == keys_module.item_key(i1)
        assert [s.sample_id for s in rows.samples_by_url("http://127.0.0.1/moved.jpg")] == ["s1"]
        assert index.status_counts() == {"success": 2, "failed_to_download": 2}
        # And it goes on as any index: a new commit dedups against the migrated items.
        lease = index.acquire_partition(TOPIC, 0, "me")
        c = seg(0, 20, 29, lease.epoch, samples=1)
        index.commit_segment(commit_of(c, [], [ok_sample("s5", i2, c.segment_id)]))
        five = index.sample_ref("s5")
        assert five is not None and five.item_key == keys_module.item_key(i2)
        assert index.existing_items([i1, i2, i3]) == {i1, i2, i3}
    finally:
        index.close()
