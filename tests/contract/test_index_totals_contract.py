"""The totals every status figure reads (migration 0006), on both adapters: after any history of
commits (moves to newer segments and back, redeliveries of the same outcome, retried and fenced
commits, concurrent commits of the same rows on several partitions) they equal a full recount
of the rows, per segment and dataset-wide; an index written by migration 0005 is migrated in
place with its totals filled from its rows (progress logged); a reader that does not migrate
still answers over a 0005 index."""

from __future__ import annotations

import logging
import random
import traceback
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from i2d_segments.index import FencedError, Index, SampleRow, SqliteIndex
from i2d_segments.index import totals as totals_module
from i2d_segments.index.commit import CARRIER_STATUS
from tests.contract import test_index_contract as contract
from tests.contract.test_index_contract import (
    PROC_TIMEOUT,
    SPAWN,
    TOPIC,
    Target,
    commit_of,
    drain,
    failed_sample,
    item,
    ok_sample,
    open_index,
    raw_rows,
    seg,
)
from tests.index_before_0007 import OldWriter

# The contract's fixtures: an index of each engine, migrated.
index = contract.index
target = contract.target

# ---------------------------------------------------------------------------- the recount


def recount(where: Target) -> dict[str, Any]:
    """What the totals must say, counted from the rows themselves."""
    segments = raw_rows(
        where,
        "SELECT COUNT(*), COALESCE(SUM(item_count), 0), COALESCE(SUM(bytes), 0), "
        "MIN(created_at), MAX(created_at) FROM segments",
    )[0]
    per_segment = raw_rows(
        where,
        "SELECT g.segment_id, o.status, o.error, COUNT(*) FROM sample_index si "
        "JOIN segments g ON g.seg = si.seg JOIN outcomes o ON o.outcome = si.outcome "
        f"WHERE o.status <> '{CARRIER_STATUS}' GROUP BY 1, 2, 3",
    )
    status: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for _, st, error, n in per_segment:
        status[st] += n
        if st != "success" and error is not None:
            errors[error] += n
    return {
        "totals": (
            int(segments[0]),
            int(segments[1]),
            sum(status.values()),
            int(segments[2]),
            segments[3],
            segments[4],
        ),
        "status": dict(status),
        "errors": dict(errors),
        "segments": {(s, st, e): int(n) for s, st, e, n in per_segment},
    }


def assert_exact(idx: Index, where: Target) -> None:
    want = recount(where)
    t = idx.totals()
    got = (t.segments, t.items, t.samples, t.bytes, t.first_created_at, t.last_created_at)
    assert got == want["totals"]
    assert idx.status_counts() == want["status"]
    assert idx.error_counts() == want["errors"]
    stored = raw_rows(where, "SELECT segment_id, status, error, samples FROM segment_counts")
    assert min((r[3] for r in stored), default=0) >= 0, "a negative count"
    assert {(s, st, e): int(n) for s, st, e, n in stored if n} == want["segments"]
    outcomes = raw_rows(where, "SELECT status, error, samples FROM outcome_totals")
    assert min((r[2] for r in outcomes), default=0) >= 0, "a negative total"


# ---------------------------------------------------------------------------- histories


def test_totals_follow_moves_redeliveries_retries_and_fences(
    index: Index,
    target: Target,
) -> None:
    assert_exact(index, target)  # empty: zeros, no rows
    assert index.totals().first_created_at is None
    lease = index.acquire_partition(TOPIC, 0, "me")
    a = replace(seg(0, 0, 5, lease.epoch, items=1, samples=6), created_at=2000.0)
    first = [
        failed_sample("row", a.segment_id, "timeout"),
        failed_sample("other", a.segment_id, "timeout"),
        failed_sample("kept", a.segment_id, "HTTP 404"),
        ok_sample("fine", "img-fine", a.segment_id),
        replace(failed_sample("no-error", a.segment_id, "x"), error=None),
        failed_sample("empty-error", a.segment_id, ""),
    ]
    index.commit_segment(commit_of(a, [item("img-fine", a.segment_id, 512)], first))
    assert_exact(index, target)
    assert index.error_counts() == {"timeout": 2, "HTTP 404": 1, "": 1}

    # Two rows move (timeout -> success), one comes again with the same outcome (stays in a),
    # one is new; the segment was created earlier than a (another appender's clock).
    b = replace(seg(0, 6, 9, lease.epoch, items=2, samples=4), created_at=1000.0)
    later = [
        ok_sample("row", "img", b.segment_id),
        ok_sample("other", "img2", b.segment_id),
        replace(failed_sample("kept", b.segment_id, "HTTP 404"), updated_at=1.8e9),
        failed_sample("new", b.segment_id, "timeout"),
    ]
    commit = commit_of(b, [item("img", b.segment_id, 512), item("img2", b.segment_id, 2048)], later)
    index.commit_segment(commit)
    assert_exact(index, target)
    assert index.status_counts() == {"success": 3, "failed_to_download": 4}
    assert index.totals().samples == 7 and index.totals().first_created_at == 1000.0
    before = index.totals()
    index.commit_segment(commit)  # a retried commit that had landed: nothing counted twice
    assert index.totals() == before

    # Moving on, from another partition: a success becomes a failure with a 10 KB message
    # (incompressible), a failure without error gets one, the '' error another one.
    other = index.acquire_partition(TOPIC, 1, "me")
    c = replace(seg(1, 0, 2, other.epoch, samples=3), created_at=3000.0)
    long_error = random.Random(5).randbytes(5000).hex()
    moved = [
        failed_sample("row", c.segment_id, long_error, status="failed_to_resize"),
        failed_sample("no-error", c.segment_id, "HTTP 500"),
        failed_sample("empty-error", c.segment_id, "HTTP 403"),
    ]
    index.commit_segment(commit_of(c, [], moved))
    assert_exact(index, target)
    assert index.error_counts()[long_error] == 1 and "" not in index.error_counts()

    # A fenced commit counts nothing; a segment without rows counts as a segment.
    index.acquire_partition(TOPIC, 0, "heir")
    d = seg(0, 10, 10, lease.epoch, samples=1)
    before = index.totals()
    with pytest.raises(FencedError):
        index.commit_segment(commit_of(d, [], [ok_sample("row", "img", d.segment_id)]))
    assert index.totals() == before
    heir = index.partition(TOPIC, 0)
    assert heir is not None
    e = seg(0, 10, 12, heir.epoch)
    index.commit_segment(commit_of(e))
    assert_exact(index, target)
    assert index.totals().segments == before.segments + 1


def test_totals_equal_a_recount_after_a_random_history(
    index: Index,
    target: Target,
) -> None:
    """Many commits on three partitions over a small pool of rows: every row is recorded,
    moved, redelivered unchanged, moved back, many times."""
    rng = random.Random(12)
    leases = {p: index.acquire_partition(TOPIC, p, "me") for p in range(3)}
    offsets = dict.fromkeys(leases, 0)
    outcomes = [("success", None), ("failed_to_download", "timeout")]
    outcomes += [("failed_to_download", f"HTTP Error {c}") for c in (403, 404, 500)]
    outcomes += [("failed_to_resize", "image too small"), ("failed_to_download", None)]
    for n in range(40):
        p = rng.randrange(3)
        rows = rng.randrange(0, 12)
        first = offsets[p]
        s = seg(p, first, first + max(rows, 1) - 1, leases[p].epoch, samples=rows)
        s = replace(s, created_at=float(rng.randrange(1000, 2000)), bytes=rng.randrange(10**6))
        samples = []
        for sid in rng.sample(range(30), rows):
            status, error = rng.choice(outcomes)
            samples.append(
                SampleRow(
                    sample_id=f"r{sid}",
                    url=f"http://127.0.0.1/{sid}.jpg",
                    caption=None,
                    status=status,
                    error=error,
                    item_id=f"img-{sid}" if status == "success" else None,
                    segment_id=s.segment_id,
                    updated_at=float(n),
                )
            )
        index.commit_segment(commit_of(s, [], samples))
        offsets[p] = s.last_offset + 1
        if n % 10 == 9:
            assert_exact(index, target)
    moves = raw_rows(target, "SELECT COUNT(*) FROM segment_moves")[0][0]
    assert moves > 10  # the history did move rows around


def _outcome_writer(
    where: Target, partition: int, segments: int, rows: int, barrier: Any, errors: Any
) -> None:
    """Commits outcomes of the same sample ids as the other writers, on its own partition,
    each segment's rows twice (the second time half of them the same, half another)."""
    mine = [
        ("failed_to_download", "timeout"),
        ("success", None),
        ("failed_to_download", "HTTP 500"),
    ]
    try:
        idx = open_index(where)
        try:
            lease = idx.acquire_partition(TOPIC, partition, f"writer-{partition}")
            barrier.wait(PROC_TIMEOUT)
            offset = 0
            for n in range(2 * segments):
                s = seg(partition, offset, offset + rows - 1, lease.epoch, samples=rows)
                status, error = mine[(partition + n // segments * (n % 2)) % len(mine)]
                samples = [
                    SampleRow(
                        sample_id=f"row-{n % segments}-{i}",
                        url=f"http://127.0.0.1/{n % segments}/{i}.jpg",
                        caption=None,
                        status=status,
                        error=error,
                        item_id=None,
                        segment_id=s.segment_id,
                        updated_at=1.0,
                    )
                    for i in range(rows)
                ]
                idx.commit_segment(commit_of(s, [], samples))
                offset += rows
        finally:
            idx.close()
    except BaseException:
        errors.put(traceback.format_exc())
        barrier.abort()
        raise


def test_concurrent_commits_of_the_same_rows_keep_exact_totals(
    index: Index,
    target: Target,
) -> None:
    """Three owners commit outcomes of the same rows at the same time (on PostgreSQL, truly
    concurrently: each row's upsert waits for the other's commit and then sees its outcome)."""
    writers, segments, rows = 3, 8, 40
    barrier, errors = SPAWN.Barrier(writers), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=_outcome_writer, args=(target, p, segments, rows, barrier, errors))
        for p in range(writers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(PROC_TIMEOUT)
    failures = drain(errors)
    assert not failures, "\n".join(failures)
    assert [p.exitcode for p in procs] == [0] * writers
    assert_exact(index, target)
    assert index.totals().samples == segments * rows
    assert raw_rows(target, "SELECT COUNT(*) FROM segment_moves")[0][0] > 0


# ---------------------------------------------------------------------------- migration 0006


def V5Writer(where: Target) -> OldWriter:
    """An index created by migrations 0001-0005 and written as the code of 0005 wrote it."""
    return OldWriter(where.kind, where.where)


def _v5_history(writer: OldWriter) -> list[str]:
    """Three segments on two partitions; rows moved, one moved twice, one redelivered."""
    a = seg(0, 0, 3, 1, items=1, samples=4)
    writer.commit(
        commit_of(
            a,
            [item("img-ok", a.segment_id, 512)],
            [
                failed_sample("row", a.segment_id, "timeout"),
                failed_sample("twice", a.segment_id, "timeout"),
                failed_sample("kept", a.segment_id, "HTTP 404"),
                ok_sample("ok", "img-ok", a.segment_id),
            ],
        )
    )
    b = replace(seg(0, 4, 6, 1, items=1, samples=3), created_at=1_700_000_100.0)
    writer.commit(
        commit_of(
            b,
            [item("img-row", b.segment_id, 512)],
            [
                ok_sample("row", "img-row", b.segment_id),
                failed_sample("twice", b.segment_id, "HTTP 500"),
                failed_sample("kept", b.segment_id, "HTTP 404"),
            ],
        )
    )
    c = replace(seg(1, 0, 1, 1, samples=2), created_at=1_699_999_000.0)
    writer.commit(
        commit_of(
            c,
            [],
            [
                failed_sample("twice", c.segment_id, "image too small", "failed_to_resize"),
                failed_sample("fresh", c.segment_id, "timeout"),
            ],
        )
    )
    return [a.segment_id, b.segment_id, c.segment_id]


def test_an_index_written_by_0005_is_migrated_with_exact_totals(
    target: Target,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer = V5Writer(target)
    try:
        a, b, c = _v5_history(writer)
    finally:
        writer.close()
    # Before: the segments' sample_count adds up to 9 for 5 rows.
    assert raw_rows(target, "SELECT SUM(sample_count) FROM segments")[0][0] == 9

    # Small batches and a log line each time: what a large index shows.
    monkeypatch.setattr(totals_module, "BACKFILL_ROWS_PER_QUERY", 2)
    monkeypatch.setattr(totals_module, "BACKFILL_LOG_SECONDS", 0.0)
    idx = open_index(target)
    try:
        with caplog.at_level(logging.INFO, logger=totals_module.__name__):
            idx.migrate()
        logged = [r.getMessage() for r in caplog.records]
        assert any("counting the sample rows of 3 segments" in m for m in logged), logged
        assert any("1 of 3 segments" in m for m in logged), logged
        assert any("5 sample rows of 3 segments counted" in m for m in logged), logged
        assert_exact(idx, target)
        t = idx.totals()
        assert (t.segments, t.items, t.samples) == (3, 2, 5)
        assert (t.first_created_at, t.last_created_at) == (1_699_999_000.0, 1_700_000_100.0)
        assert idx.status_counts() == {"success": 2, "failed_to_download": 2, "failed_to_resize": 1}
        held = raw_rows(target, "SELECT segment_id, SUM(samples) FROM segment_counts GROUP BY 1")
        assert dict(held) == {a: 2, b: 1, c: 2}

        # Rows moved before the migration move again, and its rows are read as before.
        lease = idx.acquire_partition(TOPIC, 2, "after")
        d = seg(2, 0, 2, lease.epoch, items=1, samples=3)
        idx.commit_segment(
            commit_of(
                d,
                [item("img-twice", d.segment_id, 512)],
                [
                    ok_sample("twice", "img-twice", d.segment_id),
                    failed_sample("row", d.segment_id, "timeout"),
                    failed_sample("kept", d.segment_id, "HTTP 404"),
                ],
            )
        )
        assert_exact(idx, target)
        assert idx.totals().samples == 5
        assert [s.sample_id for s in contract.full_rows(idx).samples_for_segment(a)] == [
            "kept",
            "ok",
        ]
        assert {m.from_segment_id for m in idx.moves_into(d.segment_id)} == {b, c}
        idx.migrate()  # again: nothing to do, nothing counted twice
        assert_exact(idx, target)
    finally:
        idx.close()


def test_a_reader_that_does_not_migrate_still_answers_over_0005(tmp_path: Path) -> None:
    """`status` opens an index without migrating it: over an older one it counts the rows."""
    path = Target("sqlite", str(tmp_path / "index.sqlite"))
    writer = V5Writer(path)
    try:
        _v5_history(writer)
    finally:
        writer.close()
    old = SqliteIndex(path.where)
    try:
        assert old.status_counts() == {
            "success": 2,
            "failed_to_download": 2,
            "failed_to_resize": 1,
        }
        assert old.error_counts() == {"timeout": 1, "HTTP 404": 1, "image too small": 1}
        assert old.totals().segments == 3
    finally:
        old.close()
    assert raw_rows(path, "SELECT MAX(version) FROM schema_migrations") == [(5,)]
