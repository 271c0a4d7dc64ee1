"""Named crash points: a testing aid for the fault-injection suite (`make chaos`).

The appender calls `reached(point)` at each step where dying leaves a distinct state behind:

    segment_write        an item's bytes went to the upload (S3 parts may be in flight or sent)
    after_complete       the object is published, its index commit not yet made
    after_index_commit   the segment is committed, SEGMENT_CLOSED not yet produced
    after_announce       SEGMENT_CLOSED is acknowledged, the Kafka offset not yet committed
    after_kafka_commit   everything done but deleting the claim-check payloads

Unless the environment variable `I2D_CRASH_AT` names one, `reached` is a dictionary miss. With
`I2D_CRASH_AT=<point>:<n>[:<signal>]` the n-th arrival at that point sends the process the
signal (KILL by default; STOP freezes it there, which is how a zombie is made to order). The
process does to itself exactly what `kill -9` from outside would, but at a step chosen by the
test instead of by timing luck, so every point is covered on every run.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

ENV = "I2D_CRASH_AT"
POINTS = (
    "segment_write",
    "after_complete",
    "after_index_commit",
    "after_announce",
    "after_kafka_commit",
)
_SIGNALS = {"KILL": signal.SIGKILL, "STOP": signal.SIGSTOP}


class _Plan:
    def __init__(self, point: str, nth: int, sig: signal.Signals) -> None:
        self.point = point
        self.nth = nth
        self.sig = sig
        self.count = 0


def parse(spec: str) -> _Plan | None:
    """`point:n[:KILL|STOP]` -> plan; an empty spec means no crash. ValueError if malformed."""
    if not spec.strip():
        return None
    parts = spec.strip().split(":")
    if len(parts) not in (2, 3) or parts[0] not in POINTS:
        raise ValueError(f"{ENV}={spec!r}: want <point>:<n>[:KILL|STOP], point in {POINTS}")
    nth = int(parts[1])
    if nth < 1:
        raise ValueError(f"{ENV}={spec!r}: n must be at least 1")
    sig = _SIGNALS.get(parts[2].upper() if len(parts) == 3 else "KILL")
    if sig is None:
        raise ValueError(f"{ENV}={spec!r}: signal must be KILL or STOP")
    return _Plan(parts[0], nth, sig)


_plan = parse(os.environ.get(ENV, ""))


def reached(point: str) -> None:
    plan = _plan
    if plan is None or plan.point != point:
        return
    plan.count += 1
    if plan.count != plan.nth:
        return
    # Said on stderr first, unbuffered, so the test can tell where the process died.
    sys.stderr.write(f"crash point {point} reached ({plan.count}): {plan.sig.name}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), plan.sig)
