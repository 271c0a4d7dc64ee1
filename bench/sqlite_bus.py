"""Micro-benchmark of the SQLite bus: produce -> consume throughput of one topic, with
`urls`-like records (200 bytes) and APPEND-like records (50 KB image payloads), in one
process (a producer thread and a consumer thread sharing one SqliteBus, as `service` runs)
and across two processes (a producer process, as `enqueue`, and a consumer process). The
memory bus in one process is the reference the service mode is compared with.

    .venv/bin/python -m bench.sqlite_bus            # every case
    .venv/bin/python -m bench.sqlite_bus --quick    # fewer records

The consumer commits after every batch (the services commit often), so the automatic
truncation runs during the measure too. A rate is records over the time from the first
produce to the last record consumed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from i2d_segments.bus.base import Bus, Message, TopicPartition
from i2d_segments.bus.memory import MemoryBus
from i2d_segments.bus.sqlite import SqliteBus

TOPIC = "bench"
PARTITIONS = 1


@dataclass
class Result:
    bus: str
    layout: str
    size: int
    count: int
    seconds: float

    def line(self) -> str:
        rate = self.count / self.seconds
        mb = rate * self.size / 1e6
        return (
            f"{self.bus:7} {self.layout:14} {self.size:>7} B  {self.count:>7} records  "
            f"{self.seconds:6.2f} s  {rate:>9,.0f} records/s  {mb:7.1f} MB/s"
        )


def produce(bus: Bus, count: int, size: int) -> None:
    producer = bus.producer()
    payload = os.urandom(size)
    for i in range(count):
        producer.produce(TOPIC, payload, key=i.to_bytes(8, "big"))
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(600)
    producer.close()


def consume(bus: Bus, count: int, batch: int) -> float:
    """Read `count` records, committing each batch; the time the last one arrived."""
    consumer = bus.consumer("bench")
    consumer.subscribe([TOPIC])
    got = 0
    while got < count:
        messages: list[Message] = consumer.poll_batch(batch, 1.0)
        got += len(messages)
        if messages:
            last = messages[-1]
            consumer.commit({TopicPartition(TOPIC, last.partition): last.offset + 1})
    done = time.monotonic()
    consumer.close()
    return done


def in_process(bus: Bus, name: str, count: int, size: int, batch: int) -> Result:
    started = time.monotonic()
    writer = threading.Thread(target=produce, args=(bus, count, size))
    writer.start()
    done = consume(bus, count, batch)
    writer.join()
    return Result(name, "one process", size, count, done - started)


def _child_produce(path: str, count: int, size: int, go: float) -> None:
    bus = SqliteBus(path)
    try:
        time.sleep(max(0.0, go - time.time()))
        produce(bus, count, size)
    finally:
        bus.close()


def two_processes(path: Path, count: int, size: int, batch: int) -> Result:
    bus = SqliteBus(path)
    try:
        bus.create_topic(TOPIC, PARTITIONS)
        context = multiprocessing.get_context("spawn")
        go = time.time() + 1.0  # once the child has imported everything
        child = context.Process(target=_child_produce, args=(str(path), count, size, go))
        child.start()
        time.sleep(max(0.0, go - time.time()))
        started = time.monotonic()
        done = consume(bus, count, batch)
        child.join()
        return Result("sqlite", "two processes", size, count, done - started)
    finally:
        bus.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the records")
    parser.add_argument("--batch", type=int, default=1000, help="poll_batch max_messages")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    cases = [(200, 200_000 // scale), (50_000, 5_000 // scale)]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="sqlite-bus-bench-") as tmp:
        for size, count in cases:
            memory = MemoryBus()
            memory.create_topic(TOPIC, PARTITIONS)
            results.append(in_process(memory, "memory", count, size, args.batch))
            print(results[-1].line(), flush=True)

            path = Path(tmp) / f"one-{size}.sqlite"
            sqlite = SqliteBus(path)
            try:
                sqlite.create_topic(TOPIC, PARTITIONS)
                results.append(in_process(sqlite, "sqlite", count, size, args.batch))
            finally:
                sqlite.close()
            print(results[-1].line(), flush=True)

            results.append(two_processes(Path(tmp) / f"two-{size}.sqlite", count, size, args.batch))
            print(results[-1].line(), flush=True)


if __name__ == "__main__":
    main()
