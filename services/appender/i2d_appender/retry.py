"""Retrying a partition after a transient failure: a doubling backoff, then giving up.

A store or index call that fails pauses its partition for `retry_base_seconds`, doubling with
each consecutive failure up to `retry_max_seconds`; a success (a lease taken, a segment
committed) starts the count afresh. The `commit_attempts`-th consecutive failure stops the
partition instead of scheduling another retry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from i2d_appender.settings import AppenderSettings


@dataclass
class Backoff:
    """One partition's consecutive failures and when it may try again."""

    failures: int = 0
    retry_at: float = 0.0  # monotonic

    def reset(self) -> None:
        self.failures = 0


class RetryPolicy:
    def __init__(
        self,
        attempts: int,
        base: float,
        cap: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.attempts = attempts
        self.base = base
        self.cap = cap
        self.clock = clock

    @classmethod
    def of(cls, settings: AppenderSettings) -> RetryPolicy:
        return cls(
            settings.commit_attempts, settings.retry_base_seconds, settings.retry_max_seconds
        )

    def failed(self, backoff: Backoff) -> float | None:
        """Count a failure: the delay before the retry, or None when it is the
        `attempts`-th in a row (give up)."""
        if backoff.failures + 1 >= self.attempts:
            backoff.failures += 1
            return None
        return self.later(backoff)

    def later(self, backoff: Backoff) -> float:
        """Count a failure and schedule the retry, whatever the count (a partition that cannot
        be paused or stopped yet: one being assigned). Returns the delay."""
        backoff.failures += 1
        delay = float(min(self.base * 2 ** max(backoff.failures - 1, 0), self.cap))
        backoff.retry_at = self.clock() + delay
        return delay

    def due(self, backoff: Backoff) -> bool:
        return backoff.retry_at <= self.clock()
