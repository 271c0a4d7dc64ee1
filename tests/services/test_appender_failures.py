"""The appender's partition phases under failures, over the embedded adapters: a lease not
granted is retried (ACQUIRING -> WAITING -> APPENDING), a failed index commit waits with its
segment pending and is retried before the partition reads again, and failures that outlast
`commit_attempts` stop the partition (readiness fails, nothing is skipped)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from i2d_appender.partition import TRANSITIONS, PartitionState, Phase
from i2d_appender.retry import Backoff, RetryPolicy
from i2d_appender.service import AppenderService
from i2d_segments.bus import TopicPartition
from i2d_segments.index import IndexAccessError, PartitionLease, SegmentCommit, SegmentMove
from i2d_segments.index.sqlite import SqliteIndex
from tests.append_records import success
from tests.services.test_appender import TOPIC, Harness

TP = TopicPartition(TOPIC, 0)


class FlakyIndex(SqliteIndex):
    """Fails the next `acquire_failures` leases and `commit_failures` commits, and acknowledges
    the next `lost_commits` commits without keeping them (an index that crashed before its
    commits were durable, or failed over to an asynchronous replica)."""

    acquire_failures = 0
    commit_failures = 0
    lost_commits = 0

    def acquire_partition(self, topic: str, partition: int, owner: str) -> PartitionLease:
        if self.acquire_failures:
            self.acquire_failures -= 1
            raise IndexAccessError("index unavailable (test)")
        return super().acquire_partition(topic, partition, owner)

    def commit_segment(self, commit: SegmentCommit) -> list[SegmentMove]:
        if self.commit_failures:
            self.commit_failures -= 1
            raise IndexAccessError("commit failed (test)")
        if self.lost_commits:
            self.lost_commits -= 1
            return []
        return super().commit_segment(commit)


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    harness.index.close()
    harness.index = FlakyIndex(tmp_path / "index.sqlite")
    harness.index.migrate()
    yield harness
    harness.index.close()


def flaky(h: Harness) -> FlakyIndex:
    assert isinstance(h.index, FlakyIndex)
    return h.index


def started(h: Harness, **kw: object) -> AppenderService:
    app = h.appender(retry_base_seconds=0.01, retry_max_seconds=0.02, **kw)
    app.consumer.subscribe([TOPIC], listener=app)
    return app


def step_until(app: AppenderService, done: object, steps: int = 300) -> None:
    for _ in range(steps):
        app.step()
        if callable(done) and done():
            return
    raise AssertionError("condition not reached")


def test_a_lease_refused_at_assignment_is_retried(h: Harness) -> None:
    flaky(h).acquire_failures = 2
    h.send([success(i) for i in range(5)])
    app = started(h)
    app.step()
    state = app.owned[TP]
    assert state.phase is Phase.ACQUIRING and state.epoch is None
    step_until(app, lambda: len(h.index.segments()) == 1)
    assert app.owned[TP].phase is Phase.APPENDING
    assert h.index.partition(TOPIC, 0).next_offset == 5  # type: ignore[union-attr]


def test_a_failed_commit_is_retried_before_reading_on(h: Harness) -> None:
    flaky(h).commit_failures = 2
    h.send([success(i) for i in range(7)])
    app = started(h)
    step_until(app, lambda: app.owned.get(TP) is not None and app.owned[TP].pending is not None)
    state = app.owned[TP]
    assert state.phase is Phase.WAITING and state.paused and not state.accepting
    step_until(app, lambda: len(h.index.segments()) == 1)
    app.drain()
    step_until(app, lambda: len(h.index.segments()) == 2)
    assert [(s.first_offset, s.last_offset) for s in h.index.segments()] == [(0, 4), (5, 6)]
    assert app.owned[TP].phase is Phase.APPENDING and app.stopped_partitions() == {}


def test_commits_the_index_lost_are_written_again_from_its_position(h: Harness) -> None:
    flaky(h).lost_commits = 1
    records = [success(i) for i in range(12)]
    h.send(records)
    refused = metrics_value("img2dataset_appender_position_refused_total")
    app = started(h)
    # 0..4 is acknowledged and lost; 5..9 follows offset 5, which the index never reached.
    step_until(app, lambda: len(h.index.segments()) == 2)
    app.drain()
    step_until(app, lambda: len(h.index.segments()) == 3)
    segments = h.index.segments()
    assert [(s.first_offset, s.last_offset, s.epoch) for s in segments] == [
        (0, 4, 2),
        (5, 9, 2),
        (10, 11, 2),
    ]
    assert h.index.partition(TOPIC, 0).next_offset == 12  # type: ignore[union-attr]
    ids = [r.meta.sample_id for r in records]
    assert h.index.known_samples(ids) == set(ids)
    assert metrics_value("img2dataset_appender_position_refused_total") == refused + 1
    assert app.owned[TP].phase is Phase.APPENDING and app.stopped_partitions() == {}


def metrics_value(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None
    return value


def test_failures_outlasting_commit_attempts_stop_the_partition(h: Harness) -> None:
    flaky(h).commit_failures = 1000
    h.send([success(i) for i in range(5)])
    app = started(h, commit_attempts=3)
    step_until(app, lambda: bool(app.stopped_partitions()))
    state = app.owned[TP]
    assert state.phase is Phase.STOPPED and state.pending is None and state.paused
    assert app.stopped_partitions() == {TP: "index commit failed 3 times: commit failed (test)"}
    assert app.health.readiness()["partitions"] is False
    for _ in range(5):
        app.step()  # stopped for good: no retry
    assert flaky(h).commit_failures == 1000 - 3
    assert h.index.segments() == [] and h.index.partition(TOPIC, 0).next_offset == 0  # type: ignore[union-attr]


def test_transitions() -> None:
    state = PartitionState(TP)
    assert state.phase is Phase.ACQUIRING and not state.accepting
    state.deferred()  # a failed lease: still acquiring
    assert state.phase is Phase.ACQUIRING
    state.leased(3, 10)
    assert (state.phase, state.epoch, state.next_offset, state.reannounce_below) == (
        Phase.WAITING,
        3,
        10,
        10,
    )
    state.resumed()
    assert state.accepting
    state.needs_new_lease()
    assert state.phase is Phase.ACQUIRING and state.epoch is None
    state.stop("broken")
    assert state.phase is Phase.STOPPED and state.stop_reason == "broken"
    with pytest.raises(AssertionError):
        state.resumed()
    assert TRANSITIONS[Phase.STOPPED] == frozenset()
    with pytest.raises(AssertionError):
        PartitionState(TP).resumed()  # not leased yet


def test_the_backoff_doubles_up_to_its_cap_then_gives_up() -> None:
    now = [100.0]
    policy = RetryPolicy(attempts=5, base=0.5, cap=1.5, clock=lambda: now[0])
    backoff = Backoff()
    assert [policy.failed(backoff) for _ in range(4)] == [0.5, 1.0, 1.5, 1.5]
    assert backoff.retry_at == 101.5 and not policy.due(backoff)
    now[0] = 101.5
    assert policy.due(backoff)
    assert policy.failed(backoff) is None and backoff.failures == 5  # the 5th: give up
    backoff.reset()
    assert policy.failed(backoff) == 0.5
    # A partition being assigned cannot stop yet: its failures are counted all the same.
    assert RetryPolicy(attempts=1, base=0.5, cap=1.5).later(Backoff()) == 0.5
