"""Bus port. Three adapters implement it: `memory` (in-process, embedded mode), `sqlite` (a
durable log in one file, shared by the processes of one machine) and `kafka`.

Semantics follow Kafka, so code written against the port behaves the same on all three:
- a topic has a fixed number of partitions; a record's partition is chosen from its key
  (same key, same partition; `partition_for_key` is the one hash every adapter uses) or
  round-robin when it has no key;
- offsets are per partition, increasing from the partition's log start;
- consumers join a group; each partition of a subscribed topic has one owner in the group;
  assignment changes are reported to the `RebalanceListener` *from inside `poll_batch`*, on the
  consumer's own thread;
- `commit` stores the next offset to read; it is only a hint for the appender (the index is the
  truth) and the at-least-once mark for the fetcher.
"""

from __future__ import annotations

import threading
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple


class BusError(RuntimeError):
    """A bus operation failed (delivery error, broker unreachable past the timeout...)."""


class TopicPartition(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int
    # (topic, partition), made once: the services read it several times per record.
    tp: TopicPartition = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tp", TopicPartition(self.topic, self.partition))


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """A group's position on one partition: committed offset (None if never), log end offset."""

    topic: str
    partition: int
    committed: int | None
    high_watermark: int

    @property
    def lag(self) -> int:
        return self.high_watermark - (self.committed or 0)


# err is None on success; the message then carries its partition and offset.
DeliveryCallback = Callable[[BusError | None, Message | None], None]


def partition_for_key(key: bytes, partitions: int) -> int:
    """Deterministic key -> partition, the same for every adapter (Kafka's own partitioner,
    murmur2, is bypassed so anyone can compute where a key lives)."""
    return zlib.crc32(key) % partitions


class RebalanceListener:
    """Callbacks for partition ownership.

    The default does nothing and starts at the committed offset.
    """

    def on_assign(
        self, partitions: Sequence[TopicPartition]
    ) -> Mapping[TopicPartition, int] | None:
        """Called when partitions are granted. Return the offsets to start from (seek), or None
        to start from the group's committed offset (else the log start)."""
        return None

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
        """Called before partitions are taken away in an orderly rebalance: finish work on them."""

    def on_lost(self, partitions: Sequence[TopicPartition]) -> None:
        """Called when ownership was lost without an orderly revoke: commit nothing for them."""


class HeldPartitions(RebalanceListener):
    """A listener that keeps the partitions its member holds, for readiness: a member the
    group has not given a partition (not joined yet, the broker unreachable, or more members
    than partitions) has nothing to do and is not ready. Read from any thread. A subclass that
    overrides a callback calls this one too."""

    def __init__(self) -> None:
        self._held: set[TopicPartition] = set()
        self._held_lock = threading.Lock()

    def on_assign(
        self, partitions: Sequence[TopicPartition]
    ) -> Mapping[TopicPartition, int] | None:
        with self._held_lock:
            self._held.update(partitions)
        return None

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
        with self._held_lock:
            self._held.difference_update(partitions)

    def on_lost(self, partitions: Sequence[TopicPartition]) -> None:
        with self._held_lock:
            self._held.difference_update(partitions)

    def held(self) -> list[TopicPartition]:
        with self._held_lock:
            return sorted(self._held)


class Producer(ABC):
    @abstractmethod
    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        """Queue a record. Blocks (back-pressure) while the local queue is full.
        `on_delivery` runs later, from `poll` or `flush`, once the record is acknowledged."""

    @abstractmethod
    def poll(self, timeout: float = 0.0) -> None:
        """Serve pending delivery callbacks."""

    @abstractmethod
    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued record is acknowledged; raise BusError past the timeout."""

    @abstractmethod
    def close(self) -> None: ...


class Consumer(ABC):
    @abstractmethod
    def subscribe(
        self, topics: Sequence[str], listener: RebalanceListener | None = None
    ) -> None: ...

    @abstractmethod
    def poll_batch(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to `max_messages` records from the assigned partitions, waiting at most `timeout`
        seconds for the first. Rebalance callbacks run from here."""

    @abstractmethod
    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Continue reading `tp` from `offset` (must be assigned)."""

    @abstractmethod
    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Synchronously store, per partition, the next offset to read."""

    @abstractmethod
    def low_watermark(self, tp: TopicPartition) -> int:
        """The first offset `tp` still holds, asked of the bus now (records below it were
        deleted: retention). A reader that finds offsets missing below what it was given
        tells with it whether they are gone or only were not delivered. BusError if the bus
        cannot say."""

    @abstractmethod
    def assignment(self) -> list[TopicPartition]: ...

    @abstractmethod
    def pause(self, partitions: Sequence[TopicPartition]) -> None: ...

    @abstractmethod
    def resume(self, partitions: Sequence[TopicPartition]) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Leave the group (revoking partitions through the listener)."""


class Bus(ABC):
    """Factory for producers and consumers, plus the admin calls the services need."""

    @abstractmethod
    def create_topics(self, topics: Mapping[str, int]) -> None:
        """Create topics (name -> partition count) that do not exist yet; idempotent."""

    @abstractmethod
    def partition_count(self, topic: str) -> int: ...

    @abstractmethod
    def producer(self) -> Producer: ...

    @abstractmethod
    def consumer(self, group_id: str) -> Consumer: ...

    @abstractmethod
    def lag(self, group_id: str, topic: str) -> list[PartitionLag]:
        """Committed offset and log end of each partition of `topic` for `group_id`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release admin resources."""


class EmbeddedBus(Bus):
    """A bus that runs on one machine, without a broker: `memory` (the threads of one process)
    and `sqlite` (the processes sharing one file). Nothing expires records on its own there
    (no retention), so the owner of the bus decides where a log starts and when consumed
    records go; these two calls are what the embedded runs need for that."""

    @abstractmethod
    def create_topic(
        self, name: str, partitions: int, start_offsets: Sequence[int] | None = None
    ) -> None:
        """Create `name` with `partitions` partitions whose logs start at `start_offsets`
        (default 0 each), so a resumed run continues the offsets its index already recorded.
        An existing topic is left as it is (like Kafka), unless `start_offsets` asks for a
        start it cannot honour (another partition count, another start, or records already
        there), which raises ValueError."""

    @abstractmethod
    def truncate_consumed(self) -> int:
        """Drop, on every partition of every topic, the records every group registered on that
        topic has committed past, and return how many were dropped. A group is registered on
        a topic once one of its members subscribed to it or it committed an offset on it; a
        topic no group is registered on is never truncated (nobody said what was read), and
        a group that never committed on a partition holds it at its log start. Consumers
        positioned below a new log start continue there, as after Kafka's retention."""
