"""The appender publishes each owned partition's live progress to the index about every
second: the rows of its open segment (before the commit that records them), where it has
read to, its current rates and its latest rows; at shutdown its rates drop to 0."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from i2d_appender.partition import PartitionState
from i2d_appender.progress import ProgressPublisher
from i2d_segments.bus import TopicPartition
from i2d_segments.index import PartitionProgress
from tests.append_records import failure, success
from tests.servers.proc import wait_until
from tests.services.test_appender import TOPIC, Harness, run_until


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.index.close()


def test_open_segment_rows_are_published_before_their_commit(h: Harness) -> None:
    # 5 rows per segment: offsets 0..4 commit, 5..8 stay in the open segment.
    records = [success(0), failure(1), success(2), success(3), failure(4)]
    records += [success(5), failure(6), success(7), success(8)]
    h.send(records)
    app = h.appender(progress_interval_seconds=0.01)
    run_until(app, lambda: (p := h.index.progress()) != [] and p[0].position == 9)
    (p,) = h.index.progress()
    lease = h.index.partition(TOPIC, 0)
    assert lease is not None and lease.next_offset == 5  # the first segment only is committed
    assert (p.topic, p.partition, p.epoch, p.owner) == (TOPIC, 0, lease.epoch, app.settings.owner)
    assert (p.open_first_offset, p.open_samples, p.open_successes) == (5, 4, 3)
    assert p.open_errors == {"404 Not Found": 1}  # f6; f1 and f4 are committed
    assert p.open_segment_id == f"p00000/{5:020d}-e{lease.epoch}" and p.open_bytes > 0
    assert p.samples_per_second > 0 and p.images_per_second > 0 and p.window_seconds == 10
    assert [r["sample_id"] for r in p.recent] == [
        "s8",
        "s7",
        "f6",
        "s5",
        "f4",
        "s3",
        "s2",
        "f1",
        "s0",
    ]
    newest, failed = p.recent[0], p.recent[2]
    assert (newest["status"], newest["caption"], newest["error"]) == ("success", "caption 8", None)
    assert (newest["width"], newest["height"], newest["segment_id"]) == (8, 8, p.open_segment_id)
    assert (failed["status"], failed["error"], failed["caption"]) == (
        "failed_to_download",
        "404 Not Found",
        None,
    )
    assert p.recent[-1]["segment_id"] == f"p00000/{0:020d}-e{lease.epoch}"
    assert p.recent[0]["at"] >= p.recent[-1]["at"]


def test_shutdown_commits_and_publishes_rates_of_zero(h: Harness) -> None:
    h.send([success(n) for n in range(3)])
    app = h.appender(progress_interval_seconds=0.01)
    stop = threading.Event()
    thread = threading.Thread(target=app.run, args=(stop,))
    thread.start()
    try:
        wait_until(
            lambda: any(p.open_samples == 3 for p in h.index.progress()), 30, "3 rows published"
        )
    finally:
        stop.set()
        thread.join(30)
    (p,) = h.index.progress()
    assert p.position == 3 and h.index.partition(TOPIC, 0).next_offset == 3  # type: ignore[union-attr]
    assert (p.open_segment_id, p.open_first_offset, p.open_samples) == (None, None, 0)
    assert p.samples_per_second == p.images_per_second == 0
    assert [r["sample_id"] for r in p.recent] == ["s2", "s1", "s0"]


def test_progress_can_be_turned_off(h: Harness) -> None:
    h.send([success(n) for n in range(3)])
    app = h.appender(progress_interval_seconds=0)
    run_until(app, lambda: app.owned and next(iter(app.owned.values())).resume_offset == 3)
    assert h.index.progress() == []


class Recorder:
    """An index that keeps what is published."""

    def __init__(self) -> None:
        self.rows: list[Sequence[PartitionProgress]] = []

    def publish_progress(self, rows: Sequence[PartitionProgress]) -> None:
        self.rows.append(rows)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rates_are_those_of_the_last_window() -> None:
    index, clock = Recorder(), Clock()
    publisher = ProgressPublisher(
        index,  # type: ignore[arg-type]
        "me",
        interval=1.0,
        window=10.0,
        recent_rows=3,
        monotonic=clock,
        wall=clock,
    )
    tp = TopicPartition(TOPIC, 0)
    state = PartitionState(tp, epoch=1)
    owned: dict[TopicPartition, Any] = {tp: state}
    n = 0
    for _second in range(30):  # 20 rows/s (15 images/s) for 30 s
        for _ in range(20):
            record = success(n) if n % 4 else failure(n)
            publisher.appended(state, record.meta, "seg")
            n += 1
        clock.now += 1
        publisher.publish_due(owned)
    last = index.rows[-1][0]
    assert last.samples_per_second == pytest.approx(20, rel=0.01)
    assert last.images_per_second == pytest.approx(15, rel=0.01)
    assert [r["sample_id"] for r in last.recent] == [f"s{n - 1}", f"s{n - 2}", f"s{n - 3}"]
    # Then nothing for 11 s: the rate is the current one, 0, not an average since the start.
    for _second in range(11):
        clock.now += 1
        publisher.publish_due(owned)
    assert index.rows[-1][0].samples_per_second == 0
    # Half speed for 10 s: within a window the rate follows.
    for _second in range(10):
        for _ in range(10):
            publisher.appended(state, success(n).meta, "seg")
            n += 1
        clock.now += 1
        publisher.publish_due(owned)
    assert index.rows[-1][0].samples_per_second == pytest.approx(10, rel=0.11)
    # A new lease (epoch) counts afresh.
    state.epoch = 2
    clock.now += 1
    publisher.publish_due(owned)
    assert index.rows[-1][0].samples_per_second == 0 and index.rows[-1][0].recent == []
