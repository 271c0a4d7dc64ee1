"""What the appender knows about one APPEND partition it was assigned.

A partition is in one of these states:

    acquiring   no lease from the index yet (epoch is None): its records are ignored
    appending   leased: records go to its open segment
    waiting     paused after a transient failure until `retry_at`; `pending` holds a completed
                segment whose index commit must be retried first, if that is what failed
    stopped     a failure outlasted `commit_attempts`: paused for good, readiness fails

The index's `next_offset` is where everything uncommitted starts, so any failure can be undone
by discarding the open segment and reading again from there.
"""

from __future__ import annotations

from dataclasses import dataclass

from i2d_appender.open_segment import ClosedSegment, OpenSegment
from i2d_segments.bus import TopicPartition


@dataclass
class PartitionState:
    tp: TopicPartition
    epoch: int | None = None
    next_offset: int = 0
    segment: OpenSegment | None = None
    pending: ClosedSegment | None = None
    failures: int = 0  # consecutive; reset by a successful commit
    retry_at: float = 0.0  # monotonic
    paused: bool = False
    stopped: str | None = None
    # Committed segments ending below this offset were committed before we took the partition:
    # those past the announced mark are announced again (their owner may have died first).
    reannounce_below: int | None = None

    @property
    def accepting(self) -> bool:
        """Whether records of this partition may be appended now."""
        return (
            self.epoch is not None
            and self.pending is None
            and not self.paused
            and self.stopped is None
        )

    @property
    def resume_offset(self) -> int:
        """The first offset not held by the open segment or the index."""
        return self.segment.last_offset + 1 if self.segment is not None else self.next_offset

    def backoff(self, base: float, cap: float) -> float:
        return float(min(base * 2 ** max(self.failures - 1, 0), cap))
