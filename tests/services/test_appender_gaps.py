"""Offsets the bus does not deliver: every APPEND offset ends in the index, or is counted and
logged as lost upstream. The bus deleted them (retention, before a segment opened or while
one is open: a consumer then resets to the log start), or it skipped records it still
holds (the appender reads the partition again from there, once)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from i2d_appender.service import AppenderService
from i2d_segments.bus import Consumer, Message, RebalanceListener, TopicPartition
from i2d_segments.bus.memory import MemoryBus
from tests.append_records import success
from tests.services.test_appender import TOPIC, Harness, run_until

SKIPPED = "img2dataset_appender_offsets_skipped_total"
READ_AGAIN = "img2dataset_appender_gaps_read_again_total"


class SkippingConsumer(Consumer):
    """A consumer whose bus leaves out the records at `hidden` offsets: on their first
    delivery only (`times=1`), or always."""

    def __init__(self, inner: Consumer, hidden: set[int], times: int | None) -> None:
        self.inner = inner
        self.hidden = hidden
        self.times = times

    def poll_batch(self, max_messages: int, timeout: float) -> list[Message]:
        batch = self.inner.poll_batch(max_messages, timeout)
        if self.times == 0 or not any(m.offset in self.hidden for m in batch):
            return batch
        if self.times is not None:
            self.times -= 1
        return [m for m in batch if m.offset not in self.hidden]

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener | None = None) -> None:
        self.inner.subscribe(topics, listener)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.inner.seek(tp, offset)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.inner.commit(offsets)

    def low_watermark(self, tp: TopicPartition) -> int:
        return self.inner.low_watermark(tp)

    def assignment(self) -> list[TopicPartition]:
        return self.inner.assignment()

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self.inner.pause(partitions)

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        self.inner.resume(partitions)

    def close(self) -> None:
        self.inner.close()


class SkippingBus(MemoryBus):
    """A MemoryBus whose appender consumers skip `hidden` offsets of APPEND."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: set[int] = set()
        self.times: int | None = 1

    def consumer(self, group_id: str) -> Consumer:
        inner = super().consumer(group_id)
        return SkippingConsumer(inner, self.hidden, self.times) if self.hidden else inner


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path, SkippingBus())
    yield harness
    harness.index.close()


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def committed_samples(h: Harness, sent: int) -> list[str]:
    """The sample ids of the first `sent` rows the index holds; each once: the segments'
    sample counts add up to them."""
    held = sorted(h.index.known_samples(success(i).meta.sample_id for i in range(sent)))
    assert sum(seg.sample_count for seg in h.index.segments()) == len(held)
    return held


def sample_ids(numbers: Iterable[int]) -> list[str]:
    return sorted(success(i).meta.sample_id for i in numbers)


def test_records_the_bus_skipped_and_still_holds_are_read_again_and_appended_once(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    bus = h.bus
    assert isinstance(bus, SkippingBus)
    bus.hidden.update({2, 3})  # left out of their first delivery only
    h.send([success(i) for i in range(10)])
    skipped, again = counter(SKIPPED), counter(READ_AGAIN)
    app: AppenderService = h.appender()
    with caplog.at_level(logging.WARNING, logger="i2d_appender.service"):
        run_until(app, lambda: len(h.index.segments()) == 2)
    assert [(s.first_offset, s.last_offset) for s in h.index.segments()] == [(0, 4), (5, 9)]
    assert committed_samples(h, 10) == sample_ids(range(10))
    assert counter(READ_AGAIN) == again + 1
    assert counter(SKIPPED) == skipped
    assert "offsets 2..3 were not delivered though the bus holds them" in caplog.text


def test_records_the_bus_never_delivers_are_read_again_once_then_counted_as_lost(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    bus = h.bus
    assert isinstance(bus, SkippingBus)
    bus.hidden.update({2, 3})
    bus.times = None  # never delivered
    h.send([success(i) for i in range(10)])
    skipped, again = counter(SKIPPED), counter(READ_AGAIN)
    app = h.appender()
    app.drain()  # the last, partial segment is committed too
    with caplog.at_level(logging.WARNING, logger="i2d_appender.service"):
        run_until(app, lambda: h.index.partition(TOPIC, 0).next_offset == 10)  # type: ignore[union-attr]
    assert committed_samples(h, 10) == sample_ids(i for i in range(10) if i not in (2, 3))
    assert counter(READ_AGAIN) == again + 1
    assert counter(SKIPPED) == skipped + 2
    assert "holds offsets 2..3 but does not deliver them" in caplog.text


def test_records_deleted_while_a_segment_is_open_are_counted_and_logged(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.send([success(i) for i in range(8)])
    skipped = counter(SKIPPED)
    app = h.appender(poll_max_records=3, number_sample_per_shard=100)
    run_until(app, lambda: app.owned[TopicPartition(TOPIC, 0)].segment is not None)
    segment = app.owned[TopicPartition(TOPIC, 0)].segment
    assert segment is not None and segment.last_offset == 2  # offsets 0..2 in the open segment
    # Retention deletes 3..5 before they are read: the consumer resets to the log start, 6.
    h.bus.truncate_before(TOPIC, 0, 6)
    with caplog.at_level(logging.WARNING, logger="i2d_appender.service"):
        app.drain()
        run_until(app, lambda: len(h.index.segments()) == 1)
    (seg,) = h.index.segments()
    assert (seg.first_offset, seg.last_offset) == (0, 7)
    assert committed_samples(h, 8) == sample_ids((0, 1, 2, 6, 7))
    assert counter(SKIPPED) == skipped + 3
    assert "offsets 3..5 are gone from the bus" in caplog.text
