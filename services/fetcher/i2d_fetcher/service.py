"""The fetcher loop: `urls` records in, one APPEND record per input row out.

    poll (consumer thread)  ->  fetch_row (event loop; CPU work in a process pool)
    ->  produce APPEND  ->  delivery acknowledged  ->  commit `urls` offsets

Back-pressure is explicit: no more than `thread_count` rows are in flight; the loop stops
polling while that many are pending. All consumer calls run on one dedicated thread (the
consumer is not thread-safe and rebalance callbacks run inside its poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor

from i2d_fetcher import metrics
from i2d_fetcher.cpu import CpuPool
from i2d_fetcher.download import HttpClient, open_client
from i2d_fetcher.offsets import OffsetTracker
from i2d_fetcher.process import fetch_row
from i2d_fetcher.settings import FetcherSettings
from i2d_segments.bus import Bus, BusError, Message, RebalanceListener, TopicPartition
from i2d_segments.ids import sha256_hex
from i2d_segments.naming import staging_name
from i2d_segments.records import (
    AppendMeta,
    AppendRecord,
    MalformedRecord,
    SampleStatus,
    encode_append,
    parse_url_value,
)
from i2d_segments.runtime import Health
from i2d_segments.store import SegmentStore

log = logging.getLogger(__name__)


def failure_record(raw: bytes, error: str) -> AppendRecord:
    """A row we could not even parse still gets its sample row, keyed by its text."""
    text = raw.decode("utf-8", errors="replace").strip()
    return AppendRecord(
        meta=AppendMeta(
            sample_id=sha256_hex(raw.strip()),
            url=text[:4096],
            status=SampleStatus.FAILED_TO_DOWNLOAD,
            error_message=error,
        )
    )


class FetcherService(RebalanceListener):
    def __init__(
        self,
        bus: Bus,
        settings: FetcherSettings,
        store: SegmentStore | None = None,
        health: Health | None = None,
        cpu: CpuPool | None = None,
    ) -> None:
        self.settings = settings
        self.options = settings.fetch_options()
        self.store = store  # for claim checks of payloads over the inline limit
        self.health = health or Health()
        self.consumer = bus.consumer(settings.group_id)
        self.producer = bus.producer()
        self.offsets = OffsetTracker()
        self._cpu = cpu
        self._owns_cpu = cpu is None
        self._consumer_thread: Executor = ThreadPoolExecutor(1, thread_name_prefix="urls-consumer")
        self.rows_done = 0
        self.successes = 0
        self.on_row: Callable[[AppendRecord], None] | None = None  # progress hook

    # ------------------------------------------------------------------ rebalance

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
        # Runs on the consumer thread, inside poll: commit what is acknowledged, then let go.
        done = {tp: o for tp, o in self.offsets.committable().items() if tp in partitions}
        if done:
            self.consumer.commit(done)
        self.offsets.forget(list(partitions))

    def on_lost(self, partitions: Sequence[TopicPartition]) -> None:
        self.offsets.forget(list(partitions))

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event) -> None:
        asyncio.run(self.run_async(stop))

    async def run_async(self, stop: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        cpu = self._cpu or CpuPool(self.settings.processes_count)
        await loop.run_in_executor(
            self._consumer_thread,
            lambda: self.consumer.subscribe([self.settings.urls_topic], listener=self),
        )
        limit = self.settings.thread_count
        tasks: set[asyncio.Task[None]] = set()
        # Poll again once `refill` rows are done, not after each one: a consumer-thread round
        # trip (and a wait over every pending task) per batch of rows instead of per row.
        refill = max(1, limit // 8)
        room_opened = asyncio.Event()

        def finished(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            if limit - len(tasks) >= refill:
                room_opened.set()

        last_commit = time.monotonic()
        try:
            async with open_client(self.options, limit) as client:
                while not stop.is_set():
                    self.health.beat()
                    room = limit - len(tasks)
                    if room < refill:
                        room_opened.clear()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.2):
                                await room_opened.wait()
                    else:
                        messages = await loop.run_in_executor(
                            self._consumer_thread,
                            self.consumer.poll_batch,
                            min(room, 1000),
                            0.05 if tasks else self.settings.poll_timeout_seconds,
                        )
                        for m in messages:
                            self.offsets.start(m.tp, m.offset)
                            task = asyncio.create_task(self._handle(client, cpu, m))
                            tasks.add(task)
                            task.add_done_callback(finished)
                        if not messages and tasks:
                            await asyncio.sleep(0)
                    self.producer.poll(0)
                    metrics.IN_FLIGHT.set(len(tasks))
                    if time.monotonic() - last_commit >= self.settings.commit_interval_seconds:
                        await self._commit(loop)
                        last_commit = time.monotonic()
                # Graceful stop: finish what is in flight, get it acknowledged, commit.
                if tasks:
                    await asyncio.wait(tasks)
            await loop.run_in_executor(None, self.producer.flush)
            await self._commit(loop)
        finally:
            await loop.run_in_executor(self._consumer_thread, self.consumer.close)
            self._consumer_thread.shutdown(wait=True)
            self.producer.close()
            if self._owns_cpu:
                cpu.close()

    async def _commit(self, loop: asyncio.AbstractEventLoop) -> None:
        offsets = self.offsets.committable()
        if offsets:
            await loop.run_in_executor(self._consumer_thread, self.consumer.commit, offsets)

    async def _handle(self, client: HttpClient, cpu: CpuPool, m: Message) -> None:
        try:
            row = parse_url_value(m.value, self.settings.url_col, self.settings.caption_col)
        except (MalformedRecord, UnicodeDecodeError) as e:
            row = None
            record: AppendRecord | None = failure_record(m.value, f"malformed row: {e}")
        else:
            record = None
        if row is None and record is None:  # blank line: nothing to report
            self.offsets.done(m.tp, m.offset)
            return
        if row is not None:
            record = await fetch_row(client, row, self.options, cpu.run)
        assert record is not None
        self._produce(m, self._claim_check(record))

    def _claim_check(self, record: AppendRecord) -> AppendRecord:
        """Payloads over the inline limit travel through the store, not the bus."""
        payload = record.payload
        if payload is None or len(payload) <= self.settings.inline_payload_limit:
            return record
        if self.store is None or record.meta.item_id is None:
            return _as_failure(record, "payload too large for the bus and no store configured")
        name = staging_name(record.meta.item_id)
        self.store.put(name, payload)
        return AppendRecord(meta=record.meta.model_copy(update={"staged": name}), payload=None)

    def _produce(self, m: Message, record: AppendRecord) -> None:
        def delivered(err: BusError | None, _msg: Message | None) -> None:
            if err is not None and record.payload is not None:
                # e.g. a record the broker refuses: still report the row, without payload.
                log.error("APPEND delivery failed for %s: %s", record.meta.url, err)
                self._produce(m, _as_failure(record, f"could not publish record: {err}"))
                return
            if err is not None:
                log.error("APPEND delivery of a failure record failed: %s; retrying", err)
                self._produce(m, record)
                return
            self.offsets.done(m.tp, m.offset)
            self.rows_done += 1
            ok = record.meta.status is SampleStatus.SUCCESS
            self.successes += int(ok)
            metrics.ROWS.labels(record.meta.status.value).inc()
            if self.on_row is not None:
                self.on_row(record)

        self.producer.produce(
            self.settings.append_topic, encode_append(record), key=record.key, on_delivery=delivered
        )


def _as_failure(record: AppendRecord, error: str) -> AppendRecord:
    meta = record.meta.model_copy(
        update={
            "status": SampleStatus.FAILED_TO_DOWNLOAD,
            "error_message": error,
            "item_id": None,
            "staged": None,
        }
    )
    return AppendRecord(meta=meta, payload=None)
