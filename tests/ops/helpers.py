"""A dataset with the garbage real faults leave, written by the real appender over the ports.

`build_dataset` drives `AppenderService` over an in-process bus into any store and index:

    offsets 0..4   committed by the first owner (epoch 1)
    offsets 5..6   a zombie's object (epoch 1, fenced) and the new owner's commit (epoch 2)
    offsets 7..9   an object completed at epoch 2 whose owner died before the index commit,
                   then the next owner's commit of the same records (epoch 3)

with failures, an image stored once for two samples, and a sample recorded twice (its latest
outcome a failure).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from i2d_appender.open_segment import OpenSegment
from i2d_appender.service import AppenderService
from i2d_appender.settings import AppenderSettings
from i2d_segments.bus import TopicPartition
from i2d_segments.bus.memory import MemoryBus
from i2d_segments.index import Index
from i2d_segments.naming import segment_object_name
from i2d_segments.records import AppendRecord, encode_append
from i2d_segments.store import SegmentStore
from tests.append_records import failure, success

TOPIC = "APPEND"
TP = TopicPartition(TOPIC, 0)


class Pipeline:
    def __init__(self, store: SegmentStore, index: Index) -> None:
        self.store = store
        self.index = index
        self.bus = MemoryBus()
        self.bus.create_topic(TOPIC, 1)
        self.bus.create_topic("SEGMENT_CLOSED", 1)
        self.producer = self.bus.producer()

    def appender(self, group_id: str) -> AppenderService:
        settings = AppenderSettings(
            group_id=group_id,
            number_sample_per_shard=5,
            segment_idle_seconds=3600,
            poll_timeout_seconds=0.05,
            metrics_port=0,
        )
        service = AppenderService(self.bus, self.store, self.index, settings)
        service.consumer.subscribe([TOPIC], listener=service)
        return service

    def send(self, records: list[AppendRecord]) -> None:
        for r in records:
            self.producer.produce(TOPIC, encode_append(r), key=r.key)
        self.producer.flush()


def run_until(service: AppenderService, done: Callable[[], bool], steps: int = 200) -> None:
    for _ in range(steps):
        service.step()
        if done():
            return
    raise AssertionError("condition not reached")


@dataclass(frozen=True, slots=True)
class Dataset:
    committed: list[str]  # object names, offset order
    garbage: list[str]  # complete objects no commit names


def build_dataset(store: SegmentStore, index: Index) -> Dataset:
    p = Pipeline(store, index)
    same = b"identical original bytes"
    p.send([success(0, same), success(1), failure(2), success(3), success(4, same)])
    p.send([success(5), failure(6)])
    first = p.appender("appender")
    run_until(first, lambda: len(index.segments()) == 1)  # 0..4 committed, 5..6 open
    second = p.appender("appender-2")  # takes the partition: epoch 2
    run_until(second, lambda: second.owned.get(TP) is not None, steps=5)
    first.drain()
    first.step()  # nothing more to read: completes its object; the commit is fenced
    second.drain()
    run_until(second, lambda: len(index.segments()) == 2)

    batch = [success(7), failure(8, sample_id="s1"), success(9)]
    p.send(batch)
    # The epoch-2 owner completes a segment of offsets 7..9 and dies before the index commit
    # (the appender's `after_complete` crash point, done by hand).
    crashed = OpenSegment(store, TP, 2, 7)
    for offset, record in enumerate(batch, start=7):
        crashed.add(offset, record, record.payload, stored=False)
    crashed.finish()
    third = p.appender("appender-3")  # epoch 3, resumes at next_offset 7
    third.drain()
    run_until(third, lambda: len(index.segments()) == 3)
    return Dataset(
        committed=[
            segment_object_name(0, 0, 1),
            segment_object_name(0, 5, 2),
            segment_object_name(0, 7, 3),
        ],
        garbage=[segment_object_name(0, 5, 1), segment_object_name(0, 7, 2)],
    )
