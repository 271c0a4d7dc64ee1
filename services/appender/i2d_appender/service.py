"""The appender loop: consume APPEND, append to each owned partition's open segment, close
segments by record count, size or idle time, and make each one durable in this order:

    complete the object  ->  index commit (fenced by epoch, advances next_offset)
    ->  SEGMENT_CLOSED  ->  Kafka offset commit  ->  delete claim-check payloads

The index, not Kafka, says where a partition resumes: on assignment the epoch is bumped and the
consumer seeks to `next_offset`, so a record is in the index exactly once whatever crashes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from i2d_appender import metrics
from i2d_appender.open_segment import ClosedSegment, OpenSegment
from i2d_appender.settings import AppenderSettings
from i2d_segments.bus import Bus, Message, RebalanceListener, TopicPartition
from i2d_segments.index import FencedError, Index, IndexError_
from i2d_segments.records import (
    AppendRecord,
    MalformedRecord,
    SampleStatus,
    SegmentClosed,
    decode_append,
)
from i2d_segments.runtime import Health, retry_call
from i2d_segments.store import SegmentStore, StoreError

log = logging.getLogger(__name__)


@dataclass
class _Owned:
    """A partition this instance owns, under the epoch the index granted."""

    epoch: int
    next_offset: int
    segment: OpenSegment | None = None
    store_failures: int = 0


class AppenderService(RebalanceListener):
    def __init__(
        self,
        bus: Bus,
        store: SegmentStore,
        index: Index,
        settings: AppenderSettings,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.index = index
        self.health = health or Health()
        self.consumer = bus.consumer(settings.group_id)
        self.producer = bus.producer()
        self.owned: dict[TopicPartition, _Owned] = {}
        # Set by the embedded runner once every record is produced: close segments as soon as
        # the partition has nothing more to read, instead of waiting for the idle timeout.
        self.close_when_idle = threading.Event()
        self.failed: BaseException | None = None
        self._stop = threading.Event()
        self.health.add_check("partition_loop", lambda: self.failed is None)

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set; open segments are committed before returning."""
        self._stop = stop
        self.consumer.subscribe([self.settings.append_topic], listener=self)
        try:
            while not stop.is_set():
                self.step()
            self._close_all("shutdown")
        except BaseException as e:
            self.failed = e
            log.exception("appender stopped on a permanent error")
            raise
        finally:
            self.consumer.close()
            self.producer.flush()
            self.producer.close()

    def step(self) -> None:
        messages = self.consumer.poll_batch(
            self.settings.poll_max_records, self.settings.poll_timeout_seconds
        )
        self.health.beat()
        if messages:
            self._append_batch(messages)
        self._close_due(idle=not messages)
        metrics.OPEN_SEGMENT_BYTES.set(
            sum(o.segment.bytes_written for o in self.owned.values() if o.segment)
        )

    # ------------------------------------------------------------------ rebalance

    def on_assign(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]:
        seeks: dict[TopicPartition, int] = {}
        for tp in partitions:
            lease = retry_call(
                lambda tp=tp: self.index.acquire_partition(  # type: ignore[misc]
                    tp.topic, tp.partition, self.settings.owner
                ),
                what=f"acquire {tp}",
                retry_on=(IndexError_,),
                attempts=self.settings.commit_attempts,
            )
            self.owned[tp] = _Owned(epoch=lease.epoch, next_offset=lease.next_offset)
            seeks[tp] = lease.next_offset
            log.info("owning %s at offset %d, epoch %d", tp, lease.next_offset, lease.epoch)
        metrics.OWNED_PARTITIONS.set(len(self.owned))
        return seeks

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            owned = self.owned.get(tp)
            if owned is not None and owned.segment is not None:
                self._close(tp, owned, "revoke")
            self.owned.pop(tp, None)
        metrics.OWNED_PARTITIONS.set(len(self.owned))

    def on_lost(self, partitions: Sequence[TopicPartition]) -> None:
        # Someone else may own these already: commit nothing, publish nothing.
        for tp in partitions:
            owned = self.owned.pop(tp, None)
            if owned is not None and owned.segment is not None:
                owned.segment.abort()
        metrics.OWNED_PARTITIONS.set(len(self.owned))

    # ------------------------------------------------------------------ appending

    def _append_batch(self, messages: list[Message]) -> None:
        decoded: list[tuple[Message, AppendRecord]] = []
        for m in messages:
            owned = self.owned.get(m.tp)
            if owned is None or m.offset < owned.next_offset:
                continue  # not ours (any more), or already committed before a seek took effect
            try:
                decoded.append((m, decode_append(m.value)))
            except MalformedRecord as e:
                # No sample id to report it under: count it, log it, move past it.
                metrics.RECORDS.labels("malformed").inc()
                log.error("skipping malformed APPEND record %s@%d: %s", m.tp, m.offset, e)
                self._advance_without_record(m)
        new_ids = {
            r.meta.item_id
            for _, r in decoded
            if r.meta.status is SampleStatus.SUCCESS and r.meta.item_id
        }
        indexed = (
            retry_call(
                lambda: self.index.existing_items(new_ids),
                what="dedup lookup",
                retry_on=(IndexError_,),
                attempts=self.settings.commit_attempts,
            )
            if new_ids
            else set()
        )
        for m, record in decoded:
            self._append(m, record, indexed)

    def _segment_for(self, m: Message) -> tuple[_Owned, OpenSegment]:
        owned = self.owned[m.tp]
        if owned.segment is None:
            owned.segment = OpenSegment(self.store, m.tp, owned.epoch, m.offset)
        return owned, owned.segment

    def _advance_without_record(self, m: Message) -> None:
        owned, segment = self._segment_for(m)
        segment.last_offset = m.offset
        segment.records += 1
        self._close_if_full(m.tp, owned)

    def _append(self, m: Message, record: AppendRecord, indexed: set[str]) -> None:
        owned, segment = self._segment_for(m)
        meta = record.meta
        payload = record.payload
        stored = False
        if meta.status is SampleStatus.SUCCESS and meta.item_id:
            stored = meta.item_id in indexed or segment.holds_item(meta.item_id)
            if not stored and payload is None and meta.staged:
                payload = self._fetch_staged(meta.staged)
            metrics.RECORDS.labels("duplicate" if stored else "stored").inc()
        else:
            metrics.RECORDS.labels("failure").inc()
        segment.add(m.offset, record, payload, stored)
        self._close_if_full(m.tp, owned)

    def _fetch_staged(self, name: str) -> bytes:
        return retry_call(
            lambda: self.store.get(name),
            what=f"read claim check {name}",
            retry_on=(StoreError,),
            attempts=self.settings.commit_attempts,
        )

    # ------------------------------------------------------------------ closing

    def _close_if_full(self, tp: TopicPartition, owned: _Owned) -> None:
        seg = owned.segment
        if seg is None:
            return
        if seg.records >= self.settings.number_sample_per_shard:
            self._close(tp, owned, "count")
        elif seg.bytes_written >= self.settings.segment_max_bytes:
            self._close(tp, owned, "size")

    def _close_due(self, idle: bool) -> None:
        now = time.monotonic()
        for tp, owned in list(self.owned.items()):
            seg = owned.segment
            if seg is None:
                continue
            if idle and self.close_when_idle.is_set():
                self._close(tp, owned, "drain")
            elif now - seg.last_append >= self.settings.segment_idle_seconds:
                self._close(tp, owned, "idle")

    def _close_all(self, reason: str) -> None:
        for tp, owned in list(self.owned.items()):
            if owned.segment is not None:
                self._close(tp, owned, reason)

    def _close(self, tp: TopicPartition, owned: _Owned, reason: str) -> None:
        seg = owned.segment
        assert seg is not None
        owned.segment = None
        started = time.monotonic()
        try:
            closed = seg.finish()
        except StoreError as e:
            # The upload is single-use; its records are still in the log from next_offset on,
            # so rewind and rebuild the segment rather than skip anything.
            seg.abort()
            owned.store_failures += 1
            if owned.store_failures >= self.settings.commit_attempts:
                raise
            log.warning(
                "completing %s failed (%s); re-reading from %d", seg.name, e, owned.next_offset
            )
            self.consumer.seek(tp, owned.next_offset)
            self._stop.wait(min(0.2 * 2**owned.store_failures, 10.0))
            return
        owned.store_failures = 0
        commit = closed.commit
        try:
            retry_call(
                lambda: self.index.commit_segment(commit),
                what=f"commit {seg.segment_id}",
                retry_on=(IndexError_,),
                never_retry=(FencedError,),
                attempts=self.settings.commit_attempts,
            )
        except FencedError:
            # A newer owner holds the partition: our object is garbage nobody will read.
            metrics.FENCED.inc()
            log.error("segment %s fenced: partition %s has a newer owner", seg.segment_id, tp)
            self.owned.pop(tp, None)
            return
        owned.next_offset = commit.next_offset
        self._announce(closed)
        self.consumer.commit({tp: commit.next_offset})
        self._delete_staged(closed)
        metrics.SEGMENTS_CLOSED.inc()
        metrics.SEGMENT_BYTES.observe(commit.segment.bytes)
        metrics.COMMIT_SECONDS.observe(time.monotonic() - started)
        log.info(
            "closed %s (%s): %d records, %d items, %d bytes",
            seg.segment_id,
            reason,
            seg.records,
            commit.segment.item_count,
            commit.segment.bytes,
        )

    def _announce(self, closed: ClosedSegment) -> None:
        seg = closed.commit.segment
        event = SegmentClosed(
            segment_id=seg.segment_id,
            uri=seg.uri,
            topic=seg.topic,
            partition=seg.partition,
            first_offset=seg.first_offset,
            last_offset=seg.last_offset,
            epoch=seg.epoch,
            item_count=seg.item_count,
            sample_count=seg.sample_count,
            bytes=seg.bytes,
            sha256=seg.sha256,
            created_at=seg.created_at,
        )
        self.producer.produce(
            self.settings.closed_topic, event.encode(), key=seg.segment_id.encode()
        )
        self.producer.flush()

    def _delete_staged(self, closed: ClosedSegment) -> None:
        for name in closed.staged:
            try:
                self.store.delete(name)
            except StoreError as e:  # garbage at worst; gc removes it
                log.warning("could not delete claim check %s: %s", name, e)
