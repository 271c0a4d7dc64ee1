"""The fetcher loop: `urls` records in, one APPEND record per input row out.

    poll (consumer thread)  ->  fetch (a worker process downloads, processes and encodes;
    pool/)  ->  produce APPEND  ->  delivery acknowledged  ->  commit `urls` offsets

This process only dispatches records and produces what the workers encoded, observing the
figures they send back into its metrics. Back-pressure is explicit: the pool is handed at most
its `capacity` of rows (`thread_count` per worker process fetched at once, as in img2dataset,
and as many again queued in the workers), and no more than that many records polled wait for
room; the loop polls again only once every record it polled has been handed out. All
consumer calls run on one dedicated thread (the consumer is not thread-safe and rebalance
callbacks run inside its poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import NamedTuple

from i2d_fetcher import eventloop, metrics
from i2d_fetcher.offsets import OffsetTracker
from i2d_fetcher.outcome import Outcome
from i2d_fetcher.pool import RowFetcher, WorkerConfig, open_fetcher
from i2d_fetcher.pool.config import capacity
from i2d_fetcher.settings import FetcherSettings
from i2d_segments.bus import Bus, BusError, HeldPartitions, Message, TopicPartition
from i2d_segments.naming import staging_name
from i2d_segments.records import AppendRecord, SampleStatus, decode_append
from i2d_segments.runtime import Health
from i2d_segments.store import SegmentStore

log = logging.getLogger(__name__)

# The longest wait of a poll while rows are in flight or unacknowledged: the loop commits
# only between polls, and the commit of the last rows is what ends a download (and an
# `enqueue --wait`). Polls return at once while records come; only a starved loop (the end
# of a list) goes round this often, a consumer-thread round trip each time.
IN_FLIGHT_POLL_SECONDS = 0.01


class FetchProgress(NamedTuple):
    rows_done: int
    successes: int


class FetcherService(HeldPartitions):
    def __init__(
        self,
        bus: Bus,
        settings: FetcherSettings,
        store: SegmentStore | None = None,
        health: Health | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.options = settings.fetch_options()
        self.store = store  # for claim checks of payloads over the inline limit
        self.health = health or Health()
        self.health.add_check("partitions_assigned", lambda: bool(self.held()))
        self.consumer = bus.consumer(settings.group_id)
        self.producer = bus.producer()
        self.offsets = OffsetTracker()
        self._consumer_thread: Executor = ThreadPoolExecutor(1, thread_name_prefix="urls-consumer")
        self.rows_done = 0
        self.successes = 0
        self.fetcher: RowFetcher | None = None  # while running: the workers (or this process)

    def progress(self) -> FetchProgress:
        """Rows answered since this service started (their APPEND record acknowledged)."""
        return FetchProgress(self.rows_done, self.successes)

    # ------------------------------------------------------------------ rebalance

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
        # Runs on the consumer thread, inside poll: commit what is acknowledged, then let go.
        done = {tp: o for tp, o in self.offsets.committable().items() if tp in partitions}
        if done:
            self.consumer.commit(done)
        self.offsets.forget(list(partitions))
        super().on_revoke(partitions)

    def on_lost(self, partitions: Sequence[TopicPartition]) -> None:
        self.offsets.forget(list(partitions))
        super().on_lost(partitions)

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event) -> None:
        eventloop.run(self.run_async(stop))

    async def run_async(self, stop: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        config = WorkerConfig(
            options=self.options,
            concurrency=self.settings.rows_in_flight,
            url_field=self.settings.url_field,
            caption_field=self.settings.caption_field,
            log_level=logging.getLogger().getEffectiveLevel(),
        )
        await loop.run_in_executor(
            self._consumer_thread,
            lambda: self.consumer.subscribe([self.settings.urls_topic], listener=self),
        )
        # Rows handed to the pool: `rows_in_flight` being fetched, and with worker processes as
        # many again queued in them (pool.config.capacity).
        limit = capacity(self.settings.rows_in_flight, self.settings.processes_count)
        # The rows handed out: each one's fetch, answered by `_fetched` when it completes (a
        # callback, not a task per row: the worker processes hand back futures).
        tasks: set[asyncio.Future[Outcome | None]] = set()
        # Poll again once `refill` rows are done, not after each one: a consumer-thread round
        # trip (and a wait over every pending task) per batch of rows instead of per row.
        refill = max(1, limit // 8)
        room_opened = asyncio.Event()
        # Records polled and not started yet. A poll takes up to `limit` of them, started as
        # room opens: one consumer-thread round trip per `limit` rows, not per `refill` (in
        # `download`, each round trip is two switches between the process's threads). Only an
        # empty queue polls again, so a rebalance, which runs inside a poll, never finds a
        # record polled here and not started; at a stop, those not started are not committed
        # and come again.
        polled: deque[Message] = deque()

        def finished(m: Message, task: asyncio.Future[Outcome | None]) -> None:
            try:
                self._fetched(m, task)
            finally:
                tasks.discard(task)
                if limit - len(tasks) >= refill:
                    room_opened.set()

        last_commit = time.monotonic()
        pending = False  # rows started whose APPEND record is not acknowledged yet
        try:
            async with open_fetcher(config, self.settings.processes_count) as fetcher:
                self.fetcher = fetcher
                while not stop.is_set():
                    self.health.beat()
                    room = limit - len(tasks)
                    if room < refill:
                        room_opened.clear()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.2):
                                await room_opened.wait()
                    else:
                        if not polled:
                            polled += await loop.run_in_executor(
                                self._consumer_thread,
                                self.consumer.poll_batch,
                                min(limit, 1000),
                                IN_FLIGHT_POLL_SECONDS
                                if tasks or pending
                                else self.settings.poll_timeout_seconds,
                            )
                        if not polled and tasks:
                            await asyncio.sleep(0)
                        for _ in range(min(room, len(polled))):
                            m = polled.popleft()
                            self.offsets.start(m.tp, m.offset)
                            task = asyncio.ensure_future(fetcher.fetch(m.value))
                            tasks.add(task)
                            task.add_done_callback(functools.partial(finished, m))
                    self.producer.poll(0)
                    metrics.IN_FLIGHT.set(len(tasks))
                    # Rows being fetched or waiting for their acknowledgement: the poll above
                    # stays short meanwhile, so acknowledgements are served soon.
                    pending = self.offsets.in_flight() > 0
                    # Every commit_interval_seconds, and at once when nothing is pending any
                    # more: the last rows of a list are committed (what `enqueue --wait` reads)
                    # as soon as they are acknowledged, not up to an interval later. An idle
                    # fetcher commits nothing (only offsets that moved are committed).
                    due = time.monotonic() - last_commit >= self.settings.commit_interval_seconds
                    if due or not pending:
                        await self._commit(loop)
                        last_commit = time.monotonic()
                # Graceful stop: finish what is in flight, get it acknowledged, commit.
                if tasks:
                    await asyncio.wait(tasks)
                self.fetcher = None
            await loop.run_in_executor(None, self.producer.flush)
            await self._commit(loop)
        finally:
            await loop.run_in_executor(self._consumer_thread, self.consumer.close)
            self._consumer_thread.shutdown(wait=True)
            self.producer.close()

    async def _commit(self, loop: asyncio.AbstractEventLoop) -> None:
        offsets = self.offsets.committable()
        if offsets:
            await loop.run_in_executor(self._consumer_thread, self.consumer.commit, offsets)

    def _fetched(self, m: Message, fetch: asyncio.Future[Outcome | None]) -> None:
        outcome = fetch.result()
        if outcome is None:  # blank line: nothing to report
            self.offsets.done(m.tp, m.offset)
            return
        metrics.observe(outcome.stats)
        self._produce(m, self._claim_check(outcome))

    def _claim_check(self, outcome: Outcome) -> Outcome:
        """Payloads over the inline limit travel through the store, not the bus (the rare
        case where the record the worker encoded is decoded here)."""
        if outcome.payload_size <= self.settings.inline_payload_limit:
            return outcome
        record = decode_append(outcome.value)
        if self.store is None or record.meta.item_id is None:
            failed = AppendRecord.failure(
                record.meta, "payload too large for the bus and no store configured"
            )
            return Outcome.of(failed, outcome.stats)
        name = staging_name(record.meta.item_id)
        assert record.payload is not None
        self.store.put(name, record.payload)
        staged = record.meta.model_copy(update={"staged": name})
        return Outcome.of(AppendRecord(meta=staged, payload=None), outcome.stats)

    def _produce(self, m: Message, outcome: Outcome) -> None:
        def delivered(err: BusError | None, _msg: Message | None) -> None:
            if err is not None and outcome.payload_size:
                # e.g. a record the broker refuses: still report the row, without payload.
                record = decode_append(outcome.value)
                log.error("APPEND delivery failed for %s: %s", record.meta.url, err)
                failed = AppendRecord.failure(record.meta, f"could not publish record: {err}")
                self._produce(m, Outcome.of(failed, outcome.stats))
                return
            if err is not None:
                log.error("APPEND delivery of a failure record failed: %s; retrying", err)
                self._produce(m, outcome)
                return
            self.offsets.done(m.tp, m.offset)
            self.rows_done += 1
            self.successes += int(outcome.status is SampleStatus.SUCCESS)
            metrics.ROWS_BY_STATUS[outcome.status].inc()  # a StrEnum: its value, as a label
            if outcome.reason is not None:
                metrics.FAILURES_BY_REASON[outcome.reason].inc()

        self.producer.produce(
            self.settings.append_topic, outcome.value, key=outcome.key, on_delivery=delivered
        )
