"""Live progress of the partitions this appender owns, published to the index about every
second (`Index.publish_progress`).

A row sits in its partition's open segment until the segment closes (10,000 rows by default),
and the index learns of it only at that commit: without these figures a run's progress reads 0
for that long. Each owned partition's row says what its open segment holds (rows, successes,
bytes), where the partition has read to, the rates over the last `window` seconds and the
latest rows. The status service adds them to the committed figures; one row per partition, so
reading them costs the same at any dataset size.

Best effort: a failed publish is logged and tried again at the next interval; it never stops
the appender. Rates count the records this owner appended under its current lease.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from i2d_appender.partition import PartitionState, Phase
from i2d_segments.bus import TopicPartition
from i2d_segments.index import Index, IndexAccessError, PartitionProgress
from i2d_segments.records import AppendMeta, SampleStatus

log = logging.getLogger(__name__)

# Characters of a url, caption or error kept in a published recent row: enough to recognise it.
RECENT_TEXT = 300
# Failure reasons of an open segment published, the most frequent first.
TOP_ERRORS = 20
# A failed publish is logged at most this often (it is retried every interval).
LOG_EVERY_SECONDS = 60.0


def _short(text: str | None) -> str | None:
    if text is None or len(text) <= RECENT_TEXT:
        return text
    return text[: RECENT_TEXT - 1] + "\N{HORIZONTAL ELLIPSIS}"


@dataclass
class _Tracker:
    """One partition's counts under the current lease."""

    epoch: int | None
    started: float  # monotonic
    samples: int = 0
    successes: int = 0
    # (monotonic, samples, successes) at each publish: the rates' window.
    seen: deque[tuple[float, int, int]] = field(default_factory=deque)
    # (meta, segment id, wall time) of the latest rows, newest last.
    recent: deque[tuple[AppendMeta, str, float]] = field(default_factory=deque)


class ProgressPublisher:
    def __init__(
        self,
        index: Index,
        owner: str,
        *,
        interval: float,
        window: float,
        recent_rows: int,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.index = index
        self.owner = owner
        self.interval = interval
        self.window = window
        self.recent_rows = recent_rows
        self._monotonic = monotonic
        self._wall = wall
        self._trackers: dict[TopicPartition, _Tracker] = {}
        self._last_publish = -float("inf")
        self._last_failure_log = -float("inf")

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def _tracker(self, state: PartitionState) -> _Tracker:
        tracker = self._trackers.get(state.tp)
        if tracker is None or tracker.epoch != state.epoch:  # a new lease counts afresh
            tracker = _Tracker(state.epoch, self._monotonic())
            tracker.seen.append((tracker.started, 0, 0))
            tracker.recent = deque(maxlen=max(1, self.recent_rows))
            self._trackers[state.tp] = tracker
        return tracker

    def appended(self, state: PartitionState, meta: AppendMeta, segment_id: str) -> None:
        """A record's row went into the partition's open segment."""
        if not self.enabled:
            return
        tracker = self._tracker(state)
        tracker.samples += 1
        if meta.status is SampleStatus.SUCCESS:
            tracker.successes += 1
        if self.recent_rows:
            tracker.recent.append((meta, segment_id, self._wall()))

    def forget(self, tp: TopicPartition) -> None:
        self._trackers.pop(tp, None)

    def publish_due(self, owned: Mapping[TopicPartition, PartitionState]) -> None:
        if self.enabled and self._monotonic() - self._last_publish >= self.interval:
            self.publish(owned)

    def publish(
        self, owned: Mapping[TopicPartition, PartitionState], *, final: bool = False
    ) -> None:
        """Publish every leased partition's figures now; `final` (shutdown): the rates are 0,
        this owner appends nothing more."""
        if not self.enabled:
            return
        now = self._monotonic()
        self._last_publish = now
        rows = [
            self._row(state, now, final)
            for state in list(owned.values())
            if state.epoch is not None and state.phase is not Phase.STOPPED
        ]
        try:
            self.index.publish_progress(rows)
        except IndexAccessError as e:
            if now - self._last_failure_log >= LOG_EVERY_SECONDS:
                self._last_failure_log = now
                log.warning("cannot publish the live progress (retried every %.0fs): %s",
                            self.interval, e)  # fmt: skip

    def _rates(self, tracker: _Tracker, now: float, final: bool) -> tuple[float, float]:
        """(rows/s, images/s) since the oldest observation at or before the window's start
        (the lease's start while it is younger): a span of `window` to `window + interval`."""
        seen = tracker.seen
        seen.append((now, tracker.samples, tracker.successes))
        while len(seen) > 1 and seen[1][0] <= now - self.window:
            seen.popleft()
        at, samples, successes = seen[0]
        span = now - at
        if final or span <= 0:
            return 0.0, 0.0
        return (tracker.samples - samples) / span, (tracker.successes - successes) / span

    def _row(self, state: PartitionState, now: float, final: bool) -> PartitionProgress:
        assert state.epoch is not None
        tracker = self._tracker(state)
        samples_ps, images_ps = self._rates(tracker, now, final)
        seg = state.segment
        recent: list[dict[str, Any]] = [
            {
                "sample_id": meta.sample_id,
                "url": _short(meta.url),
                "caption": _short(meta.caption),
                "status": meta.status.value,
                "error": _short(meta.error_message),
                "item_id": meta.item_id,
                "width": meta.width,
                "height": meta.height,
                "segment_id": segment_id,
                "at": at,
            }
            for meta, segment_id, at in reversed(tracker.recent)
        ]
        return PartitionProgress(
            topic=state.tp.topic,
            partition=state.tp.partition,
            epoch=state.epoch,
            owner=self.owner,
            position=state.resume_offset,
            open_segment_id=None if seg is None else seg.segment_id,
            open_first_offset=None if seg is None else seg.first_offset,
            open_samples=0 if seg is None else seg.samples,
            open_successes=0 if seg is None else seg.successes,
            open_errors={} if seg is None else dict(seg.errors.most_common(TOP_ERRORS)),
            open_bytes=0 if seg is None else seg.bytes_written,
            samples_per_second=round(samples_ps, 3),
            images_per_second=round(images_ps, 3),
            window_seconds=self.window,
            recent=recent,
            updated_at=self._wall(),
        )
