"""What only the durable SQLite bus does, beyond the shared contract (`test_bus_contract.py`):
several processes on one file (producers that never collide, a killed member whose
partitions move on at once, wake-ups across processes, lag read elsewhere), durability across
close and reopen, the file's settings, back-pressure and write errors; plus
`truncate_consumed`, whose semantics the memory bus shares.

Other processes are `sys.executable -c` children that talk over stdin/stdout lines.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from i2d_segments.bus import EmbeddedBus
from i2d_segments.bus import sqlite_schema as schema
from i2d_segments.bus.base import (
    BusError,
    Consumer,
    Message,
    RebalanceListener,
    TopicPartition,
)
from i2d_segments.bus.memory import MemoryBus
from i2d_segments.bus.sqlite import SqliteBus

# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "bus.sqlite"


@pytest.fixture
def bus(path: Path) -> Iterator[SqliteBus]:
    b = SqliteBus(path)
    yield b
    b.close()


class Child:
    """A Python process running `code`, fed and read line by line."""

    def __init__(self, code: str, *args: object) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put("")  # EOF

    def read(self, timeout: float = 30.0) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from the child within {timeout}s") from None
        if not line:
            self.proc.wait(5)
            assert self.proc.stderr is not None
            raise AssertionError(f"child exited {self.proc.returncode}: {self.proc.stderr.read()}")
        return line

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30.0) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout) == 0, self.proc.stderr.read() if self.proc.stderr else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def children() -> Iterator[Callable[..., Child]]:
    started: list[Child] = []

    def start(code: str, *args: object) -> Child:
        child = Child(code, *args)
        started.append(child)
        return child

    yield start
    for child in started:
        child.kill()


def read(consumer: Consumer, count: int, timeout: float = 10.0) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} records"
        got += consumer.poll_batch(count - len(got), 0.1)
    return got


def poll_until(consumer: Consumer, done: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out; assignment {consumer.assignment()}"
        consumer.poll_batch(100, 0.05)


def produce(bus: EmbeddedBus, topic: str, values: Sequence[bytes], key: bytes | None = None):
    producer = bus.producer()
    for v in values:
        producer.produce(topic, v, key=key)
    producer.flush(10)
    producer.close()


class Recorder(RebalanceListener):
    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[TopicPartition, ...]]] = []

    def on_assign(
        self, partitions: Sequence[TopicPartition]
    ) -> Mapping[TopicPartition, int] | None:
        self.events.append(("assign", tuple(sorted(partitions))))
        return None

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
        self.events.append(("revoke", tuple(sorted(partitions))))

    def on_lost(self, partitions: Sequence[TopicPartition]) -> None:
        self.events.append(("lost", tuple(sorted(partitions))))


# -- several processes ---------------------------------------------------------------------------

PRODUCER = r"""
import json, sys, time
from i2d_segments.bus.sqlite import SqliteBus
path, worker, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
bus = SqliteBus(path)  # both children open a fresh file at once: schema created once
bus.create_topic("shared", 3)
print("ready", flush=True)
sys.stdin.readline()
producer = bus.producer()
reports = []
for i in range(count):
    value = f"{worker}-{i}".encode()
    key = value if i % 2 else None  # keyed and round-robin records
    report = lambda e, m: reports.append([m.value.decode(), m.partition, m.offset])
    producer.produce("shared", value, key=key, on_delivery=report)
    if i % 50 == 49:
        producer.flush(30)  # many small transactions, interleaved with the other process:
        # round r starts once the other process has written r - 1 rounds (lockstep, so the
        # two really write at the same time whatever the scheduler does).
        done = (i + 1) // 50
        deadline = time.monotonic() + 30
        while sum(p.high_watermark for p in bus.lag("-", "shared")) < 50 * (2 * done - 1):
            assert time.monotonic() < deadline, "the other producer stopped"
            time.sleep(0.002)
producer.close()
bus.close()
print(json.dumps(reports), flush=True)
"""


def test_two_producer_processes_never_collide(path: Path, children) -> None:
    count = 1500
    writers = [children(PRODUCER, path, f"w{w}", count) for w in range(2)]
    for w in writers:
        assert w.read() == "ready"
    for w in writers:
        w.send("go")
    reports = [json.loads(w.read(60)) for w in writers]
    for w in writers:
        w.finish()

    delivered = {value: (p, o) for r in reports for value, p, o in r}
    assert len(delivered) == 2 * count
    assert len(set(delivered.values())) == 2 * count  # no two records at one offset

    bus = SqliteBus(path)
    try:
        consumer = bus.consumer("check")
        consumer.subscribe(["shared"])
        got = read(consumer, 2 * count)
        assert consumer.poll_batch(10, 0.2) == []
        consumer.close()
    finally:
        bus.close()
    values = [m.value.decode() for m in got]
    assert sorted(values) == sorted(delivered)  # every record exactly once
    for m in got:
        assert delivered[m.value.decode()] == (m.partition, m.offset)
    for p in range(3):
        mine = [m for m in got if m.partition == p]
        assert [m.offset for m in mine] == list(range(len(mine)))  # dense, from 0
        for worker in ("w0", "w1"):  # each producer's records keep their order
            seq = [
                int(m.value.decode().split("-")[1])
                for m in mine
                if m.value.decode().startswith(worker + "-")
            ]
            assert seq == sorted(seq)
    # Both processes really interleaved on a partition (not one after the other).
    owners = [m.value.decode().split("-")[0] for m in got if m.partition == 0]
    assert sum(a != b for a, b in itertools.pairwise(owners)) > 2


MEMBER = r"""
import sys
from i2d_segments.bus.sqlite import SqliteBus
path, group, topic = sys.argv[1:4]
bus = SqliteBus(path)
consumer = bus.consumer(group)
consumer.subscribe([topic])
got = []
while not got:
    got = consumer.poll_batch(1000, 1.0)
print(len(got), len(consumer.assignment()), flush=True)
sys.stdin.readline()  # holds its partitions without committing, until killed
"""


def test_a_killed_member_s_partitions_move_on_at_once_from_the_last_commit(
    bus: SqliteBus, children
) -> None:
    bus.create_topic("work", 2)
    produce(bus, "work", [f"v{i}".encode() for i in range(20)])  # 10 per partition
    tp0, tp1 = TopicPartition("work", 0), TopicPartition("work", 1)
    committer = bus.consumer("g")
    committer.commit({tp0: 3, tp1: 6})
    committer.close()

    member = children(MEMBER, bus.path, "g", "work")
    assert member.read() == "11 2"  # it read everything past the commits, owns both

    events = Recorder()
    survivor = bus.consumer("g")
    survivor.subscribe(["work"], events)
    # The member is alive and never polls again: nothing moves, whatever the survivor waits.
    assert survivor.poll_batch(100, 0.5) == []
    assert survivor.assignment() == []

    member.kill()
    killed = time.monotonic()
    got = read(survivor, 11, timeout=5.0)
    took = time.monotonic() - killed
    assert took < 2.0  # the liveness token, not the 30 s session timeout
    assert survivor.assignment() == [tp0, tp1]
    assert sorted((m.partition, m.offset) for m in got) == [(0, o) for o in range(3, 10)] + [
        (1, o) for o in range(6, 10)
    ]
    assert events.events == [("assign", (tp0, tp1))]
    survivor.close()
    # The dead process's token file is gone too.
    assert [p.name for p in bus.token_directory.iterdir()] == [f"{bus.token}.lock"]


def test_a_member_that_stops_polling_is_dropped_after_the_session_timeout(path: Path) -> None:
    """Same process, so the liveness token cannot tell: the heartbeat does (a hung process).
    The member hears `on_lost` at its next poll and joins again."""
    bus = SqliteBus(path, session_timeout=1.0)
    try:
        bus.create_topic("t", 2)
        everything = [TopicPartition("t", 0), TopicPartition("t", 1)]
        hung_events, live_events = Recorder(), Recorder()
        hung = bus.consumer("g")
        hung.subscribe(["t"], hung_events)
        poll_until(hung, lambda: hung.assignment() == everything)

        live = bus.consumer("g")
        live.subscribe(["t"], live_events)
        started = time.monotonic()
        poll_until(live, lambda: live.assignment() == everything, timeout=5.0)
        assert 0.9 < time.monotonic() - started < 3.0
        assert ("revoke", tuple(everything)) not in hung_events.events

        # Back: it finds itself dropped, loses what it held, rejoins and gets a share.
        def both() -> bool:
            live.poll_batch(10, 0.02)
            return len(hung.assignment()) == 1 and len(live.assignment()) == 1

        poll_until(hung, both)
        assert hung_events.events[:2] == [
            ("assign", tuple(everything)),
            ("lost", tuple(everything)),
        ]
        assert live_events.events[-1][0] == "revoke"
    finally:
        bus.close()


PRODUCE_ON_REQUEST = r"""
import sys
from i2d_segments.bus.sqlite import SqliteBus
bus = SqliteBus(sys.argv[1])
producer = bus.producer()
print("ready", flush=True)
for line in sys.stdin:
    producer.produce(sys.argv[2], line.strip().encode())
    producer.flush(10)
producer.close()
bus.close()
"""


def test_a_consumer_wakes_promptly_for_a_record_from_another_process(
    bus: SqliteBus, children
) -> None:
    bus.create_topic("t", 1)
    consumer = bus.consumer("g")
    consumer.subscribe(["t"])
    poll_until(consumer, lambda: consumer.assignment() == [TopicPartition("t", 0)])
    writer = children(PRODUCE_ON_REQUEST, bus.path, "t")
    assert writer.read() == "ready"
    latencies = []
    for i in range(7):
        time.sleep(0.1)
        writer.send(f"r{i}")
        (msg,) = consumer.poll_batch(10, 10.0)
        latencies.append(time.time() - msg.timestamp_ms / 1000)
        assert msg.value == f"r{i}".encode()
    writer.finish()
    consumer.close()
    # Within poll_interval (20 ms) plus the write, not the poll timeout.
    assert statistics.median(latencies) < 0.2, latencies


LAG = r"""
import json, sys
from i2d_segments.bus.sqlite import SqliteBus
bus = SqliteBus(sys.argv[1])
print(json.dumps([[p.partition, p.committed, p.high_watermark] for p in bus.lag(*sys.argv[2:4])]))
bus.close()
"""


def test_lag_read_from_another_process(bus: SqliteBus, children) -> None:
    bus.create_topic("t", 2)
    produce(bus, "t", [f"v{i}".encode() for i in range(7)])  # keyless: 4 and 3
    consumer = bus.consumer("g")
    consumer.commit({TopicPartition("t", 1): 2})
    consumer.close()
    assert json.loads(children(LAG, bus.path, "g", "t").read()) == [[0, None, 4], [1, 2, 3]]


# -- one file, one process -----------------------------------------------------------------------


def test_records_commits_and_topics_survive_reopening(path: Path) -> None:
    bus = SqliteBus(path)
    bus.create_topic("a", 2)
    bus.create_topic("b", 1, start_offsets=[40])
    produce(bus, "a", [f"a{i}".encode() for i in range(6)])
    produce(bus, "b", [b"b0", b"b1"])
    consumer = bus.consumer("g")
    consumer.subscribe(["a"])
    read(consumer, 6)
    consumer.commit({TopicPartition("a", 0): 2, TopicPartition("a", 1): 3})
    consumer.close()
    bus.close()

    again = SqliteBus(path)
    try:
        assert again.partition_count("a") == 2 and again.partition_count("b") == 1
        assert [(p.committed, p.high_watermark) for p in again.lag("g", "a")] == [(2, 3), (3, 3)]
        assert [(p.committed, p.high_watermark) for p in again.lag("g", "b")] == [(None, 42)]
        consumer = again.consumer("g")
        consumer.subscribe(["a", "b"])
        got = read(consumer, 3)
        assert consumer.poll_batch(10, 0.2) == []
        assert sorted((m.topic, m.partition, m.offset, m.value) for m in got) == [
            ("a", 0, 2, b"a4"),
            ("b", 0, 40, b"b0"),
            ("b", 0, 41, b"b1"),
        ]
        consumer.close()
        # Offsets go on where they were.
        producer = again.producer()
        reports: list[Message | None] = []
        producer.produce("b", b"b2", on_delivery=lambda e, m: reports.append(m))
        producer.flush(10)
        assert [m.offset for m in reports if m is not None] == [42]
        producer.close()
    finally:
        again.close()


def test_create_topic_with_start_offsets(path: Path) -> None:
    bus = SqliteBus(path)
    bus.create_topic("append", 2, start_offsets=[1000, 0])
    bus.create_topic("append", 2, start_offsets=[1000, 0])  # the same empty logs: fine
    bus.close()
    bus = SqliteBus(path)  # ...also from a restarted process
    try:
        bus.create_topic("append", 2, start_offsets=[1000, 0])
        with pytest.raises(ValueError):
            bus.create_topic("append", 2, start_offsets=[5, 0])
        with pytest.raises(ValueError):
            bus.create_topic("append", 3, start_offsets=[1000, 0, 0])
        producer = bus.producer()
        got: list[Message] = []

        def delivered(err: BusError | None, msg: Message | None) -> None:
            assert err is None and msg is not None
            got.append(msg)

        for key in (b"a", b"b", b"c", b"d"):
            producer.produce("append", key, key=key, on_delivery=delivered)
        producer.flush(10)
        producer.close()
        p0 = sorted(m.offset for m in got if m.partition == 0)
        assert p0 == list(range(1000, 1000 + len(p0)))
        with pytest.raises(ValueError):
            bus.create_topic("append", 2, start_offsets=[1000, 0])  # it has records now
        bus.create_topic("append", 2)  # without offsets: idempotent
        bus.create_topics({"append": 7})
        assert bus.partition_count("append") == 2
        consumer = bus.consumer("g")
        consumer.subscribe(["append"])
        assert sorted((m.partition, m.offset) for m in read(consumer, 4)) == sorted(
            (m.partition, m.offset) for m in got
        )
        consumer.close()
        with pytest.raises(ValueError):
            bus.create_topic("other", 2, start_offsets=[1])
        with pytest.raises(ValueError):
            bus.create_topic("other", 0)
    finally:
        bus.close()


def test_file_settings_and_a_closed_bus_refuses_work(path: Path) -> None:
    bus = SqliteBus(path)
    bus.create_topic("t", 1)
    producer = bus.producer()
    consumer = bus.consumer("g")
    consumer.subscribe(["t"])

    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert raw.execute("PRAGMA user_version").fetchone() == (schema.SCHEMA_VERSION,)
    raw.close()
    conn = schema.connect(path)  # every connection of the bus is opened so
    assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone() == (60_000,)
    conn.close()
    lock = bus.token_directory / f"{bus.token}.lock"
    assert lock.exists() and not schema.token_alive(bus.token_directory, "0" * 32)
    assert schema.token_alive(bus.token_directory, bus.token)  # held by this process

    bus.close()
    bus.close()  # idempotent
    assert not lock.exists()
    with pytest.raises(BusError):
        producer.produce("t", b"x")
    with pytest.raises(BusError):
        bus.producer()
    with pytest.raises(BusError):
        bus.consumer("g")
    with pytest.raises(BusError):
        consumer.poll_batch(1, 0.0)
    with pytest.raises(BusError):
        bus.lag("g", "t")
    consumer.close()  # already out of the group: nothing to do
    producer.close()

    (path.parent / "folder").mkdir()
    with pytest.raises(BusError):
        SqliteBus(path.parent / "folder")  # a folder, not a database
    (path.parent / "garbage").write_bytes(b"this is not a database" * 100)
    with pytest.raises(BusError):
        SqliteBus(path.parent / "garbage")


def test_values_up_to_16_mib(bus: SqliteBus) -> None:
    bus.create_topic("big", 1)
    values = [os.urandom(16 * 1024 * 1024), b"small", os.urandom(9 * 1024 * 1024)]
    produce(bus, "big", values)
    consumer = bus.consumer("g")
    consumer.subscribe(["big"])
    got = read(consumer, 3)
    assert [m.value for m in got] == values
    consumer.close()


def test_a_blocked_writer_gives_back_pressure_flush_timeouts_and_delivery_errors(
    bus: SqliteBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    from i2d_segments.bus import sqlite as sqlite_module

    bus.create_topic("t", 1)
    monkeypatch.setattr(sqlite_module, "MAX_BUFFERED_RECORDS", 5)
    monkeypatch.setattr(schema, "BUSY_TIMEOUT_S", 0.5)  # the writer's connection gives up
    blocker = sqlite3.connect(bus.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process writing (too long)
    producer = bus.producer()
    reports: list[BusError | None] = []
    produced = threading.Event()

    def fill() -> None:
        for i in range(8):
            producer.produce("t", f"v{i}".encode(), on_delivery=lambda e, m: reports.append(e))
        produced.set()

    filler = threading.Thread(target=fill)
    filler.start()
    assert not produced.wait(0.3)  # more than 5 unwritten: produce blocks
    with pytest.raises(BusError):
        producer.flush(0.1)
    deadline = time.monotonic() + 5
    while not any(reports):  # the writer gives up after its busy timeout
        assert time.monotonic() < deadline
        producer.poll(0.1)
    blocker.execute("ROLLBACK")
    blocker.close()
    filler.join(10)
    producer.flush(10)
    assert produced.is_set() and len(reports) == 8
    errors = [e for e in reports if e is not None]
    assert errors and all(isinstance(e, BusError) for e in errors)  # write failures reported
    assert reports[-1] is None  # then the writer went on
    producer.close()


def test_a_blocked_poll_does_not_spin(bus: SqliteBus) -> None:
    bus.create_topic("t", 1)
    consumer = bus.consumer("g")
    consumer.subscribe(["t"])
    poll_until(consumer, lambda: consumer.assignment() == [TopicPartition("t", 0)])
    cpu = time.thread_time()
    wall = time.monotonic()
    assert consumer.poll_batch(10, 1.0) == []
    assert time.monotonic() - wall >= 0.95
    assert time.thread_time() - cpu < 0.2  # a cheap look every poll_interval
    consumer.close()


# -- hand-offs under load ------------------------------------------------------------------------


@dataclass
class Ownership:
    owners: dict[TopicPartition, str] = field(default_factory=dict)
    violations: list[tuple[TopicPartition, str, str]] = field(default_factory=list)
    revoked: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class CommittingListener(RebalanceListener):
    """Commits what it consumed before giving a partition away, and records any partition
    granted while another member still owns it."""

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


def test_members_of_two_bus_instances_hand_off_under_load_without_loss_or_duplicates(
    path: Path,
) -> None:
    """Two SqliteBus instances on one file stand for two processes; members come and go
    while three producers write."""
    buses = [SqliteBus(path), SqliteBus(path)]
    buses[0].create_topic("work", 6)
    total = 3 * 300
    received: list[tuple[int, int]] = []
    received_lock = threading.Lock()
    ownership = Ownership()
    stop = threading.Event()

    def produce_some(worker: int) -> None:
        producer = buses[worker % 2].producer()
        rng = random.Random(worker)
        for i in range(300):
            producer.produce("work", f"{worker}-{i}".encode(), key=rng.randbytes(8))
            if i % 10 == 0:
                time.sleep(0.02)
        producer.close()

    def consume(name: str, bus: SqliteBus, lifetime: float) -> None:
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
        threading.Thread(target=consume, args=("steady", buses[0], 60.0)),
        threading.Thread(target=consume, args=("short", buses[1], 0.4)),
        threading.Thread(target=consume, args=("late", buses[1], 60.0)),
    ]
    producers = [threading.Thread(target=produce_some, args=(w,)) for w in range(3)]
    try:
        consumers[0].start()
        consumers[1].start()
        for t in producers:
            t.start()
        time.sleep(0.15)
        consumers[2].start()
        for t in producers:
            t.join()
        deadline = time.monotonic() + 20
        while len(received) < total and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()
        for t in consumers:
            t.join()
        assert ownership.revoked > 6  # partitions did move while records flowed
        assert ownership.violations == []
        assert len(received) == total
        assert len(set(received)) == total
        lag = buses[1].lag("workers", "work")
        assert [p.committed for p in lag] == [p.high_watermark for p in lag]
    finally:
        for b in buses:
            b.close()


# -- truncate_consumed, on both embedded buses -----------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def embedded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EmbeddedBus]:
    b: EmbeddedBus = MemoryBus() if request.param == "memory" else SqliteBus(tmp_path / "b.sqlite")
    yield b
    b.close()


def test_truncate_consumed_drops_only_what_every_registered_group_passed(
    embedded: EmbeddedBus,
) -> None:
    bus = embedded
    bus.create_topic("urls", 2)
    bus.create_topic("untouched", 1)
    produce(bus, "urls", [f"u{i}".encode() for i in range(20)])  # 10 per partition
    produce(bus, "untouched", [b"x"] * 5)
    tp0, tp1 = TopicPartition("urls", 0), TopicPartition("urls", 1)
    assert bus.truncate_consumed() == 0  # no group registered anywhere

    fast = bus.consumer("fast")
    fast.subscribe(["urls"])
    read(fast, 20)
    fast.commit({tp0: 8, tp1: 10})
    assert bus.truncate_consumed() == 18  # fast is the only group registered on urls

    # A group with a member but no commit holds every partition at its log start.
    slow = bus.consumer("slow")
    slow.subscribe(["urls"])
    produce(bus, "urls", [f"u{i}".encode() for i in range(20, 24)])  # 2 per partition
    fast.commit({tp0: 12, tp1: 12})
    assert bus.truncate_consumed() == 0
    slow_got = read(slow, 6)  # it reads from the log starts, 8 and 10
    assert sorted((m.partition, m.offset) for m in slow_got) == [
        (0, 8),
        (0, 9),
        (0, 10),
        (0, 11),
        (1, 10),
        (1, 11),
    ]
    slow.commit({tp0: 9})
    assert bus.truncate_consumed() == 1  # partition 0 up to 9; partition 1: slow never committed
    slow.commit({tp0: 12, tp1: 11})
    assert bus.truncate_consumed() == 3 + 1
    assert bus.truncate_consumed() == 0

    # A group registered only by a commit counts too.
    audit = bus.consumer("audit")
    audit.commit({tp1: 11})
    fast.commit({tp1: 12})
    slow.commit({tp1: 12})
    assert bus.truncate_consumed() == 0
    audit.commit({tp1: 12})
    assert bus.truncate_consumed() == 1

    # The log ends did not move; a fresh group starts at the new log starts.
    assert [p.high_watermark for p in bus.lag("nobody", "urls")] == [12, 12]
    fresh = bus.consumer("fresh")
    fresh.subscribe(["urls"])
    produce(bus, "urls", [b"late"], key=b"k")
    (msg,) = read(fresh, 1)
    assert msg.value == b"late"
    # A topic no group is registered on keeps everything.
    check = bus.consumer("check")
    check.subscribe(["untouched"])
    assert len(read(check, 5)) == 5
    for c in (fast, slow, audit, fresh, check):
        c.close()


def test_a_member_positioned_below_the_new_log_start_continues_there(
    embedded: EmbeddedBus,
) -> None:
    bus = embedded
    bus.create_topic("t", 1)
    produce(bus, "t", [f"v{i}".encode() for i in range(10)])
    tp = TopicPartition("t", 0)
    behind = bus.consumer("behind")
    behind.subscribe(["t"])
    assert [m.offset for m in read(behind, 2)] == [0, 1]
    behind.commit({tp: 2})
    ahead = bus.consumer("ahead")
    ahead.subscribe(["t"])
    read(ahead, 10)
    ahead.commit({tp: 10})
    behind.commit({tp: 6})  # committed past what this member read (another member did)
    assert bus.truncate_consumed() == 6
    assert [m.offset for m in read(behind, 4)] == [6, 7, 8, 9]
    behind.close()
    ahead.close()


def test_a_commit_past_the_log_end_truncates_up_to_the_end(embedded: EmbeddedBus) -> None:
    bus = embedded
    bus.create_topic("t", 1, start_offsets=[10])
    produce(bus, "t", [b"a", b"b"])
    consumer = bus.consumer("g")
    consumer.commit({TopicPartition("t", 0): 50})
    assert bus.truncate_consumed() == 2
    assert [(p.committed, p.high_watermark) for p in bus.lag("g", "t")] == [(50, 12)]
    produce(bus, "t", [b"c"])
    reader = bus.consumer("reader")
    reader.subscribe(["t"])
    assert [(m.offset, m.value) for m in read(reader, 1)] == [(12, b"c")]
    consumer.close()
    reader.close()


def test_commit_truncates_in_the_background(bus: SqliteBus) -> None:
    bus.truncate_interval = 0.0
    bus.create_topic("t", 1)
    produce(bus, "t", [f"v{i}".encode() for i in range(10)])
    consumer = bus.consumer("g")
    consumer.subscribe(["t"])
    read(consumer, 10)
    consumer.commit({TopicPartition("t", 0): 7})
    deadline = time.monotonic() + 5
    while bus.truncate_consumed() == 0 and time.monotonic() < deadline:
        # Either the background thread already dropped them, or we just did: look at the file.
        conn = schema.connect(bus.path)
        (start,) = conn.execute("SELECT log_start FROM partitions").fetchone()
        conn.close()
        if start == 7:
            break
        time.sleep(0.05)
    conn = schema.connect(bus.path)
    assert conn.execute("SELECT log_start, log_end FROM partitions").fetchone() == (7, 10)
    assert conn.execute("SELECT min(ofs), count(*) FROM records").fetchone() == (7, 3)
    conn.close()
    consumer.close()
