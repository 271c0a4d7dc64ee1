"""What only the in-process bus offers (log start offsets, truncation) and what the embedded
mode needs from it beyond the shared contract: correct hand-offs between threads, and
consumers that block without burning CPU."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from i2d_segments.bus.base import (
    BusError,
    Consumer,
    Message,
    RebalanceListener,
    TopicPartition,
)
from i2d_segments.bus.memory import MemoryBus


def read(consumer: Consumer, count: int, timeout: float = 5.0) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} records"
        got += consumer.poll_batch(count - len(got), 0.1)
    return got


def test_a_log_can_start_at_a_given_offset() -> None:
    bus = MemoryBus()
    bus.create_topic("append", 2, start_offsets=[1000, 0])
    # Asking again for the same empty logs is fine (a restarted wiring step).
    bus.create_topic("append", 2, start_offsets=[1000, 0])
    producer = bus.producer()
    got: list[Message] = []

    def delivered(err: BusError | None, msg: Message | None) -> None:
        assert err is None and msg is not None
        got.append(msg)

    for key in (b"a", b"b", b"c", b"d"):
        producer.produce("append", key, key=key, on_delivery=delivered)
    producer.flush()
    p0 = sorted(m.offset for m in got if m.partition == 0)
    assert p0 == list(range(1000, 1000 + len(p0)))

    lag = bus.lag("appender", "append")
    assert [(p.committed, p.high_watermark) for p in lag] == [
        (None, 1000 + len(p0)),
        (None, 4 - len(p0)),
    ]
    consumer = bus.consumer("appender")
    consumer.subscribe(["append"])
    assert sorted((m.partition, m.offset) for m in read(consumer, 4)) == sorted(
        (m.partition, m.offset) for m in got
    )

    with pytest.raises(ValueError):
        bus.create_topic("append", 2, start_offsets=[5, 0])  # it has records now
    bus.create_topic("append", 2)  # without offsets: idempotent, as create_topics
    with pytest.raises(ValueError):
        bus.create_topic("other", 2, start_offsets=[1])


def test_truncate_before_moves_the_log_start() -> None:
    bus = MemoryBus()
    bus.create_topic("urls", 1)
    producer = bus.producer()
    for i in range(10):
        producer.produce("urls", f"u{i}".encode())
    tp = TopicPartition("urls", 0)

    slow = bus.consumer("slow")
    slow.subscribe(["urls"])
    assert [m.offset for m in read(slow, 4)] == [0, 1, 2, 3]
    slow.commit({tp: 4})

    bus.truncate_before("urls", 0, 6)
    bus.truncate_before("urls", 0, 2)  # below the start: nothing to do
    with pytest.raises(ValueError):
        bus.truncate_before("urls", 0, 11)

    # The log end is unchanged; a fresh group starts at the new log start...
    assert [(p.committed, p.high_watermark) for p in bus.lag("fresh", "urls")] == [(None, 10)]
    fresh = bus.consumer("fresh")
    fresh.subscribe(["urls"])
    assert [m.offset for m in read(fresh, 4)] == [6, 7, 8, 9]
    # ...and a member positioned below it continues there, as after Kafka retention.
    assert [m.offset for m in read(slow, 4)] == [6, 7, 8, 9]


def test_truncate_consumed_keeps_what_a_registered_group_has_not_committed() -> None:
    """The embedded run's two topics: `urls` read by the fetcher group, `append` whose log
    starts where the index stopped. (The semantics shared with the SQLite bus are tested on
    both in test_sqlite_bus.py.)"""
    bus = MemoryBus()
    fetcher = bus.consumer("fetcher")
    fetcher.subscribe(["urls"])  # registered before the topic exists
    bus.create_topic("urls", 1)
    bus.create_topic("append", 1, start_offsets=[100])
    producer = bus.producer()
    for i in range(5):
        producer.produce("urls", f"u{i}".encode())
        producer.produce("append", f"a{i}".encode())
    urls, append = TopicPartition("urls", 0), TopicPartition("append", 0)
    assert bus.truncate_consumed() == 0  # the fetcher group committed nothing yet

    read(fetcher, 5)
    fetcher.commit({urls: 5})
    assert bus.truncate_consumed() == 5  # append has no group: untouched
    appender = bus.consumer("appender")
    appender.commit({append: 103})  # registered by its commit alone
    assert bus.truncate_consumed() == 3
    bus.truncate_before("append", 0, 104)  # the explicit form still works alongside
    assert bus.truncate_consumed() == 0
    appender.commit({append: 500})  # past the log end: dropped up to the end only
    assert bus.truncate_consumed() == 1
    assert [(p.committed, p.high_watermark) for p in bus.lag("appender", "append")] == [(500, 105)]
    producer.produce("append", b"a5")
    reader = bus.consumer("reader")
    reader.subscribe(["append"])
    assert [(m.offset, m.value) for m in read(reader, 1)] == [(105, b"a5")]


def test_a_member_subscribed_before_the_topic_exists_gets_it_once_created() -> None:
    bus = MemoryBus()
    consumer = bus.consumer("g")
    consumer.subscribe(["later"])
    assert consumer.poll_batch(10, 0.05) == []
    bus.create_topic("later", 2)
    bus.producer().produce("later", b"x", key=b"k")
    assert [m.value for m in read(consumer, 1)] == [b"x"]
    assert consumer.assignment() == [TopicPartition("later", 0), TopicPartition("later", 1)]


def test_a_blocked_poll_does_not_spin() -> None:
    bus = MemoryBus()
    bus.create_topic("t", 1)
    consumer = bus.consumer("g")
    consumer.subscribe(["t"])
    consumer.poll_batch(1, 0.0)  # take the assignment
    cpu = time.thread_time()
    wall = time.monotonic()
    assert consumer.poll_batch(10, 1.0) == []
    assert time.monotonic() - wall >= 0.95
    assert time.thread_time() - cpu < 0.1


def test_delivery_callbacks_run_on_the_thread_that_polls() -> None:
    bus = MemoryBus()
    bus.create_topic("t", 1)
    producer = bus.producer()
    threads: list[int] = []
    worker = threading.Thread(
        target=lambda: producer.produce("t", b"x", on_delivery=lambda e, m: threads.append(0))
    )
    worker.start()
    worker.join()
    assert threads == []
    started = time.monotonic()
    producer.poll(5.0)  # a pending report is served at once
    assert threads == [0] and time.monotonic() - started < 1.0


@dataclass
class Ownership:
    """Who owns each partition right now, as the members' listeners report it."""

    owners: dict[TopicPartition, str] = field(default_factory=dict)
    violations: list[tuple[TopicPartition, str, str]] = field(default_factory=list)
    revoked: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class CommittingListener(RebalanceListener):
    """Commits what it consumed before giving a partition away (what the fetcher does), and
    records any partition granted while another member still owns it."""

    def __init__(self, name: str, consumer: Consumer, ownership: Ownership) -> None:
        self.name = name
        self.consumer = consumer
        self.positions: dict[TopicPartition, int] = {}
        self.ownership = ownership

    def on_assign(
        self, partitions: Sequence[TopicPartition]
    ) -> Mapping[TopicPartition, int] | None:
        with self.ownership.lock:
            for tp in partitions:
                if tp in self.ownership.owners:
                    self.ownership.violations.append((tp, self.ownership.owners[tp], self.name))
                self.ownership.owners[tp] = self.name
        return None

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
        self.consumer.commit({tp: self.positions[tp] for tp in partitions if tp in self.positions})
        for tp in partitions:  # a later ownership must not commit this one's position
            self.positions.pop(tp, None)
        with self.ownership.lock:
            self.ownership.revoked += len(partitions)
            for tp in partitions:
                if self.ownership.owners.get(tp) == self.name:
                    del self.ownership.owners[tp]


def test_members_joining_and_leaving_under_load_hand_off_without_loss_or_duplicates() -> None:
    bus = MemoryBus()
    bus.create_topic("work", 6)
    total = 3 * 400
    received: list[tuple[int, int]] = []
    received_lock = threading.Lock()
    ownership = Ownership()
    stop = threading.Event()

    def produce(worker: int) -> None:
        producer = bus.producer()
        rng = random.Random(worker)
        for i in range(400):
            producer.produce("work", f"{worker}-{i}".encode(), key=rng.randbytes(8))
            if i % 10 == 0:
                time.sleep(0.015)  # spread production over ~0.6 s: members come and go meanwhile
        producer.close()

    def consume(name: str, lifetime: float) -> None:
        consumer = bus.consumer("workers")
        listener = CommittingListener(name, consumer, ownership)
        consumer.subscribe(["work"], listener)
        until = time.monotonic() + lifetime
        while not stop.is_set() and time.monotonic() < until:
            batch = consumer.poll_batch(25, 0.05)
            for m in batch:
                listener.positions[m.tp] = m.offset + 1
            with received_lock:
                received.extend((m.partition, m.offset) for m in batch)
            if batch:
                consumer.commit({tp: listener.positions[tp] for tp in {m.tp for m in batch}})
        consumer.close()

    consumers = [
        threading.Thread(target=consume, args=("steady", 30.0)),
        threading.Thread(target=consume, args=("short", 0.3)),
        threading.Thread(target=consume, args=("late", 30.0)),
    ]
    producers = [threading.Thread(target=produce, args=(w,)) for w in range(3)]
    consumers[0].start()
    consumers[1].start()
    for t in producers:
        t.start()
    time.sleep(0.1)
    consumers[2].start()
    for t in producers:
        t.join()
    deadline = time.monotonic() + 10
    while len(received) < total and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    for t in consumers:
        t.join()

    assert ownership.revoked > 6  # partitions did move between members while records flowed
    assert ownership.violations == []
    assert len(received) == total
    assert len(set(received)) == total
    committed = {p.partition: p.committed for p in bus.lag("workers", "work")}
    ends = {p.partition: p.high_watermark for p in bus.lag("workers", "work")}
    assert committed == ends


def test_closed_clients_refuse_work() -> None:
    bus = MemoryBus()
    bus.create_topic("t", 1)
    consumer = bus.consumer("g")
    consumer.subscribe(["t"])
    consumer.close()
    consumer.close()  # idempotent
    with pytest.raises(BusError):
        consumer.poll_batch(1, 0.0)
    producer = bus.producer()
    producer.close()
    with pytest.raises(BusError):
        producer.produce("t", b"x")
