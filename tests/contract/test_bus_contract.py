"""The Bus port's contract, run against every adapter (in-process memory, SQLite file,
Kafka on Tansu).

Every service is written against the port, so these are the behaviours they rely on: where a
record lands, what delivery reports say, who owns a partition in a group and when the
listener hears about it, where a consumer starts, and what `lag` reports.

Kafka groups take a second or two to form on Tansu, so tests that need a consumer wait with
`poll_until` instead of fixed sleeps. `solo_bus` adds a Kafka
variant with the cooperative-sticky assignor for tests with one member at a time: Tansu
cannot finish a cooperative rebalance between two members, but one member exercises the
incremental assign/unassign path of the adapter.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from i2d_segments.bus.base import (
    Bus,
    BusError,
    Consumer,
    EmbeddedBus,
    HeldPartitions,
    Message,
    Producer,
    RebalanceListener,
    TopicPartition,
    partition_for_key,
)
from i2d_segments.bus.kafka import KafkaBus
from i2d_segments.bus.memory import MemoryBus
from i2d_segments.bus.sqlite import SqliteBus
from tests.servers.kafka import KAFKA_TEST_CONFIG

GROUP_TIMEOUT = 30.0  # a Kafka join or rebalance on Tansu takes ~1-2 s


def _make_bus(kind: str, request: pytest.FixtureRequest) -> Bus:
    if kind == "memory":
        return MemoryBus()
    if kind == "sqlite":
        return SqliteBus(request.getfixturevalue("tmp_path") / "bus.sqlite")
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    config = dict(KAFKA_TEST_CONFIG)
    if kind == "kafka-cooperative":
        config["partition.assignment.strategy"] = "cooperative-sticky"
    return KafkaBus(bootstrap, config=config)


@pytest.fixture(params=["memory", "sqlite", "kafka"])
def bus(request: pytest.FixtureRequest) -> Iterator[Bus]:
    b = _make_bus(request.param, request)
    yield b
    b.close()


@pytest.fixture(params=["memory", "sqlite", "kafka", "kafka-cooperative"])
def solo_bus(request: pytest.FixtureRequest) -> Iterator[Bus]:
    b = _make_bus(request.param, request)
    yield b
    b.close()


@dataclass
class Clients:
    """Producers and consumers of one test, closed at teardown even when the test fails."""

    opened: list[Producer | Consumer] = field(default_factory=list)

    def producer(self, bus: Bus) -> Producer:
        p = bus.producer()
        self.opened.append(p)
        return p

    def consumer(self, bus: Bus, group: str) -> Consumer:
        c = bus.consumer(group)
        self.opened.append(c)
        return c


@pytest.fixture
def clients() -> Iterator[Clients]:
    c = Clients()
    yield c
    for client in reversed(c.opened):
        with contextlib.suppress(BusError):
            client.close()


@pytest.fixture
def name() -> str:
    """A fresh prefix, so topics and groups never collide with another test's."""
    return f"c{uuid.uuid4().hex[:12]}"


class Recorder(RebalanceListener):
    """Appends (member, event, sorted partitions) to a shared list; on_assign returns `seeks`."""

    def __init__(
        self,
        member: str,
        events: list[tuple[str, str, tuple[TopicPartition, ...]]],
        seeks: Mapping[TopicPartition, int] | None = None,
    ) -> None:
        self.member = member
        self.events = events
        self.seeks = seeks

    def on_assign(
        self, partitions: Sequence[TopicPartition]
    ) -> Mapping[TopicPartition, int] | None:
        self.events.append((self.member, "assign", tuple(sorted(partitions))))
        return self.seeks

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
        self.events.append((self.member, "revoke", tuple(sorted(partitions))))

    def on_lost(self, partitions: Sequence[TopicPartition]) -> None:
        self.events.append((self.member, "lost", tuple(sorted(partitions))))


class CommitOnRevoke(Recorder):
    """Commits `offsets` from on_revoke, as a service finishing its work on a partition does."""

    def __init__(
        self,
        member: str,
        events: list[tuple[str, str, tuple[TopicPartition, ...]]],
        consumer: Consumer,
        offsets: Mapping[TopicPartition, int],
    ) -> None:
        super().__init__(member, events)
        self.consumer = consumer
        self.offsets = offsets

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
        self.consumer.commit({tp: o for tp, o in self.offsets.items() if tp in partitions})
        super().on_revoke(partitions)


def produce_all(
    producer: Producer,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes]],
    flush_each: bool = False,
) -> list[Message]:
    """Produce (key, value) records; return their delivery reports in produce order.

    `flush_each` puts every record in its own batch: Tansu's ListOffsets reports the last
    batch's base offset + 1 as the log end, exact only for one-record batches (Apache Kafka
    is exact either way), and `lag` reads that."""
    reports: dict[int, Message] = {}

    def on_delivery(i: int) -> Callable[[BusError | None, Message | None], None]:
        def report(err: BusError | None, msg: Message | None) -> None:
            assert err is None, err
            assert msg is not None
            reports[i] = msg

        return report

    for i, (key, value) in enumerate(records):
        producer.produce(topic, value, key=key, on_delivery=on_delivery(i))
        if flush_each:
            producer.flush(10)
    producer.flush(10)
    return [reports[i] for i in range(len(records))]


def poll_until(
    consumer: Consumer,
    done: Callable[[list[Message]], bool],
    timeout: float = GROUP_TIMEOUT,
    max_messages: int = 100,
) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s: {len(got)} records, "
                f"assignment {consumer.assignment()}"
            )
        batch = consumer.poll_batch(max_messages, 0.2)
        assert len(batch) <= max_messages
        got += batch
    return got


def all_partitions(topic: str, n: int) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(n)]


# -- producing ---------------------------------------------------------------------------------


def test_keyed_records_land_on_one_partition_in_order_and_one_member_reads_all(
    bus: Bus, clients: Clients, name: str
) -> None:
    bus.create_topics({name: 4})
    keys = [b"item-a", b"item-b", b"item-c"]
    records = [(keys[i % 3], f"{i}".encode()) for i in range(30)]
    reports = produce_all(clients.producer(bus), name, records)

    for key in keys:
        mine = [m for (k, _), m in zip(records, reports, strict=True) if k == key]
        assert {m.partition for m in mine} == {partition_for_key(key, 4)}
        offsets = [m.offset for m in mine]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
        assert all(m.key == key and m.topic == name for m in mine)

    events: list[tuple[str, str, tuple[TopicPartition, ...]]] = []
    consumer = clients.consumer(bus, f"{name}-g")
    consumer.subscribe([name], Recorder("c", events))
    got = poll_until(consumer, lambda got: len(got) >= 30, max_messages=7)

    assert consumer.assignment() == all_partitions(name, 4)
    assert [e[:2] for e in events] == [("c", "assign")]
    assert sorted(events[0][2]) == all_partitions(name, 4)
    assert len(got) == 30
    for key in keys:
        # A key's records come back in the order they were produced.
        values = [m.value for m in got if m.key == key]
        assert values == [v for k, v in records if k == key]


def test_keyless_records_go_round_robin_with_increasing_offsets(
    bus: Bus, clients: Clients, name: str
) -> None:
    bus.create_topics({name: 3})
    producer = clients.producer(bus)
    reports: list[Message | None] = []
    for i in range(12):
        producer.produce(name, f"v{i}".encode(), on_delivery=lambda e, m: reports.append(m))
    # Delivery reports are served from poll/flush only, never from produce.
    assert reports == []
    producer.flush(10)

    by_value = {m.value: m for m in reports if m is not None}
    assert len(by_value) == 12
    for i in range(12):
        msg = by_value[f"v{i}".encode()]
        assert msg.partition == i % 3
        assert msg.offset == i // 3  # a fresh topic: each partition's offsets from 0
        assert msg.key is None and msg.timestamp_ms > 0


def test_produce_to_an_unknown_topic_fails(bus: Bus, clients: Clients, name: str) -> None:
    with pytest.raises(BusError):
        clients.producer(bus).produce(f"{name}-missing", b"x", key=b"k")
    with pytest.raises(BusError):
        bus.partition_count(f"{name}-missing")


def test_partition_count_and_create_topics_is_idempotent(bus: Bus, name: str) -> None:
    bus.create_topics({f"{name}-a": 3, f"{name}-b": 1})
    assert bus.partition_count(f"{name}-a") == 3
    assert bus.partition_count(f"{name}-b") == 1
    bus.create_topics({f"{name}-a": 3})
    # An existing topic is left as it is, as Kafka does.
    bus.create_topics({f"{name}-a": 5, f"{name}-c": 2})
    assert bus.partition_count(f"{name}-a") == 3
    assert bus.partition_count(f"{name}-c") == 2


def test_large_value_round_trip(bus: Bus, clients: Clients, name: str) -> None:
    bus.create_topics({name: 2})
    big = os.urandom(3 * 1024 * 1024 + 17)
    (report,) = produce_all(clients.producer(bus), name, [(b"big", big)])
    assert report.partition == partition_for_key(b"big", 2)

    consumer = clients.consumer(bus, f"{name}-g")
    consumer.subscribe([name])
    (msg,) = poll_until(consumer, lambda got: len(got) >= 1)
    assert msg.value == big and msg.key == b"big"
    assert (msg.partition, msg.offset) == (report.partition, report.offset)


# -- consumer groups ---------------------------------------------------------------------------


def test_two_members_split_the_partitions_and_close_hands_them_back(
    bus: Bus, clients: Clients, name: str
) -> None:
    bus.create_topics({name: 4})
    group = f"{name}-g"
    events: list[tuple[str, str, tuple[TopicPartition, ...]]] = []
    everything = set(all_partitions(name, 4))

    c1 = clients.consumer(bus, group)
    c1.subscribe([name], Recorder("c1", events))
    poll_until(c1, lambda _: set(c1.assignment()) == everything)

    c2 = clients.consumer(bus, group)
    c2.subscribe([name], Recorder("c2", events))

    def split() -> bool:
        a1, a2 = set(c1.assignment()), set(c2.assignment())
        return bool(a1) and bool(a2) and not a1 & a2 and a1 | a2 == everything

    deadline = time.monotonic() + GROUP_TIMEOUT
    while not split():
        assert time.monotonic() < deadline, (c1.assignment(), c2.assignment(), events)
        c1.poll_batch(10, 0.1)
        c2.poll_batch(10, 0.1)

    # A partition that moved was revoked from c1 before c2 was told it owns it.
    for tp in c2.assignment():
        revoked = next(i for i, e in enumerate(events) if e[:2] == ("c1", "revoke") and tp in e[2])
        granted = max(i for i, e in enumerate(events) if e[:2] == ("c2", "assign") and tp in e[2])
        assert revoked < granted

    c2_owned = tuple(c2.assignment())
    before = len(events)
    c2.close()
    assert ("c2", "revoke", c2_owned) in events[before:]

    poll_until(c1, lambda _: set(c1.assignment()) == everything)


def test_a_paused_partition_comes_back_unpaused_when_reassigned(
    bus: Bus, clients: Clients, name: str
) -> None:
    """A pause belongs to one ownership: a partition paused, revoked and assigned again
    delivers records, or a consumer that paused it on a retry would stall with nothing said."""
    bus.create_topics({name: 2})
    group = f"{name}-g"
    everything = set(all_partitions(name, 2))
    c1 = clients.consumer(bus, group)
    c1.subscribe([name])
    poll_until(c1, lambda _: set(c1.assignment()) == everything)
    c1.pause(sorted(everything))

    c2 = clients.consumer(bus, group)
    c2.subscribe([name])
    deadline = time.monotonic() + GROUP_TIMEOUT
    while not c2.assignment():
        assert time.monotonic() < deadline, (c1.assignment(), c2.assignment())
        c1.poll_batch(10, 0.1)
        c2.poll_batch(10, 0.1)
    moved = set(c2.assignment())
    c2.close()
    poll_until(c1, lambda _: set(c1.assignment()) == everything)

    produce_all(clients.producer(bus), name, [(None, f"v{i}".encode()) for i in range(6)])
    got = poll_until(c1, lambda got: {m.tp for m in got} >= moved)
    assert {m.tp for m in got} >= moved


def test_on_assign_offsets_are_honoured_and_seek_moves_the_position(
    solo_bus: Bus, clients: Clients, name: str
) -> None:
    bus = solo_bus
    bus.create_topics({name: 2})
    produce_all(clients.producer(bus), name, [(None, f"v{i}".encode()) for i in range(20)])
    tp0, tp1 = all_partitions(name, 2)

    events: list[tuple[str, str, tuple[TopicPartition, ...]]] = []
    consumer = clients.consumer(bus, f"{name}-g")
    consumer.subscribe([name], Recorder("c", events, seeks={tp0: 7, tp1: 3}))
    got = poll_until(consumer, lambda got: len(got) >= 10)
    assert sorted((m.partition, m.offset) for m in got) == [(0, o) for o in range(7, 10)] + [
        (1, o) for o in range(3, 10)
    ]

    consumer.seek(tp0, 2)
    again = poll_until(consumer, lambda got: len(got) >= 8)
    assert [(m.partition, m.offset) for m in again] == [(0, o) for o in range(2, 10)]

    with pytest.raises(BusError):
        consumer.seek(TopicPartition(name, 9), 0)


def test_commit_then_a_new_member_resumes_there_and_lag_counts_the_rest(
    solo_bus: Bus, clients: Clients, name: str
) -> None:
    bus = solo_bus
    bus.create_topics({name: 2})
    group = f"{name}-g"
    tp0, tp1 = all_partitions(name, 2)
    # Keyless: partitions 0 and 1 get 5 records each (offsets 0-4).
    produce_all(
        clients.producer(bus), name, [(None, f"v{i}".encode()) for i in range(10)], flush_each=True
    )

    assert [(p.partition, p.committed, p.high_watermark, p.lag) for p in bus.lag(group, name)] == [
        (0, None, 5, 5),
        (1, None, 5, 5),
    ]

    events: list[tuple[str, str, tuple[TopicPartition, ...]]] = []
    first = clients.consumer(bus, group)
    first.subscribe([name], CommitOnRevoke("first", events, first, {tp0: 3}))
    poll_until(first, lambda got: len(got) >= 10)
    first.commit({tp1: 5})
    first.close()
    # Leaving the group revokes through the listener (from close, on this thread), which may
    # still commit there: the services' last commit happens exactly so.
    assert events[-1] == ("first", "revoke", (tp0, tp1))

    lag = {p.partition: p for p in bus.lag(group, name)}
    assert (lag[0].committed, lag[0].high_watermark, lag[0].lag) == (3, 5, 2)
    assert (lag[1].committed, lag[1].high_watermark, lag[1].lag) == (5, 5, 0)

    second = clients.consumer(bus, group)
    second.subscribe([name])
    got = poll_until(second, lambda got: len(got) >= 2)
    assert sorted((m.partition, m.offset) for m in got) == [(0, 3), (0, 4)]
    # Nothing more: partition 1 was committed to its end.
    assert second.poll_batch(10, 0.5) == []


def test_pause_stops_a_partition_until_resume(bus: Bus, clients: Clients, name: str) -> None:
    bus.create_topics({name: 2})
    tp0, tp1 = all_partitions(name, 2)
    consumer = clients.consumer(bus, f"{name}-g")
    consumer.subscribe([name])
    poll_until(consumer, lambda _: consumer.assignment() == [tp0, tp1])

    consumer.pause([tp0])
    produce_all(clients.producer(bus), name, [(None, f"v{i}".encode()) for i in range(6)])
    got = poll_until(consumer, lambda got: len(got) >= 3)
    assert {m.partition for m in got} == {1}
    assert consumer.poll_batch(10, 1.0) == []

    consumer.resume([tp0])
    got = poll_until(consumer, lambda got: len(got) >= 3)
    assert [(m.partition, m.offset) for m in got] == [(0, 0), (0, 1), (0, 2)]


def test_poll_batch_waits_for_the_first_record_and_returns_it_promptly(
    bus: Bus, clients: Clients, name: str
) -> None:
    bus.create_topics({name: 1})
    consumer = clients.consumer(bus, f"{name}-g")
    consumer.subscribe([name])
    poll_until(consumer, lambda _: consumer.assignment() == [TopicPartition(name, 0)])

    started = time.monotonic()
    assert consumer.poll_batch(10, 0.5) == []
    assert 0.45 <= time.monotonic() - started < 2.5

    producer = clients.producer(bus)
    timer = threading.Timer(0.3, lambda: (producer.produce(name, b"late"), producer.flush(5)))
    timer.start()
    try:
        started = time.monotonic()
        batch = consumer.poll_batch(10, 20.0)
        waited = time.monotonic() - started
    finally:
        timer.join()
    assert [m.value for m in batch] == [b"late"]
    # It returned when the record arrived, not at the timeout (nor after waiting for 10).
    assert waited < 5.0


def test_kafka_member_that_stops_polling_loses_its_partitions_through_on_lost(
    kafka_bootstrap: str, clients: Clients, name: str
) -> None:
    """Kafka only: the memory bus has no session timeouts, so nothing is ever lost there (the
    SQLite bus's lost members are in its own tests)."""
    config = {**KAFKA_TEST_CONFIG, "max.poll.interval.ms": 2000}
    bus = KafkaBus(kafka_bootstrap, config=config)
    try:
        bus.create_topics({name: 2})
        events: list[tuple[str, str, tuple[TopicPartition, ...]]] = []
        consumer = clients.consumer(bus, f"{name}-g")
        consumer.subscribe([name], Recorder("c", events))
        poll_until(consumer, lambda _: len(consumer.assignment()) == 2)

        time.sleep(3.0)  # past max.poll.interval.ms: the group moves on without this member
        poll_until(consumer, lambda _: ("c", "lost", tuple(all_partitions(name, 2))) in events)
        assert ("c", "revoke", tuple(all_partitions(name, 2))) not in events
    finally:
        bus.close()


def test_held_partitions_are_the_members_assignment(bus: Bus, clients: Clients, name: str) -> None:
    """What readiness reads: the partitions a member was given, from the rebalance callbacks."""
    bus.create_topics({name: 2})
    held = HeldPartitions()
    consumer = clients.consumer(bus, f"{name}-g")
    assert held.held() == []  # not joined yet: not ready
    consumer.subscribe([name], listener=held)
    poll_until(consumer, lambda _: len(held.held()) == 2)
    assert held.held() == [TopicPartition(name, 0), TopicPartition(name, 1)]
    assert sorted(consumer.assignment()) == held.held()


def test_low_watermark_is_the_first_offset_the_partition_still_holds(
    bus: Bus, clients: Clients, name: str
) -> None:
    """What the appender asks when offsets are missing: whether the bus deleted them. (Tansu
    answers no DeleteRecords, so only the embedded buses delete records here: once every
    group has committed past them, as retention would.)"""
    bus.create_topics({name: 1})
    tp = TopicPartition(name, 0)
    produce_all(clients.producer(bus), name, [(None, f"v{i}".encode()) for i in range(6)])
    consumer = clients.consumer(bus, f"{name}-g")
    consumer.subscribe([name])
    poll_until(consumer, lambda got: len(got) >= 6)
    assert consumer.low_watermark(tp) == 0
    consumer.commit({tp: 4})
    if isinstance(bus, EmbeddedBus):
        bus.truncate_consumed()
        assert consumer.low_watermark(tp) == 4
    else:
        assert consumer.low_watermark(tp) == 0  # a commit deletes nothing on Kafka
