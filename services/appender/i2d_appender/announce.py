"""SEGMENT_CLOSED announcements, confirmed by delivery reports before the Kafka offset moves.

The Kafka offset an appender commits for an APPEND partition doubles as the mark "every segment
below this offset was announced": it is committed only once every announcement up to it has
been acknowledged by the broker. So an announcement lost to a crash or a broker outage is never
lost for good: whoever next takes the partition re-announces the committed segments at or past
that mark (at-least-once; consumers of SEGMENT_CLOSED are idempotent per segment_id).

Producing never blocks the partition loop: events are queued, delivery reports are served by
`poll`, and `confirmed` tells the loop how far it may commit. `reannounce_due` queues the
segments of a newly leased partition that its previous owner may not have announced.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from i2d_appender import metrics
from i2d_appender.partition import PartitionState
from i2d_segments.bus import Bus, BusError, Message, Producer, TopicPartition
from i2d_segments.index import Index, IndexAccessError, SegmentRow
from i2d_segments.records import SegmentClosed

log = logging.getLogger(__name__)


def closed_event(seg: SegmentRow) -> SegmentClosed:
    return SegmentClosed(
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


@dataclass
class Announcement:
    event: SegmentClosed
    next_offset: int  # the APPEND offset that may be committed once this is delivered
    staged: list[str] = field(default_factory=list)  # claim checks to delete afterwards
    state: str = "queued"  # -> "sent" -> "delivered"; "failed" goes back to "queued"


class Announcer:
    """Announces the segments committed from the partitions of consumer group `group_id` on
    `topic`; `bus` tells the group's committed offsets (the announced marks), `index` the
    segments to announce again."""

    def __init__(
        self, producer: Producer, topic: str, *, bus: Bus, group_id: str, index: Index
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._bus = bus
        self._group_id = group_id
        self._index = index
        self._pending: dict[TopicPartition, deque[Announcement]] = {}

    def add(self, tp: TopicPartition, announcement: Announcement) -> None:
        self._pending.setdefault(tp, deque()).append(announcement)
        self._send(announcement)

    def add_first(self, tp: TopicPartition, announcements: list[Announcement]) -> None:
        """Queue `announcements` (in order) ahead of what `tp` has queued already."""
        queue = self._pending.setdefault(tp, deque())
        queue.extendleft(reversed(announcements))
        for a in announcements:
            self._send(a)

    def _send(self, a: Announcement) -> None:
        def report(err: BusError | None, _msg: Message | None) -> None:
            if err is None:
                a.state = "delivered"
            else:
                log.warning("SEGMENT_CLOSED for %s not delivered: %s", a.event.segment_id, err)
                a.state = "failed"

        try:
            self._producer.produce(
                self._topic, a.event.encode(), key=a.event.segment_id.encode(), on_delivery=report
            )
        except BusError as e:
            log.warning("cannot produce SEGMENT_CLOSED for %s: %s", a.event.segment_id, e)
            a.state = "failed"
            return
        a.state = "sent"

    def poll(self) -> None:
        """Serve delivery reports and send again what failed (in order, per partition)."""
        self._producer.poll(0)
        self._resend_failed()

    def flush(self, timeout: float) -> None:
        """Wait up to `timeout` for every queued announcement (shutdown, revoke)."""
        self._resend_failed()
        try:
            self._producer.flush(timeout)
        except BusError as e:
            log.warning("SEGMENT_CLOSED announcements still unconfirmed: %s", e)

    def _resend_failed(self) -> None:
        for queue in self._pending.values():
            for a in queue:
                if a.state == "failed":
                    metrics.RETRIES.labels("announce").inc()
                    self._send(a)
        metrics.ANNOUNCEMENTS_PENDING.set(sum(len(q) for q in self._pending.values()))

    def confirmed(self, tp: TopicPartition) -> list[Announcement]:
        """Pop the announcements of `tp` delivered in order: the last one's `next_offset` is
        how far the partition's Kafka offset may now be committed."""
        queue = self._pending.get(tp)
        done: list[Announcement] = []
        while queue and queue[0].state == "delivered":
            done.append(queue.popleft())
        return done

    def partitions(self) -> list[TopicPartition]:
        return [tp for tp, queue in self._pending.items() if queue]

    def drop(self, tp: TopicPartition) -> None:
        """Forget `tp`'s announcements (ownership lost): the next owner re-announces them."""
        self._pending.pop(tp, None)

    # ------------------------------------------------------------------ re-announcing

    def reannounce_due(self, states: Iterable[PartitionState]) -> None:
        """For each partition leased since the last call (`reannounce_below` set) and appending,
        queue again the committed segments from its announced mark up to where the lease
        started, ahead of anything this owner committed since."""
        due = [s for s in states if s.reannounce_below is not None and s.accepting]
        if not due:
            return
        marks = self._announced_marks({s.tp.topic for s in due})
        for state in due:
            tp, below = state.tp, state.reannounce_below
            assert below is not None
            mark = None if marks is None else marks.get(tp)
            if mark is None:
                # No mark (never committed, expired, or Kafka cannot say): only the newest
                # segment can be unannounced for sure; the materializer's reconciliation at
                # start covers anything older.
                mark = below - 1
            try:
                segments = self._index.partition_segments(tp.topic, tp.partition, mark)
            except IndexAccessError as e:
                log.warning("cannot list the segments of %s to re-announce: %s", tp, e)
                continue
            state.reannounce_below = None
            again = [
                Announcement(closed_event(seg), seg.last_offset + 1)
                for seg in segments
                if seg.last_offset < below
            ]
            metrics.REANNOUNCED.inc(len(again))
            # Ahead of anything this owner committed since: the offset mark only moves forward.
            self.add_first(tp, again)

    def _announced_marks(self, topics: set[str]) -> dict[TopicPartition, int | None] | None:
        """The group's committed offset per partition, or None if Kafka cannot say."""
        marks: dict[TopicPartition, int | None] = {}
        try:
            for topic in topics:
                for lag in self._bus.lag(self._group_id, topic):
                    marks[TopicPartition(topic, lag.partition)] = lag.committed
        except BusError as e:
            log.warning("cannot read the committed offsets to re-announce from: %s", e)
            return None
        return marks
