"""What the appender knows about one APPEND partition it was assigned, and the phases it goes
through (`Phase`). Every change of phase is one of the methods of `PartitionState`, checked
against `TRANSITIONS`:

    leased           ACQUIRING -> WAITING           the index gave us the partition
    resumed          WAITING -> APPENDING           just assigned, or its retry went through
    deferred         APPENDING, WAITING -> WAITING  a store or index call failed: rewound,
                     ACQUIRING -> ACQUIRING         paused, retried after a backoff
    needs_new_lease  APPENDING, WAITING -> ACQUIRING  its segment's name is taken, or the
                     index refused its commit's position (it lost acknowledged commits)
    stop             any but STOPPED -> STOPPED     failures outlasted `commit_attempts`

On assignment the lease is taken and the partition resumed at once (the bus starts it at the
index's `next_offset`); after a failure it waits for its retry (`retry.RetryPolicy`). A
partition leaves the appender (revoked, lost, fenced) from any phase. The index's
`next_offset` is where everything uncommitted starts, so any failure can be undone by
discarding the open segment and reading again from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from i2d_appender.open_segment import ClosedSegment, OpenSegment
from i2d_appender.retry import Backoff
from i2d_segments.bus import TopicPartition

# What a failing close or commit does: `defer` rewinds the partition and retries after a
# backoff; `abandon` (revoke, shutdown) leaves the records to whoever reads it next.
OnFailure = Literal["defer", "abandon"]


class Phase(Enum):
    ACQUIRING = "acquiring"
    """No lease from the index (epoch is None): its records are ignored until one is taken."""
    WAITING = "waiting"
    """Leased but not consumed: paused after a transient failure (or just leased) until its
    retry is due, then resumed from the first unprocessed offset. `pending` holds a completed
    segment whose index commit is retried first, if that is what failed."""
    APPENDING = "appending"
    """Leased and consumed: its records go to its open segment."""
    STOPPED = "stopped"
    """A failure outlasted `commit_attempts`: paused for good, readiness fails until the
    appender is restarted."""


# Which phases each phase may move to. A partition leaves `owned` (revoked, lost, fenced) from
# any phase; that is not a phase of its own.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.ACQUIRING: frozenset({Phase.ACQUIRING, Phase.WAITING, Phase.STOPPED}),
    Phase.WAITING: frozenset({Phase.WAITING, Phase.APPENDING, Phase.ACQUIRING, Phase.STOPPED}),
    Phase.APPENDING: frozenset({Phase.WAITING, Phase.ACQUIRING, Phase.STOPPED}),
    Phase.STOPPED: frozenset(),
}


@dataclass
class PartitionState:
    tp: TopicPartition
    epoch: int | None = None
    next_offset: int = 0
    segment: OpenSegment | None = None
    pending: ClosedSegment | None = None
    phase: Phase = Phase.ACQUIRING
    backoff: Backoff = field(default_factory=Backoff)
    # The consumer is paused for this partition: the bus's side of a failure (WAITING, or
    # ACQUIRING after a failed retry) and of STOPPED. A pause that fails during a rebalance
    # leaves it False; APPENDING never has it.
    paused: bool = False
    stop_reason: str | None = None
    # Committed segments ending below this offset were committed before we took the partition:
    # those past the announced mark are announced again (their owner may have died first).
    reannounce_below: int | None = None
    # Where the partition was last read again because the bus skipped offsets it still held
    # (service._past_gap): a gap found again there is passed over, not read again forever.
    reread_from: int | None = None

    @property
    def accepting(self) -> bool:
        """Whether records of this partition may be appended now."""
        return self.phase is Phase.APPENDING

    @property
    def resume_offset(self) -> int:
        """The first offset not held by the open segment or the index."""
        return self.segment.last_offset + 1 if self.segment is not None else self.next_offset

    # ------------------------------------------------------------------ transitions

    def _move(self, to: Phase) -> None:
        if to not in TRANSITIONS[self.phase]:
            raise AssertionError(f"{self.tp}: no transition from {self.phase.name} to {to.name}")
        self.phase = to

    def leased(self, epoch: int, next_offset: int) -> None:
        """ACQUIRING -> WAITING: the index gave us the partition from `next_offset`; it is
        consumed once resumed from there."""
        self._move(Phase.WAITING)
        self.epoch = epoch
        self.next_offset = next_offset
        self.reannounce_below = next_offset
        self.backoff.reset()

    def resumed(self) -> None:
        """WAITING -> APPENDING: just assigned (the bus starts it at `next_offset`), or its
        retry went through and the consumer reads it again."""
        assert self.pending is None, "a pending commit is retried before resuming"
        self._move(Phase.APPENDING)

    def deferred(self, pending: ClosedSegment | None = None) -> None:
        """A transient failure: WAITING for a retry (ACQUIRING stays so: the lease is what is
        retried). `pending`: a completed segment whose index commit failed, retried first."""
        self._move(Phase.ACQUIRING if self.phase is Phase.ACQUIRING else Phase.WAITING)
        if pending is not None:
            self.pending = pending

    def needs_new_lease(self) -> None:
        """-> ACQUIRING: an earlier attempt under this epoch published the segment's name
        unbeknownst to us, or the index is not at the position we resumed from; a new lease
        (a new epoch, so new names, and the index's next_offset) is needed to write the
        records again."""
        self._move(Phase.ACQUIRING)
        self.epoch = None

    def committed(self, next_offset: int) -> None:
        """Its segment is in the index up to `next_offset` (the phase stays: a waiting
        partition is resumed by its retry)."""
        self.pending = None
        self.next_offset = next_offset
        self.backoff.reset()

    def stop(self, reason: str) -> None:
        """-> STOPPED for good (the caller discarded the open segment). A completed object
        whose commit was pending is garbage for gc."""
        self._move(Phase.STOPPED)
        self.pending = None
        self.stop_reason = reason
