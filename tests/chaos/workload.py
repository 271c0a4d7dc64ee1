"""The chaos suite's producer: numbered APPEND records written straight to the topic, and the
ledger of what the broker acknowledged (partition, offset), which the checker holds the index to.

Record `n` is sample `chaos-<n>`. Most are successes with a small payload whose item_id is its
sha256; some are failures (no payload); some are duplicates: a new sample whose payload is an
earlier success's bytes, so the same item_id (same key, same partition) arrives again and must be
stored once, its new sample row pointing at the stored item.
"""

from __future__ import annotations

import hashlib
import random
import threading
from dataclasses import dataclass, field

from i2d_segments.bus import BusError, DeliveryCallback, Message, Producer
from i2d_segments.bus.base import partition_for_key
from i2d_segments.records import AppendMeta, AppendRecord, SampleStatus, encode_append

FAILURE_RATE = 0.12
DUPLICATE_RATE = 0.12


@dataclass(frozen=True, slots=True)
class Sent:
    n: int
    sample_id: str
    status: str
    item_id: str | None
    caption: str | None


@dataclass(frozen=True, slots=True)
class Acked:
    sent: Sent
    partition: int
    offset: int


BIG_PAYLOAD = 3 * 1024 * 1024  # three of them pass S3Store's 8 MiB part: a multipart upload


def payload_of(n: int, big: bool = False) -> bytes:
    """Deterministic, distinct bytes for record n (0.1-3 KB, or 3 MiB when `big`)."""
    rng = random.Random(n)
    head = f"chaos payload {n}\n".encode()
    return head + rng.randbytes(BIG_PAYLOAD if big else rng.randint(100, 3000))


def sample_id_of(n: int) -> str:
    return f"chaos-{n:07d}"


@dataclass
class Ledger:
    """Everything produced; what the broker acknowledged, by partition and offset."""

    sent: dict[int, Sent] = field(default_factory=dict)
    acked: dict[tuple[int, int], Acked] = field(default_factory=dict)
    payloads: dict[str, bytes] = field(default_factory=dict)  # item_id -> bytes
    failed_deliveries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def acked_by_sample(self) -> dict[str, Acked]:
        with self._lock:
            return {a.sent.sample_id: a for a in self.acked.values()}

    def acked_list(self) -> list[Acked]:
        with self._lock:
            return list(self.acked.values())

    def end_offsets(self) -> dict[int, int]:
        """Per partition, one past the highest acknowledged offset."""
        ends: dict[int, int] = {}
        for a in self.acked_list():
            ends[a.partition] = max(ends.get(a.partition, 0), a.offset + 1)
        return ends


class Workload:
    def __init__(
        self, producer: Producer, topic: str, ledger: Ledger, seed: int, partitions: int
    ) -> None:
        self.partitions = partitions
        self.producer = producer
        self.topic = topic
        self.ledger = ledger
        self.rng = random.Random(seed)
        self.next_n = 0
        self._successes: list[int] = []

    def _record(
        self, n: int, big: bool = False, partition: int | None = None
    ) -> tuple[Sent, AppendRecord]:
        sample_id = sample_id_of(n)
        url = f"http://chaos.invalid/{n}.jpg"
        caption = f"caption of {n}" if n % 3 == 0 else None
        roll = 1.0 if big or partition is not None else self.rng.random()
        if roll < FAILURE_RATE:
            meta = AppendMeta(
                sample_id=sample_id,
                url=url,
                caption=caption,
                status=SampleStatus.FAILED_TO_DOWNLOAD,
                error_message=f"chaos failure {n % 5}",
            )
            return Sent(n, sample_id, meta.status.value, None, caption), AppendRecord(meta=meta)
        if roll < FAILURE_RATE + DUPLICATE_RATE and self._successes:
            payload = payload_of(self.rng.choice(self._successes))
        elif partition is not None:
            payload = self._payload_in(n, big, partition)
        elif big:
            payload = payload_of(n, big=True)
        else:
            payload = payload_of(n)
            self._successes.append(n)
        item_id = hashlib.sha256(payload).hexdigest()
        meta = AppendMeta(
            sample_id=sample_id,
            url=url,
            caption=caption,
            status=SampleStatus.SUCCESS,
            item_id=item_id,
            ext="jpg",
            mime="image/jpeg",
            width=8,
            height=8,
            original_width=8,
            original_height=8,
            original_size=len(payload),
            extra={"n": n},
        )
        with self.ledger._lock:
            self.ledger.payloads[item_id] = payload
        return Sent(n, sample_id, meta.status.value, item_id, caption), AppendRecord(
            meta=meta, payload=payload
        )

    def _payload_in(self, n: int, big: bool, partition: int) -> bytes:
        """Record n's payload, varied until its item_id (the key) hashes to `partition`."""
        base = payload_of(n, big)
        for salt in range(10_000):
            payload = base + f" salt {salt}".encode()
            key = hashlib.sha256(payload).hexdigest().encode()
            if partition_for_key(key, self.partitions) == partition:
                return payload
        raise AssertionError(f"no payload of record {n} lands in partition {partition}")

    def produce(
        self,
        count: int,
        big: int = 0,
        partition: int | None = None,
        flush_timeout: float = 120.0,
    ) -> list[Sent]:
        """Produce `big` records with a 3 MiB payload, then `count` small ones; returns them
        once every delivery report is in (records the broker did not acknowledge are only
        counted: they may or may not be stored). `partition`: every record a new success
        landing there (so a crash point's n-th arrival is one partition's n-th item)."""
        out: list[Sent] = []
        for i in range(big + count):
            n = self.next_n
            self.next_n += 1
            sent, record = self._record(n, big=i < big, partition=partition)
            self.ledger.sent[n] = sent
            out.append(sent)
            self.producer.produce(
                self.topic,
                encode_append(record),
                key=record.key,
                on_delivery=self._report(sent),
            )
        self.producer.flush(flush_timeout)
        return out

    def _report(self, sent: Sent) -> DeliveryCallback:
        ledger = self.ledger

        def report(err: BusError | None, msg: Message | None) -> None:
            with ledger._lock:
                if err is not None or msg is None:
                    ledger.failed_deliveries += 1
                    return
                ledger.acked[(msg.partition, msg.offset)] = Acked(sent, msg.partition, msg.offset)

        return report
