"""The chaos suite's tally, printed at the end of the pytest session (see conftest.py)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.checker import INVARIANTS

SEED = int(os.environ.get("CHAOS_SEED") or 20240601)


@dataclass
class Summary:
    rounds: Counter[str] = field(default_factory=Counter)
    crashes: Counter[str] = field(default_factory=Counter)
    fenced: int = 0
    garbage_seen: int = 0
    abandoned_uploads_seen: int = 0
    records: int = 0
    checks: int = 0
    held: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    next_offsets: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    slowest: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        def counts(c: Counter[str]) -> str:
            return ", ".join(f"{k} {n}" for k, n in sorted(c.items())) or "none"

        return [
            f"chaos: {sum(self.rounds.values())} rounds in {self.seconds:.0f}s (seed {SEED}): "
            + counts(self.rounds),
            f"chaos: {self.records} records produced and acknowledged; final next_offset "
            + ", ".join(f"p{p}={o}" for p, o in sorted(self.next_offsets.items())),
            "chaos: appenders SIGKILLed at " + counts(self.crashes),
            f"chaos: {self.fenced} zombie commits fenced; gc listed up to {self.garbage_seen} "
            f"garbage objects and {self.abandoned_uploads_seen} abandoned uploads",
            "chaos: S3 faults injected: " + counts(self.faults),
            "chaos: slowest round of each kind: "
            + ", ".join(f"{k} {t:.0f}s" for k, t in sorted(self.slowest.items())),
            f"chaos: {self.checks} checks, every invariant held at each: "
            + ", ".join(f"{k} {self.held[k]}" for k in INVARIANTS),
        ]

    def report(self) -> list[str]:
        if not self.rounds:
            return []
        lines = self.lines()
        target = os.environ.get("CHAOS_SUMMARY")
        if target:
            Path(target).write_text("\n".join(lines) + "\n")
        return lines


SUMMARY = Summary()
