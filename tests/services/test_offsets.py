"""The fetcher commits a partition only up to its oldest row still in flight."""

from __future__ import annotations

from i2d_fetcher.offsets import OffsetTracker
from i2d_segments.bus import TopicPartition

TP = TopicPartition("urls", 0)


def test_commit_waits_for_the_oldest_in_flight_row() -> None:
    t = OffsetTracker()
    for o in range(5):
        t.start(TP, o)
    t.done(TP, 1)
    t.done(TP, 2)
    assert t.committable() == {TP: 0}  # rows 1 and 2 are done, but 0 is not
    t.done(TP, 0)
    assert t.committable() == {TP: 3}
    t.done(TP, 4)
    t.done(TP, 3)
    assert t.committable() == {TP: 5}
    assert t.committable() == {}  # nothing moved


def test_forget_drops_revoked_partitions() -> None:
    t = OffsetTracker()
    t.start(TP, 7)
    t.forget([TP])
    assert t.in_flight() == 0 and t.committable() == {}
