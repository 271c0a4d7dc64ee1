"""Regression tests for what the chaos suite found in the appender, each on the smallest setup
that shows it: the service stepped in the test thread over the real broker."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from i2d_appender.service import AppenderService
from i2d_appender.settings import AppenderSettings
from i2d_segments.bus import TopicPartition
from i2d_segments.bus.kafka import KafkaBus
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.records import AppendMeta, AppendRecord, SampleStatus, encode_append
from i2d_segments.store.local import LocalStore


def _record(n: int) -> AppendRecord:
    payload = f"regression payload {n}".encode()
    return AppendRecord(
        meta=AppendMeta(
            sample_id=f"r{n}",
            url=f"http://regression.invalid/{n}",
            status=SampleStatus.SUCCESS,
            item_id=hashlib.sha256(payload).hexdigest(),
            ext="jpg",
        ),
        payload=payload,
    )


def _step_until(
    services: list[AppenderService], done: Callable[[], bool], what: str, timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in services:
            s.step()
        if done():
            return
    raise AssertionError(f"not reached in {timeout}s: {what}")


def test_a_partition_given_back_after_a_fence_is_consumed_again(
    kafka_bootstrap: str, kafka_test_config: dict[str, Any], tmp_path: Path
) -> None:
    """Found by the zombie round: a fenced appender pauses the partition it lets go; librdkafka
    keeps that pause when the group gives the partition back to the same consumer, so the new
    ownership never saw a record again: the partition stalled, readiness still green."""
    topic = f"APPEND-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition(topic, 0)
    bus = KafkaBus(kafka_bootstrap, config=kafka_test_config)
    bus.create_topics({topic: 1, f"{topic}-closed": 1})
    index = SqliteIndex(tmp_path / "index.sqlite")
    index.migrate()
    settings = AppenderSettings(
        append_topic=topic,
        closed_topic=f"{topic}-closed",
        group_id=f"group-{topic}",
        number_sample_per_shard=2,
        segment_idle_seconds=3600,
        poll_timeout_seconds=0.1,
        metrics_port=0,
    )
    service = AppenderService(bus, LocalStore(tmp_path / "store"), index, settings)
    service.consumer.subscribe([topic], listener=service)
    producer = bus.producer()

    def send(first: int, count: int) -> None:
        for n in range(first, first + count):
            r = _record(n)
            producer.produce(topic, encode_append(r), key=r.key)
        producer.flush()

    def next_offset() -> int:
        row = index.partition(topic, 0)
        return row.next_offset if row is not None else -1

    try:
        send(0, 2)
        _step_until([service], lambda: next_offset() == 2, "the first segment committed")
        # Another owner bumps the epoch: the service's next commit is fenced and it lets go.
        index.acquire_partition(topic, 0, "intruder")
        send(2, 2)
        _step_until([service], lambda: tp not in service.owned, "the fenced commit let go")
        # A member joins the group and leaves: the rebalances give the partition back.
        other = bus.consumer(settings.group_id)
        other.subscribe([topic])

        def rebalanced() -> bool:
            other.poll_batch(10, 0.05)
            return tp in service.owned or bool(other.assignment())

        _step_until([service], rebalanced, "a rebalance with a second member")
        other.close()
        _step_until([service], lambda: tp in service.owned, "the partition given back")
        send(4, 2)
        _step_until(
            [service], lambda: next_offset() == 6, "every record committed by the new ownership"
        )
    finally:
        service.consumer.close()
        producer.close()
        index.close()
        bus.close()
