"""The appender loop: consume APPEND, append to each owned partition's open segment, close
segments by record count, size, idle time or age, and make each one durable in this order:

    complete the object  ->  index commit (fenced by epoch, advances next_offset)
    ->  SEGMENT_CLOSED acknowledged  ->  Kafka offset commit  ->  delete claim-check payloads

The index, not Kafka, says where a partition resumes: on assignment the epoch is bumped and the
consumer seeks to `next_offset`, so a record is in the index exactly once whatever crashes.

Failures never skip data. A store or index call that fails discards what is not committed (the
open segment; a completed object whose commit keeps failing is garbage for `gc`), seeks the
partition back to the first uncommitted offset and pauses it for a doubling backoff (`retry`);
the other partitions go on. After `commit_attempts` consecutive failures the partition stops:
paused, counted in a metric, logged, and readiness fails until the appender is restarted. A
commit the index refuses as fenced means another appender owns the partition now: this one lets
go of it. A commit the index refuses because its `next_offset` is not where this appender
resumed (the index lost acknowledged commits) makes it take the partition again and re-read
from the index's position. The phases a partition goes through, and how it moves between them, are
`partition.Phase` and the methods of `partition.PartitionState`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

from i2d_appender import crashpoints, metrics
from i2d_appender.announce import Announcement, Announcer, closed_event
from i2d_appender.open_segment import ClosedSegment, OpenSegment
from i2d_appender.partition import OnFailure, PartitionState, Phase
from i2d_appender.progress import ProgressPublisher
from i2d_appender.retry import RetryPolicy
from i2d_appender.settings import AppenderSettings
from i2d_segments import stagecpu
from i2d_segments.bus import Bus, BusError, Message, RebalanceListener, TopicPartition
from i2d_segments.index import FencedError, Index, IndexAccessError, PositionError
from i2d_segments.records import (
    AppendRecord,
    MalformedRecord,
    SampleStatus,
    decode_append,
)
from i2d_segments.runtime import Health
from i2d_segments.segment import handoff
from i2d_segments.store import ObjectExistsError, SegmentStore, StoreError

log = logging.getLogger(__name__)


class AppenderService(RebalanceListener):
    def __init__(
        self,
        bus: Bus,
        store: SegmentStore,
        index: Index,
        settings: AppenderSettings,
        health: Health | None = None,
        *,
        hand_off_manifests: bool = False,
    ) -> None:
        """`hand_off_manifests`: a materializer runs in this process and takes each committed
        segment's manifest from here rather than from the store (segment/handoff.py); without
        one, none is held for it."""
        self.settings = settings
        self.store = store
        self.index = index
        self.hand_off_manifests = hand_off_manifests
        self._index_cpu = 0.0  # CPU seconds in index calls (the `index` stage), running total
        self.health = health or Health()
        self.consumer = bus.consumer(settings.group_id)
        self.producer = bus.producer()
        self.announcer = Announcer(
            self.producer, settings.closed_topic, bus=bus, group_id=settings.group_id, index=index
        )
        self.retries = RetryPolicy.of(settings)
        self.owned: dict[TopicPartition, PartitionState] = {}
        self.progress = ProgressPublisher(
            index,
            settings.owner,
            interval=settings.progress_interval_seconds,
            window=settings.progress_window_seconds,
            recent_rows=settings.progress_recent_rows,
        )
        # Set through `drain` once every record is produced: close segments as soon as the
        # partition has nothing more to read, instead of waiting for the idle timeout.
        self._draining = threading.Event()
        self.failed: BaseException | None = None
        # Partitions rewound during the current batch: the rest of the batch is stale for them.
        self._rewound: set[TopicPartition] = set()
        self.health.add_check("partition_loop", lambda: self.failed is None)
        self.health.add_check("partitions", lambda: not self.stopped_partitions())
        # Owned: assigned by the group and leased in the index (so both are reachable).
        self.health.add_check(
            "partitions_owned", lambda: any(s.epoch is not None for s in list(self.owned.values()))
        )

    def drain(self, on: bool = True) -> None:
        """While on, the producer of APPEND is done (a download's list is all fetched, or its
        fetcher stopped): a segment closes as soon as its partition has nothing more to read,
        instead of after `segment_idle_seconds`, and a stop first appends and commits what is
        left to read, rather than leave it on a bus that may end with the process. The
        distributed appender is never drained: its stop leaves the topic's backlog to the
        partition's next owner. Thread-safe."""
        if on:
            self._draining.set()
        else:
            self._draining.clear()

    def stopped_partitions(self) -> dict[TopicPartition, str]:
        return {tp: s.stop_reason for tp, s in self.owned.items() if s.stop_reason is not None}

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set; open segments are committed before returning."""
        self.consumer.subscribe([self.settings.append_topic], listener=self)
        try:
            while not stop.is_set():
                self.step()
            while self._draining.is_set() and self.step():
                pass  # until a poll finds nothing left (see `drain`)
            self._shutdown()
        except BaseException as e:
            self.failed = e
            log.exception("appender stopped on an unexpected error")
            raise
        finally:
            self.consumer.close()  # revokes what is left through on_revoke
            try:
                self.producer.close()
            except BusError as e:
                log.warning("closing the producer: %s", e)

    def step(self) -> int:
        """One poll and what follows it; returns how many records the poll brought."""
        started = time.thread_time()
        index_before = self._index_cpu
        try:
            return self._step()
        finally:
            # The step's CPU: the index's part (dedup lookups, commits) and the rest (append).
            spent = time.thread_time() - started
            index = self._index_cpu - index_before
            stagecpu.add("index", index)
            stagecpu.add("append", spent - index)

    def _linger(self, polled: int) -> None:
        """Let records gather after a small poll, as a Kafka consumer's fetch waits for
        `fetch.min.bytes`: a download's appender otherwise woke for every few records its
        fetcher produced, each time a switch between the process's threads. Not while
        draining: the last records are committed at once."""
        linger = self.settings.poll_linger_seconds
        if linger and polled < self.settings.poll_max_records // 8 and not self._draining.is_set():
            time.sleep(linger)

    def _step(self) -> int:
        self._retry_due()
        messages = self.consumer.poll_batch(
            self.settings.poll_max_records, self.settings.poll_timeout_seconds
        )
        self.health.beat()
        if messages:
            self._append_batch(messages)
            self._linger(len(messages))
        self._close_due(idle=not messages)
        self.announcer.reannounce_due(self.owned.values())
        self.announcer.poll()
        self._commit_announced(self.announcer.partitions())
        self.progress.publish_due(self.owned)
        metrics.OPEN_SEGMENT_BYTES.set(
            sum(s.segment.bytes_written for s in self.owned.values() if s.segment)
        )
        metrics.PARTITIONS_STOPPED.set(len(self.stopped_partitions()))
        return len(messages)

    def _shutdown(self) -> None:
        for state in list(self.owned.values()):
            if state.pending is not None:
                self._commit(state, state.pending, on_failure="abandon")
            if state.segment is not None:
                self._close(state, "shutdown", on_failure="abandon")
        self.announcer.flush(self.settings.announce_timeout_seconds)
        self._commit_announced(list(self.owned))
        self.progress.publish(self.owned, final=True)

    # ------------------------------------------------------------------ rebalance

    def on_assign(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]:
        seeks: dict[TopicPartition, int] = {}
        for tp in partitions:
            state = PartitionState(tp)
            self.owned[tp] = state
            if self._acquire(state):
                state.resumed()  # the bus starts it at the index's next_offset
                seeks[tp] = state.next_offset
            else:
                # Retried from the loop (the partition can only be paused once assigned); its
                # records are ignored until then.
                self.retries.later(state.backoff)
        metrics.OWNED_PARTITIONS.set(len(self.owned))
        return seeks

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
        revoked = [tp for tp in partitions if tp in self.owned]
        for tp in revoked:
            state = self.owned[tp]
            if state.pending is not None:
                self._commit(state, state.pending, on_failure="abandon")
            if state.segment is not None:
                self._close(state, "revoke", on_failure="abandon")
        # Offsets can be committed only while the partitions are still ours: wait for the
        # announcements now (bounded), or leave them to the next owner.
        if any(tp in self.announcer.partitions() for tp in revoked):
            self.announcer.flush(self.settings.announce_timeout_seconds)
            self.announcer.poll()
        self._commit_announced(revoked)
        # Its figures end here (rates 0, nothing open) rather than linger beside the next owner's.
        self.progress.publish({tp: self.owned[tp] for tp in revoked}, final=True)
        for tp in revoked:
            self.announcer.drop(tp)
            self.owned.pop(tp, None)
            self.progress.forget(tp)
        metrics.OWNED_PARTITIONS.set(len(self.owned))

    def on_lost(self, partitions: Sequence[TopicPartition]) -> None:
        # Someone else may own these already: commit nothing, publish nothing.
        for tp in partitions:
            state = self.owned.pop(tp, None)
            self.announcer.drop(tp)
            self.progress.forget(tp)
            if state is not None and state.segment is not None:
                self._discard_segment(state, "lost")
        metrics.OWNED_PARTITIONS.set(len(self.owned))

    def _acquire(self, state: PartitionState) -> bool:
        tp = state.tp
        try:
            lease = self.index.acquire_partition(tp.topic, tp.partition, self.settings.owner)
        except IndexAccessError as e:
            metrics.RETRIES.labels("acquire").inc()
            log.warning("cannot take %s yet: %s", tp, e)
            return False
        state.leased(lease.epoch, lease.next_offset)
        log.info("owning %s at offset %d, epoch %d", tp, lease.next_offset, lease.epoch)
        return True

    # ------------------------------------------------------------------ failures and retries

    def _defer(
        self,
        state: PartitionState,
        what: str,
        error: BaseException,
        pending: ClosedSegment | None = None,
    ) -> None:
        """A transient failure: rewind the partition to its first unprocessed offset and pause
        it for a backoff, or stop it for good once failures outlast `commit_attempts`.
        `pending`: a completed segment whose commit failed, to be retried first."""
        tp = state.tp
        metrics.RETRIES.labels(what).inc()
        self._rewound.add(tp)
        delay = self.retries.failed(state.backoff)
        if delay is None:
            self._stop_partition(state, f"{what} failed {state.backoff.failures} times: {error}")
            return
        state.deferred(pending)
        log.warning(
            "%s of %s failed (%s); retrying in %.1fs from offset %d",
            what,
            tp,
            error,
            delay,
            state.resume_offset,
        )
        self._pause(state, seek_to=state.resume_offset)

    def _pause(self, state: PartitionState, seek_to: int | None) -> None:
        try:
            if seek_to is not None:
                self.consumer.seek(state.tp, seek_to)
            if not state.paused:
                self.consumer.pause([state.tp])
                state.paused = True
        except BusError as e:
            # Not assigned any more (a rebalance is under way): the next owner seeks itself.
            log.warning("cannot pause %s: %s", state.tp, e)

    def _resume(self, state: PartitionState) -> None:
        if state.paused:
            try:
                self.consumer.resume([state.tp])
            except BusError as e:
                log.warning("cannot resume %s: %s", state.tp, e)
                return  # tried again at the next step
            state.paused = False
        state.resumed()

    def _stop_partition(self, state: PartitionState, reason: str) -> None:
        if state.segment is not None:
            self._discard_segment(state, "stopped")
        state.stop(reason)  # its pending object, if complete, is garbage for gc
        self._pause(state, seek_to=None)
        metrics.PARTITIONS_STOPPED.set(len(self.stopped_partitions()))
        log.error(
            "partition %s STOPPED at offset %d: %s. Nothing after that offset is skipped; "
            "fix the cause and restart the appender.",
            state.tp,
            state.next_offset,
            reason,
        )

    def _retry_due(self) -> None:
        """Retry what each waiting partition whose backoff is over waits for (its lease, its
        pending commit), then resume it."""
        for state in list(self.owned.values()):
            if state.phase not in (Phase.ACQUIRING, Phase.WAITING):
                continue
            if not self.retries.due(state.backoff):
                continue
            if state.phase is Phase.ACQUIRING:
                if not self._acquire(state):
                    self._defer(state, "acquire", IndexAccessError("index unavailable"))
                    continue
                self._pause(state, seek_to=state.next_offset)
            if state.pending is not None:
                if self._commit(state, state.pending) is None:
                    continue
                self._pause(state, seek_to=state.next_offset)  # past what the commit covered
            self._resume(state)

    def _discard_segment(self, state: PartitionState, reason: str) -> None:
        seg = state.segment
        state.segment = None
        if seg is None:
            return
        metrics.SEGMENTS_ABANDONED.labels(reason).inc()
        try:
            seg.abort()
        except StoreError as e:  # an upload left behind is garbage for gc
            log.warning("could not abort the upload of %s: %s", seg.name, e)

    # ------------------------------------------------------------------ appending

    def _append_batch(self, messages: list[Message]) -> None:
        self._rewound = set()
        decoded: list[tuple[Message, AppendRecord | None]] = []
        for m in messages:
            state = self.owned.get(m.tp)
            if state is None or not state.accepting or m.offset < state.resume_offset:
                continue  # not ours (yet, any more), or already held before a seek took effect
            try:
                decoded.append((m, decode_append(m.value)))
            except MalformedRecord as e:
                # No sample id to report it under: count it, log it, move past it.
                metrics.RECORDS.labels("malformed").inc()
                log.error("skipping malformed APPEND record %s@%d: %s", m.tp, m.offset, e)
                decoded.append((m, None))
        indexed = self._indexed_items(decoded)
        if indexed is None:
            return
        for m, record in decoded:
            state = self.owned.get(m.tp)
            if m.tp in self._rewound or state is None or not state.accepting:
                continue
            if m.offset > state.resume_offset and not self._past_gap(state, m):
                continue
            if record is None:
                self._advance_without_record(state, m)
            else:
                self._append(state, m, record, indexed)

    def _indexed_items(self, decoded: list[tuple[Message, AppendRecord | None]]) -> set[str] | None:
        """Which of the batch's items the index already stores (dedup), or None after a
        failure, with every partition of the batch rewound."""
        ids: set[str] = set()
        for m, r in decoded:
            if r is None or r.meta.status is not SampleStatus.SUCCESS or not r.meta.item_id:
                continue
            state = self.owned[m.tp]
            if state.segment is None or not state.segment.holds_item(r.meta.item_id):
                ids.add(r.meta.item_id)
        if not ids:
            return set()
        try:
            started = time.thread_time()
            try:
                return self.index.existing_items(ids)
            finally:
                self._index_cpu += time.thread_time() - started
        except IndexAccessError as e:
            for tp in {m.tp for m, _ in decoded}:
                self._defer(self.owned[tp], "dedup lookup", e)
            return None

    def _segment_for(self, state: PartitionState, m: Message) -> OpenSegment | None:
        if state.segment is None:
            assert state.epoch is not None
            try:
                state.segment = OpenSegment(
                    self.store, m.tp, state.epoch, m.offset, resumed_from=state.next_offset
                )
            except StoreError as e:
                self._defer(state, "store write", e)
                return None
        return state.segment

    def _past_gap(self, state: PartitionState, m: Message) -> bool:
        """`m` came after a gap: offsets from `state.resume_offset` to just below it were not
        delivered. Our producers leave no gaps (idempotent, not transactional), so the bus
        either deleted those records (retention shorter than the appender's delay: a
        Kafka consumer then resets to the log start) or skipped them. Whether `m` may be
        appended now: not while the bus still holds some of them (the partition is read
        again from the first one it holds, once); yes once they are gone, counted and
        logged: the index cannot hold what the bus no longer has."""
        expected = state.resume_offset
        try:
            low = self.consumer.low_watermark(m.tp)
        except BusError as e:
            self._defer(state, "low watermark", e)
            return False
        first_held = max(low, expected)
        if first_held < m.offset and state.reread_from != first_held:
            state.reread_from = first_held
            metrics.GAPS_READ_AGAIN.inc()
            log.warning(
                "%s: offsets %d..%d were not delivered though the bus holds them: reading "
                "again from %d",
                m.tp,
                first_held,
                m.offset - 1,
                first_held,
            )
            self._rewound.add(m.tp)
            try:
                self.consumer.seek(m.tp, first_held)
            except BusError as e:  # not ours any more: the next owner starts from the index
                log.warning("cannot seek %s: %s", m.tp, e)
            return False
        metrics.OFFSETS_SKIPPED.inc(m.offset - expected)
        if first_held > expected:
            log.error(
                "%s: offsets %d..%d are gone from the bus (retention shorter than the "
                "appender's delay?): their rows were never appended",
                m.tp,
                expected,
                first_held - 1,
            )
        if m.offset > first_held:
            log.error(
                "%s: the bus holds offsets %d..%d but does not deliver them, even when read "
                "again: passed over",
                m.tp,
                first_held,
                m.offset - 1,
            )
        return True

    def _advance_without_record(self, state: PartitionState, m: Message) -> None:
        segment = self._segment_for(state, m)
        if segment is None:
            return
        segment.last_offset = m.offset
        segment.records += 1
        self._close_if_full(state)

    def _append(
        self, state: PartitionState, m: Message, record: AppendRecord, indexed: set[str]
    ) -> None:
        segment = self._segment_for(state, m)
        if segment is None:
            return
        meta = record.meta
        payload = record.payload
        stored = False
        if meta.status is SampleStatus.SUCCESS and meta.item_id:
            stored = meta.item_id in indexed or segment.holds_item(meta.item_id)
            if not stored and payload is None:
                try:
                    payload = self._payload_of(record)
                except StoreError as e:
                    self._discard_segment(state, "store read")
                    self._defer(state, "store read", e)
                    return
                if payload is None:
                    record = AppendRecord.failure(record.meta, _missing_payload_reason(record))
        outcome = "failure"
        if record.meta.status is SampleStatus.SUCCESS:
            outcome = "duplicate" if stored else "stored"
        try:
            segment.add(m.offset, record, payload, stored)
        except StoreError as e:
            self._discard_segment(state, "store write")
            self._defer(state, "store write", e)
            return
        metrics.RECORDS_BY_OUTCOME[outcome].inc()
        self.progress.appended(state, record.meta, segment.segment_id)
        closed = self._close_if_full(state)
        if closed is not None:
            # Committed now: later records of this batch must see them as stored.
            indexed.update(i.item_id for i in closed.commit.items)

    def _payload_of(self, record: AppendRecord) -> bytes | None:
        """The claim-check payload of a success that travelled without its bytes; None if it
        is gone (the record then becomes a failed sample, with the reason)."""
        name = record.meta.staged
        if not name:
            return None
        try:
            return self.store.get(name)
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------------ closing

    def _close_if_full(self, state: PartitionState) -> ClosedSegment | None:
        seg = state.segment
        if seg is None:
            return None
        if seg.records >= self.settings.number_sample_per_shard:
            return self._close(state, "count")
        if seg.bytes_written >= self.settings.segment_max_bytes:
            return self._close(state, "size")
        return None

    def _close_due(self, idle: bool) -> None:
        now = time.monotonic()
        for state in list(self.owned.values()):
            seg = state.segment
            if seg is None:
                continue
            if idle and self._draining.is_set():
                self._close(state, "drain")
            elif now - seg.last_append >= self.settings.segment_idle_seconds:
                self._close(state, "idle")
            elif now - seg.opened >= self.settings.segment_max_age_seconds:
                self._close(state, "age")

    def _close(
        self, state: PartitionState, reason: str, on_failure: OnFailure = "defer"
    ) -> ClosedSegment | None:
        """Complete and commit the open segment. On failure, `defer` rewinds and retries;
        `abandon` (revoke, shutdown) leaves the records to whoever reads the partition next."""
        seg = state.segment
        assert seg is not None
        state.segment = None
        started = time.monotonic()
        try:
            closed = seg.finish()
        except StoreError as e:
            state.segment = seg
            self._discard_segment(state, "store complete")
            if on_failure == "abandon":
                log.warning("abandoning %s (%s): %s", seg.name, reason, e)
                return None
            if isinstance(e, ObjectExistsError):
                # An earlier attempt under this epoch landed unbeknownst to us: the name is
                # taken, so take a new epoch (a new name) and write the records again.
                state.needs_new_lease()
            self._defer(state, "store complete", e)
            return None
        crashpoints.reached("after_complete")
        committed = self._commit(state, closed, on_failure=on_failure)
        if committed is not None:
            metrics.COMMIT_SECONDS.observe(time.monotonic() - started)
            log.info(
                "closed %s (%s): %d records, %d items, %d bytes",
                seg.segment_id,
                reason,
                seg.records,
                closed.commit.segment.item_count,
                closed.commit.segment.bytes,
            )
        return committed

    def _commit(
        self, state: PartitionState, closed: ClosedSegment, on_failure: OnFailure = "defer"
    ) -> ClosedSegment | None:
        """The segment's index transaction, then its announcement is queued."""
        commit = closed.commit
        tp = state.tp
        try:
            started = time.thread_time()
            try:
                self.index.commit_segment(commit)
            finally:
                self._index_cpu += time.thread_time() - started
        except FencedError as e:
            # A newer owner holds the partition: our object is garbage nobody will read.
            metrics.FENCED.inc()
            log.error("segment %s fenced, letting %s go: %s", commit.segment.segment_id, tp, e)
            self._let_go(state)
            return None
        except PositionError as e:
            # The index is not where we resumed: it lost commits it had acknowledged. It is the
            # source of truth, so take the partition again and re-read from its next_offset;
            # this object is garbage, and so are announcements not yet sent.
            metrics.POSITION_REFUSED.inc()
            metrics.SEGMENTS_ABANDONED.labels("position").inc()
            log.error("segment %s refused, re-reading %s: %s", commit.segment.segment_id, tp, e)
            state.pending = None
            if on_failure == "abandon":
                return None
            self.announcer.drop(tp)
            state.needs_new_lease()
            self._defer(state, "index position", e)
            return None
        except IndexAccessError as e:
            if on_failure == "abandon":
                state.pending = None
                log.warning("abandoning %s: %s", commit.segment.segment_id, e)
                return None
            self._defer(state, "index commit", e, pending=closed)
            return None
        crashpoints.reached("after_index_commit")
        if self.hand_off_manifests:
            handoff.offer(commit.segment, closed.manifest)
        state.committed(commit.next_offset)
        metrics.SEGMENTS_CLOSED.inc()
        metrics.SEGMENT_BYTES.observe(commit.segment.bytes)
        self.announcer.add(
            tp,
            Announcement(closed_event(commit.segment), commit.next_offset, list(closed.staged)),
        )
        return closed

    def _let_go(self, state: PartitionState) -> None:
        if state.segment is not None:
            self._discard_segment(state, "fenced")
        state.pending = None
        self.announcer.drop(state.tp)
        self.owned.pop(state.tp, None)
        self.progress.forget(state.tp)
        with contextlib.suppress(BusError):
            self.consumer.pause([state.tp])
        metrics.OWNED_PARTITIONS.set(len(self.owned))

    # ------------------------------------------------------------------ announcing

    def _commit_announced(self, partitions: Iterable[TopicPartition]) -> None:
        """Commit each partition's Kafka offset past its announced segments, then delete their
        claim checks: the offset is the mark below which every segment was announced."""
        for tp in partitions:
            done = self.announcer.confirmed(tp)
            if not done:
                continue
            crashpoints.reached("after_announce")
            try:
                self.consumer.commit({tp: done[-1].next_offset})
            except BusError as e:
                # Only a hint: the next owner re-announces from the older mark.
                metrics.RETRIES.labels("kafka_commit").inc()
                log.warning("Kafka commit of %s failed: %s", tp, e)
            crashpoints.reached("after_kafka_commit")
            for a in done:
                self._delete_staged(a.staged)

    def _delete_staged(self, names: Iterable[str]) -> None:
        for name in names:
            try:
                self.store.delete(name)
            except StoreError as e:  # garbage at worst; gc removes it
                log.warning("could not delete claim check %s: %s", name, e)


def _missing_payload_reason(record: AppendRecord) -> str:
    if record.meta.staged:
        return f"appender: claim-check payload {record.meta.staged} is gone"
    return "appender: success record without its image bytes"
