"""The Index port's live-progress part, on both adapters: partition progress round-trips and
is fenced by epoch, download runs are upserted and the latest is found, a snapshot reads one
state while another connection commits, and an index older than these tables answers empty."""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import replace
from pathlib import Path

from i2d_segments.index import DownloadRun, Index, PartitionProgress, SqliteIndex
from tests.contract.test_index_contract import (  # noqa: F401  (fixtures)
    TOPIC,
    Target,
    index,
    open_index,
    simple_commit,
    target,
)

PROGRESS = PartitionProgress(
    topic=TOPIC,
    partition=3,
    epoch=2,
    owner="appender-a",
    position=1234,
    open_segment_id="p00003/00000000000000001200-e2",
    open_first_offset=1200,
    open_samples=34,
    open_successes=30,
    open_errors={"HTTP Error 404: Not Found": 3, "timeout \x00": 1},
    open_bytes=5_000_000_000,
    samples_per_second=178.25,
    images_per_second=150.5,
    window_seconds=10.0,
    recent=[
        {
            "sample_id": "s1",
            "url": "http://127.0.0.1/a.jpg",
            "caption": "un chat \N{CAT FACE} \x00 nul",
            "status": "success",
            "error": None,
            "item_id": "ab" * 32,
            "width": 64,
            "height": 48,
            "segment_id": "p00003/00000000000000001200-e2",
            "at": 1_700_000_000.5,
        }
    ],
    updated_at=1_700_000_001.25,
)

RUN = DownloadRun(
    run_id="run-1",
    url_list="/data/urls.txt",
    append_topic=TOPIC,
    append_partition=0,
    start_offset=0,
    rows_total=None,
    rows_read=100,
    rows_skipped=10,
    started_at=1_700_000_000.0,
    updated_at=1_700_000_001.0,
    finished_at=None,
)


def test_progress_round_trips_and_an_older_epoch_changes_nothing(index: Index) -> None:  # noqa: F811
    assert index.progress() == []
    idle = replace(
        PROGRESS, partition=1, open_segment_id=None, open_first_offset=None, open_errors={}
    )
    index.publish_progress([PROGRESS, replace(idle, recent=[])])
    got = {p.partition: p for p in index.progress()}
    assert list(got) == [1, 3]
    stored = got[3]
    # NUL cannot be stored (Postgres): it reads back as U+FFFD, as everywhere in the index.
    caption = PROGRESS.recent[0]["caption"].replace("\x00", "\ufffd")
    errors = {"HTTP Error 404: Not Found": 3, "timeout \ufffd": 1}
    expected = replace(
        PROGRESS, open_errors=errors, recent=[{**PROGRESS.recent[0], "caption": caption}]
    )
    assert stored == expected
    assert got[1].open_segment_id is None and got[1].recent == [] and got[1].open_errors == {}
    # A zombie of epoch 1 publishes: ignored. The owner of epoch 3 publishes: it wins.
    index.publish_progress([replace(PROGRESS, epoch=1, position=1)])
    assert {p.partition: p.position for p in index.progress()}[3] == 1234
    index.publish_progress([replace(PROGRESS, epoch=3, position=1300, recent=[])])
    newest = {p.partition: p for p in index.progress()}[3]
    assert (newest.epoch, newest.position, newest.recent) == (3, 1300, [])


def test_runs_are_upserted_and_the_latest_is_found(index: Index) -> None:  # noqa: F811
    assert index.latest_run() is None
    index.record_run(RUN)
    assert index.latest_run() == RUN
    done = replace(RUN, rows_total=100, updated_at=1_700_000_009.0, finished_at=1_700_000_009.0)
    index.record_run(done)
    assert index.latest_run() == done
    second = replace(RUN, run_id="run-2", started_at=1_700_000_100.0, start_offset=100)
    index.record_run(second)
    assert index.latest_run() == second


def test_a_snapshot_reads_one_state(index: Index, target: Target) -> None:  # noqa: F811
    index.acquire_partition(TOPIC, 0, "reader-test")
    other = open_index(target)
    try:
        lease = other.acquire_partition(TOPIC, 0, "writer")
        with index.snapshot():
            before = index.totals().segments
            other.commit_segment(simple_commit(0, 0, 9, lease.epoch, "a"))
            other.publish_progress([replace(PROGRESS, partition=0, epoch=lease.epoch)])
            assert index.totals().segments == before == 0
            assert index.progress() == []
            assert index.partition(TOPIC, 0).next_offset == 0  # type: ignore[union-attr]
        assert index.totals().segments == 1
        assert [p.partition for p in index.progress()] == [0]
        # Reads after a snapshot work as before (nothing was left open).
        with index.snapshot():
            assert index.partition(TOPIC, 0).next_offset == 10  # type: ignore[union-attr]
    finally:
        other.close()


def test_an_index_without_the_progress_tables_answers_empty(tmp_path: Path) -> None:
    """`status` opens an index read-only, without migrating: an older one still answers."""
    path = tmp_path / "index.sqlite"
    SqliteIndex.open(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DROP TABLE partition_progress")
        conn.execute("DROP TABLE download_runs")
        conn.execute("DELETE FROM schema_migrations WHERE version = 3")
    old = SqliteIndex(path)
    try:
        with old.snapshot():
            assert old.progress() == [] and old.latest_run() is None
            assert old.totals().segments == 0
    finally:
        old.close()
