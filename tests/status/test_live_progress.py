"""The status figures count rows within a second or two of their outcome: the committed rows
plus what the appenders publish about their open segments, against the list's total (the
download's run, or the rows enqueued), never twice and never a departed owner's; the rate is
the appenders' current one. Built on a real SQLite index, with hand-made states."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from i2d_segments.bus import TopicPartition
from i2d_segments.bus.memory import MemoryBus
from i2d_segments.index import (
    DownloadRun,
    Index,
    PartitionProgress,
)
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.store.local import LocalStore
from i2d_status.settings import StatusSettings
from i2d_status.source import StatusSource
from i2d_status.text import render
from tests.status.helpers import commit

TOPIC = "APPEND"
T0 = 1_000_000.0


def live(epoch: int, **kw: Any) -> PartitionProgress:
    base: dict[str, Any] = {
        "topic": TOPIC,
        "partition": 0,
        "epoch": epoch,
        "owner": "appender-1",
        "position": 12,
        "open_segment_id": f"p00000/{5:020d}-e{epoch}",
        "open_first_offset": 5,
        "open_samples": 7,
        "open_successes": 6,
        "open_errors": {"HTTP Error 404: Not Found": 1},
        "open_bytes": 9000,
        "samples_per_second": 30.0,
        "images_per_second": 25.0,
        "window_seconds": 10.0,
        "recent": [
            {
                "sample_id": f"s{n}",
                "url": f"http://127.0.0.1/{n}.jpg",
                "caption": None if n == 11 else f"caption {n}",
                "status": "failed_to_download" if n == 11 else "success",
                "error": "HTTP Error 404: Not Found" if n == 11 else None,
                "item_id": None if n == 11 else f"{n:064x}",
                "width": None if n == 11 else 64,
                "height": None if n == 11 else 48,
                "segment_id": f"p00000/{5:020d}-e{epoch}",
                "at": T0 + 100 + n,
            }
            for n in (11, 10, 9)
        ],
        "updated_at": T0 + 200,
    }
    base.update(kw)
    return PartitionProgress(**base)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def index(tmp_path: Path) -> Iterator[SqliteIndex]:
    idx = SqliteIndex.open(tmp_path / "index.sqlite")
    yield idx
    idx.close()


def source(
    index: Index, tmp_path: Path, clock: Clock, bus: MemoryBus | None = None
) -> StatusSource:
    settings = StatusSettings(output_folder=str(tmp_path), recent_items=6)
    return StatusSource(settings, index, LocalStore(tmp_path / "store"), bus, clock=clock)


def run_row(**kw: Any) -> DownloadRun:
    base: dict[str, Any] = {
        "run_id": "r1",
        "url_list": "/data/urls.txt",
        "append_topic": TOPIC,
        "append_partition": 0,
        "start_offset": 0,
        "rows_total": 20,
        "rows_read": 20,
        "rows_skipped": 0,
        "started_at": T0,
        "updated_at": T0 + 200,
        "finished_at": None,
    }
    base.update(kw)
    return DownloadRun(**base)


def test_open_segments_count_at_once_against_the_runs_list(
    index: SqliteIndex, tmp_path: Path
) -> None:
    epoch = index.acquire_partition(TOPIC, 0, "appender-1").epoch
    commit(index, epoch, 0, "sssff", T0)  # offsets 0..4 committed
    index.record_run(run_row())
    index.publish_progress([live(epoch)])  # offsets 5..11 in the open segment
    src = source(index, tmp_path, Clock(T0 + 201))
    s = src.status()
    p = s.progress
    assert (p.samples, p.committed, p.in_open_segments) == (12, 5, 7)
    assert (p.successes, p.failures) == (3 + 6, 2 + 1)
    assert p.by_status == {"success": 3, "failed_to_download": 2}  # committed rows
    # Failure reasons: the committed rows' and the open segment's.
    assert [(f.reason, f.count) for f in s.failures] == [("HTTP Error 404: Not Found", 3)]
    assert (p.total, p.done, p.fraction) == (20, 12, 0.6)
    assert p.run is not None and p.run.url_list == "/data/urls.txt" and p.run.finished_at is None
    r = s.rates
    assert (r.source, r.images_per_second, r.samples_per_second, r.failures_per_second) == (
        "appenders",
        25.0,
        30.0,
        5.0,
    )
    assert s.segments.closed == 1 and s.segments.open == 1
    # The open segment's rows first (newest first), then the committed ones, newest first.
    assert [x.sample_id for x in s.recent] == ["s11", "s10", "s9", "s4", "s3", "s2"]
    assert [x.committed for x in s.recent] == [False] * 3 + [True] * 3
    failed = s.recent[0]
    assert (failed.caption, failed.error, failed.width) == (None, "HTTP Error 404: Not Found", None)
    assert (s.recent[1].caption, s.recent[1].error) == ("caption 10", None)

    text = render(s, now=T0 + 201)
    assert "rows recorded: 12 (7 in open segments, 5 committed)" in text
    assert "progress: 12 of 20 rows in the list done (60.0 %)" in text
    assert "rate: 25.0 images/s, 30.0 rows/s, 5.0 failures/s (last 10 s, appenders)" in text


def test_a_segment_committed_since_the_last_publish_counts_once(
    index: SqliteIndex, tmp_path: Path
) -> None:
    epoch = index.acquire_partition(TOPIC, 0, "appender-1").epoch
    commit(index, epoch, 0, "sssff", T0)
    index.record_run(run_row())
    index.publish_progress([live(epoch)])
    commit(index, epoch, 5, "sssssfs", T0)  # the open segment's rows, committed a moment later
    s = source(index, tmp_path, Clock(T0 + 201)).status()
    p = s.progress
    assert (p.samples, p.committed, p.in_open_segments) == (12, 12, 0)
    assert (p.successes, p.done) == (9, 12)
    assert s.rates.source == "appenders" and s.segments.open == 0
    # Its rows are committed now: the recent rows say so.
    assert [x.committed for x in s.recent[:3]] == [True] * 3


def test_a_departed_owners_figures_are_ignored(index: SqliteIndex, tmp_path: Path) -> None:
    epoch = index.acquire_partition(TOPIC, 0, "appender-1").epoch
    commit(index, epoch, 0, "sssff", T0)
    index.record_run(run_row())
    index.publish_progress([live(epoch)])
    # Silent for longer than progress_stale_seconds: its open segment is lost, not recorded.
    stale = source(index, tmp_path, Clock(T0 + 200 + 16)).status()
    assert (stale.progress.samples, stale.progress.in_open_segments) == (5, 0)
    assert (stale.progress.done, stale.progress.total) == (5, 20)
    assert [(f.reason, f.count) for f in stale.failures] == [("HTTP Error 404: Not Found", 2)]
    assert stale.rates.source == "none" and stale.rates.images_per_second == 0
    assert [x.sample_id for x in stale.recent] == ["s4", "s3", "s2", "s1", "s0"]
    # Another owner took the partition (a new epoch): the old figures are ignored at once.
    index.acquire_partition(TOPIC, 0, "appender-2")
    taken = source(index, tmp_path, Clock(T0 + 201)).status()
    assert (taken.progress.samples, taken.progress.in_open_segments) == (5, 0)
    # ...and the new owner's count, even if the old one writes again (fenced by epoch).
    index.publish_progress([live(epoch + 1, open_samples=2, open_successes=2, position=7)])
    index.publish_progress([live(epoch)])
    again = source(index, tmp_path, Clock(T0 + 201)).status()
    assert (again.progress.samples, again.progress.done) == (7, 7)


def test_skipped_rows_count_as_done_and_a_finished_run_is_complete(
    index: SqliteIndex, tmp_path: Path
) -> None:
    epoch = index.acquire_partition(TOPIC, 0, "appender-1").epoch
    commit(index, epoch, 0, "sssff", T0)
    # A second run of a 12-row list: 5 rows already recorded, its records start at offset 5.
    index.record_run(run_row(run_id="r2", start_offset=5, rows_total=12, rows_skipped=5))
    index.publish_progress([live(epoch, position=8, open_samples=3, open_successes=3)])
    p = source(index, tmp_path, Clock(T0 + 201)).status().progress
    assert (p.total, p.done) == (12, 5 + 3)
    # A run whose list could not be counted up front: its total is the rows read once ended.
    index.record_run(
        run_row(run_id="r3", started_at=T0 + 1, start_offset=5, rows_total=None, rows_read=9)
    )
    assert source(index, tmp_path, Clock(T0 + 201)).status().progress.total is None
    index.record_run(
        run_row(
            run_id="r3",
            started_at=T0 + 1,
            start_offset=5,
            rows_total=None,
            rows_read=9,
            finished_at=T0 + 300,
        )
    )
    p = source(index, tmp_path, Clock(T0 + 201)).status().progress
    assert (p.total, p.done) == (9, 3)


def test_distributed_progress_is_appended_records_of_the_rows_enqueued(
    index: SqliteIndex, tmp_path: Path
) -> None:
    bus = MemoryBus()
    bus.create_topic("urls", 1)
    producer = bus.producer()
    for n in range(20):
        producer.produce("urls", f"http://127.0.0.1/{n}.jpg".encode())
    producer.flush()
    fetcher = bus.consumer("fetcher")
    fetcher.commit({TopicPartition("urls", 0): 14})
    fetcher.close()
    epoch = index.acquire_partition(TOPIC, 0, "appender-1").epoch
    commit(index, epoch, 0, "sssff", T0)
    index.publish_progress([live(epoch)])
    s = source(index, tmp_path, Clock(T0 + 201), bus=bus).status()
    p = s.progress
    assert (p.enqueued, p.fetched) == (20, 14)
    assert (p.total, p.done, p.fraction) == (20, 12, 0.6)
    assert p.run is None and p.samples == 12
    text = render(s, now=T0 + 201)
    assert "progress: 12 of 20 rows enqueued done (60.0 %)" in text
    assert "fetchers: 14 of 20 enqueued rows committed" in text


def test_rows_are_counted_by_status_again_only_after_a_commit(
    index: SqliteIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one query over sample rows (counts by status and error) is not repeated at each
    refresh: only a commit changes its answer, and a commit adds a segment."""
    epoch = index.acquire_partition(TOPIC, 0, "appender-1").epoch
    commit(index, epoch, 0, "sssff", T0)
    calls = []
    counts = index.status_counts
    monkeypatch.setattr(index, "status_counts", lambda: calls.append(1) or counts())
    src = source(index, tmp_path, Clock(T0 + 201))
    for _ in range(3):
        assert src.status().progress.committed == 5
    assert len(calls) == 1
    commit(index, epoch, 5, "ss", T0)
    assert src.status().progress.committed == 7 and len(calls) == 2


def test_rates_are_measured_between_refreshes_when_no_appender_publishes(
    index: SqliteIndex, tmp_path: Path
) -> None:
    epoch = index.acquire_partition(TOPIC, 0, "appender-1").epoch
    clock = Clock(T0)
    src = source(index, tmp_path, clock)
    assert src.status().rates.source == "none"
    commit(index, epoch, 0, "sssssfffff", T0)
    clock.now += 5
    r = src.status().rates
    assert (r.source, r.samples_per_second, r.images_per_second) == ("observed", 2.0, 1.0)
