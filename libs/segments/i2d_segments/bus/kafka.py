"""Kafka Bus over confluent-kafka (librdkafka), for the distributed mode.

Choices, and why:
- Partitions are chosen here, not by librdkafka's partitioner: keyed records go to
  `partition_for_key` (the hash the memory adapter uses too, so "same key, same partition"
  holds across adapters and anyone can compute where an item_id lives) and keyless ones
  round-robin per producer, which is what the port promises (librdkafka would stick to one
  partition for a while). Partition counts come from metadata, refreshed every minute.
- The producer is idempotent with acks=all: a retry never duplicates or reorders a record.
  It waits up to `PRODUCER_LINGER_MS` to fill a batch: a fetcher produces one record per row,
  a few thousand a second, and librdkafka's cost is per request far more than per record (on
  a 404 list at ~2,000 rows/s, 5 ms against 50 ms was 13-17% more CPU per row for the whole
  distributed pipeline, `make bench`). `flush` sends at once whatever lingers.
  A full local queue raises BufferError in librdkafka; `produce` then serves delivery reports
  and retries, which is the back-pressure the port promises.
- Consumers never auto-commit; `commit` is synchronous with explicit offsets. Rebalance
  callbacks are invoked by librdkafka from inside `consume`/`poll`, i.e. from `poll_batch`
  (and `close`), on the consumer's thread. With cooperative-sticky (the default) assignments
  are incremental; with an eager strategy (range, roundrobin) each rebalance revokes and
  reassigns everything. The strategy is a constructor argument (or `config` key) because not
  every Kafka-compatible broker implements the cooperative two-phase rebalance.
- Topics are created with `max.message.bytes` = `max_message_bytes`, since a broker's default
  (1 MiB on Apache Kafka) is below the size of many image records. Clients never auto-create
  topics: a typo must fail, not create a topic with the broker's default partition count.
- librdkafka's own log lines go to the Python logger of this module instead of stderr, at
  most once per `_Quieter.interval` for the same message: an unreachable broker is reported
  every reconnect attempt by every client, many times a second.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from i2d_segments.bus.base import (
    Bus,
    BusError,
    Consumer,
    DeliveryCallback,
    Message,
    PartitionLag,
    Producer,
    RebalanceListener,
    TopicPartition,
    partition_for_key,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# How long a produced record may wait for others to share its request (librdkafka's
# linger.ms): at most this much latency per record, for far fewer requests (see above).
PRODUCER_LINGER_MS = 50
_METADATA_TTL_S = 60.0
# librdkafka's defaults; raised only when a single record may be bigger.
_DEFAULT_FETCH_MAX_BYTES = 52_428_800


def _error_text(err: Any) -> str:
    return err.str() if isinstance(err, KafkaError) else str(err)


def _bus_error(what: str, exc: KafkaException) -> BusError:
    return BusError(f"{what}: {_error_text(exc.args[0]) if exc.args else exc}")


def _to_message(msg: Any) -> Message:
    _, timestamp = msg.timestamp()
    return Message(
        topic=msg.topic(),
        partition=msg.partition(),
        offset=msg.offset(),
        key=msg.key(),
        value=msg.value() or b"",
        timestamp_ms=max(timestamp, 0),
    )


_DIGITS = re.compile(r"\d+")


class _Quieter(logging.Filter):
    """Lets a message through once per `interval` (keyed on its text without its numbers,
    which change from one attempt to the next: "after 3ms"), with the count it held back."""

    interval = 30.0

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:  # information (assignments...) is never held
            return True
        key = _DIGITS.sub("#", record.getMessage())
        now = time.monotonic()
        with self._lock:
            last, held = self._seen.get(key, (-self.interval, 0))
            if now - last < self.interval:
                self._seen[key] = (last, held + 1)
                return False
            self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it in the last {self.interval:.0f}s)"
        return True


_librdkafka_log = logging.getLogger(__name__ + ".librdkafka")
_librdkafka_log.addFilter(_Quieter())
log.addFilter(_Quieter())  # our own "consumer error" lines repeat the same way


class KafkaBus(Bus):
    """`config` holds extra librdkafka settings merged over the defaults of every client
    (producer, consumer, admin); `group.id` is always the one given to `consumer`."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str = "img2dataset",
        config: Mapping[str, Any] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        assignment_strategy: str = "cooperative-sticky",
        replication_factor: int | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._max_message_bytes = max_message_bytes
        self._assignment_strategy = assignment_strategy
        # None: the broker's default.replication.factor (KIP-464).
        self._replication_factor = -1 if replication_factor is None else replication_factor
        self._timeout = timeout
        self._base: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "client.id": client_id,
            "allow.auto.create.topics": False,
            "logger": _librdkafka_log,
        }
        self._extra = dict(config or {})
        self._admin_client: AdminClient | None = None

    def _conf(self, defaults: Mapping[str, Any]) -> dict[str, Any]:
        return {**self._base, **defaults, **self._extra}

    @property
    def _admin(self) -> AdminClient:
        # Created on first use and dropped by close(): librdkafka holds its broker
        # connections until the handle is destroyed.
        if self._admin_client is None:
            self._admin_client = AdminClient(self._conf({}))
        return self._admin_client

    def close(self) -> None:
        self._admin_client = None

    # -- admin --------------------------------------------------------------------------------

    def create_topics(self, topics: Mapping[str, int]) -> None:
        if not topics:
            return
        new = [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=self._replication_factor,
                config={"max.message.bytes": str(self._max_message_bytes)},
            )
            for name, partitions in topics.items()
        ]
        futures = self._admin.create_topics(new, request_timeout=self._timeout)
        for name, future in futures.items():
            try:
                future.result(timeout=self._timeout)
            except TimeoutError:
                servers = self._base["bootstrap.servers"]
                raise BusError(
                    f"cannot create topic {name!r}: no answer from Kafka at {servers} within "
                    f"{self._timeout}s"
                ) from None
            except KafkaException as e:
                if e.args and e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise _bus_error(f"cannot create topic {name!r}", e) from e
        # The controller answers before every broker knows the topic: wait until metadata
        # shows it with leaders, so the caller can produce and subscribe right away.
        deadline = time.monotonic() + self._timeout
        for name in topics:
            while self._metadata_partitions(name) is None:
                if time.monotonic() > deadline:
                    raise BusError(f"topic {name!r} not in metadata after {self._timeout}s")
                time.sleep(0.05)

    def _metadata_partitions(self, topic: str) -> int | None:
        """Partition count once every partition has a leader, else None."""
        try:
            md = self._admin.list_topics(topic=topic, timeout=self._timeout)
        except KafkaException as e:
            raise _bus_error("metadata request failed", e) from e
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return None
        if any(p.leader < 0 or p.error is not None for p in meta.partitions.values()):
            return None
        return len(meta.partitions)

    def partition_count(self, topic: str) -> int:
        count = self._metadata_partitions(topic)
        if count is None:
            raise BusError(f"unknown topic {topic!r} (or it has no leaders)")
        return count

    def lag(self, group_id: str, topic: str) -> list[PartitionLag]:
        partitions = [KafkaTopicPartition(topic, p) for p in range(self.partition_count(topic))]
        try:
            committed_futures = self._admin.list_consumer_group_offsets(
                [confluent_kafka.ConsumerGroupTopicPartitions(group_id, partitions)],
                request_timeout=self._timeout,
            )
            committed_result = committed_futures[group_id].result(timeout=self._timeout)
            end_futures = self._admin.list_offsets(
                {tp: OffsetSpec.latest() for tp in partitions}, request_timeout=self._timeout
            )
            ends = {
                tp.partition: f.result(timeout=self._timeout).offset
                for tp, f in end_futures.items()
            }
        except KafkaException as e:
            raise _bus_error(f"cannot read the lag of group {group_id!r} on {topic!r}", e) from e
        committed: dict[int, int | None] = {}
        for tp in committed_result.topic_partitions:
            if tp.error is not None:
                raise BusError(f"committed offset of {topic}[{tp.partition}]: {tp.error}")
            committed[tp.partition] = tp.offset if tp.offset >= 0 else None
        return [
            PartitionLag(topic, p.partition, committed.get(p.partition), ends[p.partition])
            for p in partitions
        ]

    # -- clients ------------------------------------------------------------------------------

    def producer(self) -> Producer:
        conf = self._conf(
            {
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": PRODUCER_LINGER_MS,
                "message.max.bytes": self._max_message_bytes,
            }
        )
        return _KafkaProducer(conf, self._timeout)

    def consumer(self, group_id: str) -> Consumer:
        fetch_max = max(_DEFAULT_FETCH_MAX_BYTES, self._max_message_bytes)
        conf = self._conf(
            {
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": self._assignment_strategy,
                "fetch.max.bytes": fetch_max,
                "receive.message.max.bytes": fetch_max + 1024 * 1024,
            }
        )
        conf["group.id"] = group_id
        # KIP-848's protocol assigns incrementally and picks the assignor on the broker.
        next_gen = str(conf.get("group.protocol", "classic")) == "consumer"
        if next_gen and "partition.assignment.strategy" not in self._extra:
            del conf["partition.assignment.strategy"]
        strategy = str(conf.get("partition.assignment.strategy", ""))
        return _KafkaConsumer(conf, next_gen or "cooperative-sticky" in strategy, self._timeout)


class _KafkaProducer(Producer):
    def __init__(self, conf: dict[str, Any], timeout: float) -> None:
        self._handle: confluent_kafka.Producer | None = confluent_kafka.Producer(conf)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, float]] = {}
        self._round_robin: dict[str, int] = {}

    def _partition_count(self, topic: str) -> int:
        now = time.monotonic()
        with self._lock:
            cached = self._counts.get(topic)
        if cached is not None and now - cached[1] < _METADATA_TTL_S:
            return cached[0]
        try:
            meta = self._producer.list_topics(topic=topic, timeout=self._timeout).topics.get(topic)
        except KafkaException as e:
            if cached is not None:  # a slow refresh must not stop production
                return cached[0]
            raise _bus_error(f"no metadata for topic {topic!r}", e) from e
        if meta is not None and meta.error is None and meta.partitions:
            with self._lock:
                self._counts[topic] = (len(meta.partitions), now)
            return len(meta.partitions)
        if cached is not None:  # transient metadata trouble: keep the last known count
            return cached[0]
        raise BusError(f"unknown topic {topic!r}")

    def _next_round_robin(self, topic: str, partitions: int) -> int:
        with self._lock:
            turn = self._round_robin.get(topic, 0)
            self._round_robin[topic] = turn + 1
        return turn % partitions

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        partitions = self._partition_count(topic)
        if key is not None:
            partition = partition_for_key(key, partitions)
        else:
            partition = self._next_round_robin(topic, partitions)
        report = None if on_delivery is None else _delivery_report(on_delivery)
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, partition=partition, on_delivery=report
                )
                return
            except BufferError:
                # Local queue full: serve delivery reports until there is room.
                self._producer.poll(0.1)
            except KafkaException as e:
                raise _bus_error(f"cannot produce to {topic}[{partition}]", e) from e

    def poll(self, timeout: float = 0.0) -> None:
        self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise BusError(f"{remaining} records not acknowledged after {timeout}s")

    def close(self) -> None:
        if self._handle is None:
            return
        try:
            self.flush(self._timeout)
        finally:
            # librdkafka keeps its broker connections until the handle is destroyed.
            self._handle = None

    @property
    def _producer(self) -> confluent_kafka.Producer:
        if self._handle is None:
            raise BusError("producer is closed")
        return self._handle


def _delivery_report(on_delivery: DeliveryCallback) -> Any:
    def report(err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            where = f"{msg.topic()}[{msg.partition()}]" if msg is not None else "?"
            on_delivery(BusError(f"delivery to {where} failed: {_error_text(err)}"), None)
        else:
            on_delivery(None, _to_message(msg))

    return report


class _KafkaConsumer(Consumer):
    def __init__(self, conf: dict[str, Any], incremental: bool, timeout: float) -> None:
        self._consumer = confluent_kafka.Consumer(conf)
        self._incremental = incremental
        self._timeout = timeout  # for calls to the broker that wait for its answer
        self._listener = RebalanceListener()
        self._closed = False

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener | None = None) -> None:
        self._listener = listener or RebalanceListener()
        try:
            self._consumer.subscribe(
                list(topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
        except KafkaException as e:
            raise _bus_error(f"cannot subscribe to {list(topics)}", e) from e

    # librdkafka calls these from consume()/poll()/close() on this consumer's thread. An
    # exception from the listener still leaves the assignment consistent (the finally
    # blocks) and is re-raised by confluent-kafka from the consume call.

    def _on_assign(self, consumer: Any, partitions: list[KafkaTopicPartition]) -> None:
        tps = [TopicPartition(p.topic, p.partition) for p in partitions]
        seeks: Mapping[TopicPartition, int] | None = None
        try:
            if tps:
                seeks = self._listener.on_assign(tps)
        finally:
            start = [
                KafkaTopicPartition(tp.topic, tp.partition, seeks[tp])
                if seeks is not None and tp in seeks
                else KafkaTopicPartition(tp.topic, tp.partition)  # committed, else earliest
                for tp in tps
            ]
            if self._incremental:
                consumer.incremental_assign(start)
            else:
                consumer.assign(start)
            # librdkafka keeps a partition's pause across revoke and re-assignment; the port
            # promises (as the memory bus does) that an assignment starts unpaused, so a
            # partition paused by a previous ownership cannot stall silently.
            if start:
                consumer.resume(start)

    def _on_revoke(self, consumer: Any, partitions: list[KafkaTopicPartition]) -> None:
        try:
            if partitions:
                self._listener.on_revoke([TopicPartition(p.topic, p.partition) for p in partitions])
        finally:
            self._unassign(consumer, partitions)

    def _on_lost(self, consumer: Any, partitions: list[KafkaTopicPartition]) -> None:
        try:
            if partitions:
                self._listener.on_lost([TopicPartition(p.topic, p.partition) for p in partitions])
        finally:
            self._unassign(consumer, partitions)

    def _unassign(self, consumer: Any, partitions: list[KafkaTopicPartition]) -> None:
        if self._incremental:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()

    def poll_batch(self, max_messages: int, timeout: float) -> list[Message]:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        if self._closed:
            raise BusError("consumer is closed")
        # consume(n, t) waits for all n records or the full timeout, so wait for the first
        # record with poll() and then take what is already fetched without waiting.
        try:
            batch = self._convert(self._consumer.consume(max_messages, 0))
            deadline = time.monotonic() + max(timeout, 0.0)
            while not batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                first = self._consumer.poll(remaining)
                if first is None:
                    continue
                batch = self._convert([first])
                if batch and max_messages > 1:
                    batch += self._convert(self._consumer.consume(max_messages - 1, 0))
            return batch
        except KafkaException as e:
            raise _bus_error("consume failed", e) from e

    @staticmethod
    def _convert(raw: list[Any]) -> list[Message]:
        out: list[Message] = []
        for msg in raw:
            err = msg.error()
            if err is None:
                out.append(_to_message(msg))
            elif err.fatal():
                raise BusError(f"fatal consumer error: {_error_text(err)}")
            elif err.code() != KafkaError._PARTITION_EOF:
                # Transient (broker down, topic not there yet...): librdkafka retries.
                log.warning("consumer error: %s", _error_text(err))
        return out

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if TopicPartition(*tp) not in self.assignment():
            raise BusError(f"cannot seek {tp}: not assigned to this consumer")
        try:
            self._consumer.seek(KafkaTopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as e:
            raise _bus_error(f"cannot seek {tp} to {offset}", e) from e

    def low_watermark(self, tp: TopicPartition) -> int:
        try:
            # cached=False: asked of the partition's leader now, not the last fetch's figure.
            low, _high = self._consumer.get_watermark_offsets(
                KafkaTopicPartition(tp.topic, tp.partition), timeout=self._timeout, cached=False
            )
        except KafkaException as e:
            raise _bus_error(f"cannot read the low watermark of {tp}", e) from e
        if low < 0:
            raise BusError(f"no low watermark for {tp}")
        return int(low)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        to_commit = [KafkaTopicPartition(tp[0], tp[1], off) for tp, off in offsets.items()]
        try:
            result = self._consumer.commit(offsets=to_commit, asynchronous=False)
        except KafkaException as e:
            raise _bus_error("commit failed", e) from e
        for tp in result or []:
            if tp.error is not None:
                raise BusError(f"commit of {tp.topic}[{tp.partition}] failed: {tp.error}")

    def assignment(self) -> list[TopicPartition]:
        return sorted(TopicPartition(p.topic, p.partition) for p in self._consumer.assignment())

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        if partitions:
            self._consumer.pause([KafkaTopicPartition(t, p) for t, p in partitions])

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        if partitions:
            self._consumer.resume([KafkaTopicPartition(t, p) for t, p in partitions])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._consumer.close()  # leaves the group; the revoke callback runs from here
