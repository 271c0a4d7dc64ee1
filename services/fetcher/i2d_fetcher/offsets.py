"""Which `urls` offsets may be committed: those below the oldest record still in flight.

Records finish out of order (a slow host does not hold back a fast one), but a partition's
committed offset may only pass a record once its APPEND record is acknowledged: that is the
at-least-once half of the effectively-once guarantee (the appender makes it exactly once).
"""

from __future__ import annotations

import threading

from i2d_segments.bus import TopicPartition


class OffsetTracker:
    """Thread-safe: delivery callbacks and rebalance callbacks may run on other threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}  # one past the highest offset started
        self._committed: dict[TopicPartition, int] = {}

    def start(self, tp: TopicPartition, offset: int) -> None:
        with self._lock:
            self._in_flight.setdefault(tp, set()).add(offset)
            self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def done(self, tp: TopicPartition, offset: int) -> None:
        with self._lock:
            pending = self._in_flight.get(tp)
            if pending is not None:
                pending.discard(offset)

    def in_flight(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._in_flight.values())

    def committable(self) -> dict[TopicPartition, int]:
        """Per partition, the offset to commit now, only where it moved since the last call."""
        out: dict[TopicPartition, int] = {}
        with self._lock:
            for tp, nxt in self._next.items():
                pending = self._in_flight.get(tp)
                position = min(pending) if pending else nxt
                if position > self._committed.get(tp, -1):
                    out[tp] = position
                    self._committed[tp] = position
        return out

    def forget(self, tps: list[TopicPartition]) -> None:
        """Drop partitions we no longer own; their in-flight records are re-read by the new
        owner (duplicates are harmless: samples upsert, items dedup)."""
        with self._lock:
            for tp in tps:
                self._in_flight.pop(tp, None)
                self._next.pop(tp, None)
                self._committed.pop(tp, None)
