"""A small framework for SEGMENT_CLOSED consumers: the materializer is one, users write more.

A consumer subclasses `SegmentConsumer` and implements `handle(segment, ctx)`; `ConsumerRunner`
does the rest, the same way for every consumer:

- polls SEGMENT_CLOSED in its own consumer group, looks each announced segment up in the index
  (the truth: an event is only a notification) and calls `handle` with its row;
- commits offsets only after `handle` returned and `flush` ran (at least once: a crash
  redelivers, so `handle` must be idempotent, e.g. write outputs under names fixed by the
  segment, with overwrite);
- retries transient store/index errors with backoff, then stops loudly (offsets not committed);
- skips malformed events and events for segments the index does not hold, counting them;
- `catch_up()` handles committed segments whose outputs are missing (`is_done` says which), so a
  consumer started late, or one that lost events, converges; `replay()` redoes a chosen set;
  both also work with no bus at all, over an output folder's index.

Context: `ctx.samples(segment_id)` (its rows: the index's refs joined with the segment's
manifest), `ctx.items(segment_id)` (the images, streamed from the segment once), `ctx.rows`
(full rows by id, url or segment), `ctx.store` / `ctx.index` for anything else.

A segment's sample rows can only shrink after its commit: a row delivered again with a
different outcome moves to the newer segment (latest wins). `ctx.index.moves_into(segment_id)`
names the older segments that lost rows to the one being handled: a consumer with per-segment
outputs of sample rows writes those again, as the materializer does with its metadata parquet.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import Counter

from i2d_segments.bus import Bus, Consumer, HeldPartitions, Message, TopicPartition
from i2d_segments.index import Index, IndexAccessError, SampleRow, SegmentRow
from i2d_segments.reader import DatasetReader, Item, SegmentRows
from i2d_segments.reader.segment_rows import DEFAULT_CACHE_ROWS
from i2d_segments.records import MalformedRecord, SegmentClosed
from i2d_segments.runtime import Health, retry_call
from i2d_segments.store import SegmentStore, StoreError

log = logging.getLogger(__name__)

EVENT_OUTCOMES = ("handled", "malformed", "unknown_segment")
EVENTS = Counter(
    "img2dataset_segment_consumer_events_total",
    "SEGMENT_CLOSED events taken by a segment consumer, by group and outcome "
    "(handled, malformed, unknown_segment).",
    ["group", "outcome"],
)
TRANSIENT = (StoreError, IndexAccessError)


@dataclass
class ConsumerContext:
    """What a consumer reads from: the store and the index, plus shortcuts."""

    store: SegmentStore
    index: Index
    # The rows of parsed manifests `rows` keeps besides the one used last (SegmentRows).
    cache_rows: int = DEFAULT_CACHE_ROWS
    _reader: DatasetReader | None = field(default=None, init=False, repr=False)

    @property
    def reader(self) -> DatasetReader:
        if self._reader is None:
            self._reader = DatasetReader(self.store, self.index, cache_rows=self.cache_rows)
        return self._reader

    @property
    def rows(self) -> SegmentRows:
        """Full sample and item rows (the index's refs and the segments' manifests)."""
        rows = self.reader.rows
        assert rows is not None  # the reader has the index
        return rows

    def samples(self, segment_id: str) -> list[SampleRow]:
        """Every input row the segment holds (successes and failures)."""
        return self.rows.samples_for_segment(segment_id)

    def items(self, segment_id: str, *, load_images: bool = True) -> Iterator[Item]:
        """The segment's images with their metadata, streamed from the object once."""
        return self.reader.iter_segment(segment_id, load_images=load_images)


class SegmentConsumer(ABC):
    """Subclass, set `group_id`, implement `handle`."""

    group_id: str = "segment-consumer"
    # How many rows of parsed segment manifests `ctx.rows` keeps besides the one used last
    # (i2d_segments.reader.SegmentRows): more saves parsing a manifest again for lookups
    # across segments (`ctx.rows.item(...)` of a deduplicated image), 0 holds no memory for
    # segments already handled.
    manifest_cache_rows: int = DEFAULT_CACHE_ROWS

    @abstractmethod
    def handle(self, segment: SegmentRow, ctx: ConsumerContext) -> None:
        """Process one committed segment. Called at least once per segment: be idempotent."""

    def is_done(self, segment: SegmentRow, ctx: ConsumerContext) -> bool:
        """Whether `segment` was already handled (its outputs exist); `catch_up` skips those.
        The default says no, so `catch_up` handles every committed segment."""
        return False

    def flush(self, ctx: ConsumerContext, *, final: bool) -> None:  # noqa: B027 - optional hook
        """Called after each batch of handled events, before their offsets are committed, and
        once with `final=True` when the runner stops or a catch-up ends: for work batched
        across segments (a manifest, a buffered sink)."""


class ConsumerRunner:
    def __init__(
        self,
        consumer: SegmentConsumer,
        bus: Bus | None,
        store: SegmentStore,
        index: Index,
        *,
        topic: str = "SEGMENT_CLOSED",
        group_id: str | None = None,
        health: Health | None = None,
        poll_timeout: float = 0.5,
        max_batch: int = 100,
        retry_attempts: int = 6,
    ) -> None:
        self.consumer = consumer
        self.topic = topic
        self.group_id = group_id or consumer.group_id
        for outcome in EVENT_OUTCOMES:  # at 0 from the start: "No data" is not 0 on a panel
            EVENTS.labels(self.group_id, outcome)
        self.ctx = ConsumerContext(store, index, consumer.manifest_cache_rows)
        self.health = health or Health()
        self.held = HeldPartitions()
        self.health.add_check("partitions_assigned", lambda: bool(self.held.held()))
        self.poll_timeout = poll_timeout
        self.max_batch = max_batch
        self.retry_attempts = retry_attempts
        self._bus_consumer: Consumer | None = None if bus is None else bus.consumer(self.group_id)

    # -- over the bus ---------------------------------------------------------------------

    def run(self, stop: threading.Event, *, catch_up: bool = True) -> None:
        """Catch up on missed segments, then handle events until `stop` is set."""
        if self._bus_consumer is None:
            raise RuntimeError("run() needs a bus; use catch_up() or replay() without one")
        if catch_up:
            self.catch_up()
        self._bus_consumer.subscribe([self.topic], listener=self.held)
        try:
            # At least one poll, even if `stop` came during the catch-up: events already
            # waiting are handled and committed rather than redelivered to the next run.
            self.step()
            while not stop.is_set():
                self.step()
        finally:
            try:
                self.consumer.flush(self.ctx, final=True)
            finally:
                self._bus_consumer.close()

    def step(self) -> int:
        """One poll: handle the batch, flush, commit. Returns the number of events taken."""
        assert self._bus_consumer is not None, "step() needs a bus"
        messages = self._bus_consumer.poll_batch(self.max_batch, self.poll_timeout)
        self.health.beat()
        if not messages:
            self.consumer.flush(self.ctx, final=False)
            return 0
        offsets: dict[TopicPartition, int] = {}
        for m in messages:
            self._take(m)
            offsets[m.tp] = m.offset + 1
            self.health.beat()
        self.consumer.flush(self.ctx, final=False)
        self._bus_consumer.commit(offsets)
        return len(messages)

    def _take(self, m: Message) -> None:
        try:
            event = SegmentClosed.decode(m.value)
        except MalformedRecord as e:
            log.error(
                "%s: skipping malformed SEGMENT_CLOSED %s@%d: %s", self.group_id, m.tp, m.offset, e
            )
            EVENTS.labels(self.group_id, "malformed").inc()
            return
        self.handle_segment_id(event.segment_id)

    # -- without a bus ----------------------------------------------------------------------

    def handle_segment_id(self, segment_id: str) -> bool:
        """Handle one segment by id; False (logged) when the index does not hold it: an event
        can only follow a commit, so that is a foreign event or a bug, not a reason to stop."""
        segment = retry_call(
            lambda: self.ctx.index.segment(segment_id),
            what="segment lookup",
            retry_on=(IndexAccessError,),
            attempts=self.retry_attempts,
        )
        if segment is None:
            log.error(
                "%s: SEGMENT_CLOSED for %s, which the index does not hold",
                self.group_id,
                segment_id,
            )
            EVENTS.labels(self.group_id, "unknown_segment").inc()
            return False
        self.handle(segment)
        return True

    def handle(self, segment: SegmentRow) -> None:
        retry_call(
            lambda: self.consumer.handle(segment, self.ctx),
            what=f"{self.group_id} on {segment.segment_id}",
            retry_on=TRANSIENT,
            attempts=self.retry_attempts,
        )
        EVENTS.labels(self.group_id, "handled").inc()

    def catch_up(self) -> int:
        """Handle every committed segment the consumer has not done yet; returns how many."""
        done = 0
        for segment in self.ctx.index.segments():
            if not self.consumer.is_done(segment, self.ctx):
                self.handle(segment)
                done += 1
                self.health.beat()
        self.consumer.flush(self.ctx, final=True)
        if done:
            log.info("%s: caught up on %d segments", self.group_id, done)
        return done

    def replay(self, segment_ids: Iterable[str] | None = None) -> int:
        """Handle the given segments (default: all committed ones) again; returns how many."""
        ids = (
            [s.segment_id for s in self.ctx.index.segments()]
            if segment_ids is None
            else segment_ids
        )
        done = sum(int(self.handle_segment_id(s)) for s in ids)
        self.consumer.flush(self.ctx, final=True)
        return done
