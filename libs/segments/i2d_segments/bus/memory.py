"""In-process Bus for the embedded mode: Kafka's semantics without a broker.

The embedded mode runs the fetcher, appender and materializer loops as threads of one process,
so everything here is guarded by one lock: producers append and wake the consumers of that
topic, consumers wait in `poll_batch` (no spinning), and group membership changes wake all.

What follows Kafka (see `base.py`): keyed records go to `partition_for_key`, keyless ones
round-robin per producer; offsets increase per partition from the log start; a group spreads
the partitions of its subscribed topics over its members (range assignment, per topic), each
partition has at most one owner at a time, and ownership changes reach the `RebalanceListener`
from inside `poll_batch` on the consumer's own thread. A partition moving from A to B is only
granted to B after A has revoked it in one of A's own polls, so A can finish its work first
(what Kafka's rebalance barrier guarantees). A position outside the log (below its start or
past its end) resets to the log start, as Kafka does with `auto.offset.reset=earliest`.

What the embedded buses add (`EmbeddedBus`, shared with the SQLite adapter):
- `create_topic(name, partitions, start_offsets)`: a partition's log may start at any offset,
  so a resumed embedded run continues the offsets its index already committed;
- `truncate_consumed()`: records are kept until dropped explicitly; a long run drops what
  every group registered on a topic has committed past, which moves the log start up.
  `truncate_before(topic, partition, offset)` drops up to an offset of the caller's choice.

There are no session timeouts: a member that stops polling keeps its partitions until it
polls again or is closed, so `on_lost` is never called here.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence

from i2d_segments.bus.base import (
    BusError,
    Consumer,
    DeliveryCallback,
    EmbeddedBus,
    Message,
    PartitionLag,
    Producer,
    RebalanceListener,
    TopicPartition,
    partition_for_key,
)


class _Log:
    """One partition's records; `records[i]` has offset `start + i`."""

    __slots__ = ("records", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        self.records: list[Message] = []

    @property
    def end(self) -> int:
        return self.start + len(self.records)


class _Group:
    """Committed offsets, members, the wanted assignment (`target`) and who holds what now.
    `topics` are those the group is registered on (a member subscribed to it, or the group
    committed on it): `truncate_consumed` keeps their records until the group is past them."""

    def __init__(self) -> None:
        self.members: dict[int, _MemoryConsumer] = {}
        self.topics: set[str] = set()
        self.committed: dict[TopicPartition, int] = {}
        self.target: dict[int, set[TopicPartition]] = {}
        self.owner: dict[TopicPartition, int] = {}


class MemoryBus(EmbeddedBus):
    """The embedded adapter. Thread-safe; share one instance between all loops of a process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # Consumers blocked in `poll_batch`, each on its own condition over the same lock: a
        # record wakes only those subscribed to its topic (not, say, a SEGMENT_CLOSED reader
        # for every APPEND record); group and topic changes wake them all.
        self._sleepers: dict[int, _MemoryConsumer] = {}
        self._topics: dict[str, list[_Log]] = {}
        self._groups: dict[str, _Group] = {}
        self._next_member_id = 0

    # -- admin --------------------------------------------------------------------------------

    def create_topic(
        self, name: str, partitions: int, start_offsets: Sequence[int] | None = None
    ) -> None:
        """Create `name` with `partitions` partitions whose logs start at `start_offsets`
        (default 0 each). An existing topic is left as it is (like Kafka), unless
        `start_offsets` asks for a start it cannot honour, which raises ValueError."""
        if partitions < 1:
            raise ValueError(f"a topic needs at least one partition, got {partitions}")
        starts = list(start_offsets) if start_offsets is not None else [0] * partitions
        if len(starts) != partitions or any(s < 0 for s in starts):
            raise ValueError(f"start_offsets must be {partitions} offsets >= 0, got {starts}")
        with self._cond:
            existing = self._topics.get(name)
            if existing is not None:
                if start_offsets is not None and not self._starts_match(existing, starts):
                    raise ValueError(
                        f"topic {name!r} already exists with other partitions or offsets; "
                        f"cannot start it at {starts}"
                    )
                return
            self._topics[name] = [_Log(s) for s in starts]
            for group in self._groups.values():
                self._rebalance(group)
            self._wake_all()

    @staticmethod
    def _starts_match(logs: list[_Log], starts: list[int]) -> bool:
        # An empty log at the asked start is the same log; anything else is a different one.
        return len(logs) == len(starts) and all(
            log.start == s and not log.records for log, s in zip(logs, starts, strict=True)
        )

    def create_topics(self, topics: Mapping[str, int]) -> None:
        for name, partitions in topics.items():
            self.create_topic(name, partitions)

    def partition_count(self, topic: str) -> int:
        with self._cond:
            return len(self._logs(topic))

    def truncate_before(self, topic: str, partition: int, offset: int) -> None:
        """Drop the records of `topic`[`partition`] below `offset`; the log then starts at
        `offset` (at most the log end). Consumers positioned below it continue at the new
        start, exactly as after Kafka's retention. The caller picks an offset every group
        has committed past (see `lag`), so nothing unread is dropped."""
        with self._cond:
            log = self._log(TopicPartition(topic, partition))
            if offset > log.end:
                raise ValueError(
                    f"{topic}[{partition}] ends at {log.end}; cannot truncate {offset}"
                )
            if offset <= log.start:
                return
            del log.records[: offset - log.start]
            log.start = offset

    def truncate_consumed(self) -> int:
        with self._cond:
            dropped = 0
            for topic, logs in self._topics.items():
                groups = [g for g in self._groups.values() if topic in g.topics]
                if not groups:
                    continue  # nobody said what was read: keep everything
                for p, log in enumerate(logs):
                    tp = TopicPartition(topic, p)
                    committed = [g.committed.get(tp) for g in groups]
                    if any(c is None for c in committed):
                        continue  # a group that never committed here reads from the start
                    floor = min(min(c for c in committed if c is not None), log.end)
                    if floor > log.start:
                        dropped += floor - log.start
                        del log.records[: floor - log.start]
                        log.start = floor
            return dropped

    def lag(self, group_id: str, topic: str) -> list[PartitionLag]:
        with self._cond:
            group = self._groups.get(group_id)
            committed = group.committed if group is not None else {}
            return [
                PartitionLag(topic, p, committed.get(TopicPartition(topic, p)), log.end)
                for p, log in enumerate(self._logs(topic))
            ]

    # -- clients ------------------------------------------------------------------------------

    def producer(self) -> Producer:
        return _MemoryProducer(self)

    def consumer(self, group_id: str) -> Consumer:
        with self._cond:
            self._next_member_id += 1
            member_id = self._next_member_id
            group = self._groups.setdefault(group_id, _Group())
        return _MemoryConsumer(self, group, member_id)

    # -- internals (callers hold self._cond) --------------------------------------------------

    def _wake_all(self) -> None:
        for sleeper in self._sleepers.values():
            sleeper._wake.notify()

    def _wake_readers(self, topic: str) -> None:
        for sleeper in self._sleepers.values():
            if topic in sleeper.subscription:
                sleeper._wake.notify()

    def _logs(self, topic: str) -> list[_Log]:
        logs = self._topics.get(topic)
        if logs is None:
            raise BusError(f"unknown topic {topic!r}")
        return logs

    def _log(self, tp: TopicPartition) -> _Log:
        logs = self._logs(tp.topic)
        if not 0 <= tp.partition < len(logs):
            raise BusError(f"{tp.topic!r} has no partition {tp.partition}")
        return logs[tp.partition]

    def _append(self, topic: str, value: bytes, key: bytes | None, round_robin: int) -> Message:
        with self._lock:  # the condition's lock, without its Python-level __enter__
            logs = self._logs(topic)
            if key is not None:
                partition = partition_for_key(key, len(logs))
            else:
                partition = round_robin % len(logs)
            log = logs[partition]
            msg = Message(topic, partition, log.end, key, value, time.time_ns() // 1_000_000)
            log.records.append(msg)
            self._wake_readers(topic)
            return msg

    def _rebalance(self, group: _Group) -> None:
        """Range assignment per topic over the members subscribed to it, in join order."""
        target: dict[int, set[TopicPartition]] = {mid: set() for mid in group.members}
        topics = sorted({t for m in group.members.values() for t in m.subscription})
        for topic in topics:
            logs = self._topics.get(topic)
            if logs is None:
                continue  # subscribed before it exists: assigned once created
            members = sorted(mid for mid, m in group.members.items() if topic in m.subscription)
            share, extra = divmod(len(logs), len(members))
            first = 0
            for i, mid in enumerate(members):
                count = share + (1 if i < extra else 0)
                target[mid].update(TopicPartition(topic, p) for p in range(first, first + count))
                first += count
        group.target = target


class _MemoryProducer(Producer):
    """Records are acknowledged as soon as they are appended; their delivery callbacks wait
    for `poll`/`flush`, as with Kafka, so callers exercise the same code path."""

    def __init__(self, bus: MemoryBus) -> None:
        self._bus = bus
        # Held directly where nothing waits (every produce and callback): a Condition's
        # __enter__ and notify_all are Python-level calls.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pollers = 0  # callers waiting in `poll` for a delivery
        self._pending: deque[tuple[DeliveryCallback, Message]] = deque()
        self._round_robin: dict[str, int] = {}
        self._closed = False

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        with self._lock:
            if self._closed:
                raise BusError("producer is closed")
            turn = self._round_robin.get(topic, 0)
            if key is None:
                self._round_robin[topic] = turn + 1
        msg = self._bus._append(topic, value, key, turn)
        if on_delivery is not None:
            with self._lock:
                self._pending.append((on_delivery, msg))
                if self._pollers:
                    self._cond.notify_all()

    def _serve(self) -> None:
        # One at a time, outside the lock: a callback may produce, and if one raises the
        # others stay pending for the next poll.
        while True:
            with self._lock:
                if not self._pending:
                    return
                callback, msg = self._pending.popleft()
            callback(None, msg)

    def poll(self, timeout: float = 0.0) -> None:
        with self._cond:
            if not self._pending and timeout > 0:
                self._pollers += 1
                try:
                    self._cond.wait_for(lambda: bool(self._pending) or self._closed, timeout)
                finally:
                    self._pollers -= 1
        self._serve()

    def flush(self, timeout: float = 30.0) -> None:
        self._serve()

    def close(self) -> None:
        self._serve()
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _MemoryConsumer(Consumer):
    """A group member. Its fields are guarded by the bus lock; listener calls happen with the
    lock released (they may produce, commit, or take long), while the member still owns the
    partitions concerned."""

    def __init__(self, bus: MemoryBus, group: _Group, member_id: int) -> None:
        self._bus = bus
        self._cond = bus._cond
        self._wake = threading.Condition(bus._lock)  # waited on in poll_batch only
        self._group = group
        self._id = member_id
        self.subscription: frozenset[str] = frozenset()
        self._listener = RebalanceListener()
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._turn = 0
        self._closed = False

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener | None = None) -> None:
        with self._cond:
            self._check_open()
            self.subscription = frozenset(topics)
            self._listener = listener or RebalanceListener()
            self._group.members[self._id] = self
            self._group.topics.update(topics)
            self._bus._rebalance(self._group)
            self._bus._wake_all()

    def poll_batch(self, max_messages: int, timeout: float) -> list[Message]:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            self._sync_assignment()
            with self._cond:
                self._check_open()
                if self._assignment_outdated():
                    continue  # the group changed while the listener ran: sync again
                batch = self._take(max_messages)
                if batch:
                    return batch
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._bus._sleepers[self._id] = self
                try:
                    self._wake.wait(remaining)
                finally:
                    del self._bus._sleepers[self._id]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        with self._cond:
            self._check_open()
            if tp not in self._positions:
                raise BusError(f"cannot seek {tp}: not assigned to this consumer")
            self._positions[tp] = offset

    def low_watermark(self, tp: TopicPartition) -> int:
        with self._cond:
            self._check_open()
            return self._bus._log(tp).start

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        with self._cond:
            self._check_open()
            for tp, offset in offsets.items():
                self._bus._log(tp)  # an unknown partition is an error, as on Kafka
                self._group.committed[TopicPartition(*tp)] = offset
                self._group.topics.add(tp[0])

    def assignment(self) -> list[TopicPartition]:
        with self._cond:
            return sorted(self._positions)

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        with self._cond:
            self._paused.update(tp for tp in partitions if tp in self._positions)

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        with self._cond:
            self._paused.difference_update(partitions)
            self._bus._wake_all()

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            owned = sorted(self._positions)
        try:
            if owned:
                self._listener.on_revoke(owned)
        finally:
            with self._cond:
                self._release(owned)
                self._closed = True
                if self._group.members.pop(self._id, None) is not None:
                    self._bus._rebalance(self._group)
                self._bus._wake_all()

    # -- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BusError("consumer is closed")

    def _target(self) -> set[TopicPartition]:
        return self._group.target.get(self._id, set())

    def _assignment_outdated(self) -> bool:
        target = self._target()
        if any(tp not in target for tp in self._positions):
            return True
        return any(tp not in self._positions and tp not in self._group.owner for tp in target)

    def _release(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            self._positions.pop(tp, None)
            self._paused.discard(tp)
            if self._group.owner.get(tp) == self._id:
                del self._group.owner[tp]

    def _sync_assignment(self) -> None:
        """Revoke what the group moved away, then take what it gave us and nobody holds."""
        with self._cond:
            if self._closed:
                return
            target = self._target()
            revoked = sorted(tp for tp in self._positions if tp not in target)
        if revoked:
            try:
                self._listener.on_revoke(revoked)
            finally:
                with self._cond:
                    self._release(revoked)
                    self._bus._wake_all()  # the new owner may be waiting for these
        with self._cond:
            if self._closed:
                return
            granted = sorted(
                tp
                for tp in self._target()
                if tp not in self._positions and tp not in self._group.owner
            )
            for tp in granted:
                self._group.owner[tp] = self._id
                committed = self._group.committed.get(tp)
                self._positions[tp] = (
                    committed if committed is not None else self._bus._log(tp).start
                )
        if granted:
            seeks = self._listener.on_assign(granted)
            if seeks:
                with self._cond:
                    for tp, offset in seeks.items():
                        if tp in self._positions:
                            self._positions[tp] = offset

    def _take(self, max_messages: int) -> list[Message]:
        readable = [tp for tp in sorted(self._positions) if tp not in self._paused]
        if not readable:
            return []
        # Start from a different partition each call so one busy partition cannot starve
        # the others.
        self._turn = (self._turn + 1) % len(readable)
        batch: list[Message] = []
        for tp in readable[self._turn :] + readable[: self._turn]:
            log = self._bus._log(tp)
            position = self._positions[tp]
            if not log.start <= position <= log.end:
                position = log.start
            count = min(log.end - position, max_messages - len(batch))
            if count > 0:
                first = position - log.start
                batch.extend(log.records[first : first + count])
                position += count
            self._positions[tp] = position
            if len(batch) >= max_messages:
                break
        return batch
