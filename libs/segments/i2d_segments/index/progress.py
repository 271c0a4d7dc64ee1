"""The progress line of a migration step that rewrites rows: done of the total and the rate,
every few seconds, so an operator migrating a large index sees it move."""

from __future__ import annotations

import logging
import time


class MigrationProgress:
    def __init__(
        self, log: logging.Logger, version: int, what: str, total: int, every: float
    ) -> None:
        self._log = log
        self.version = version
        self.what = what
        self.total = total
        self.every = every
        self.done = 0
        self.started = self.last = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.log()

    def log(self) -> None:
        seconds = max(time.monotonic() - self.started, 1e-9)
        self._log.info(
            "index migration %d: %s: %d of %d (%.0f rows/s, %.0f s)",
            self.version,
            self.what,
            self.done,
            self.total,
            self.done / seconds,
            seconds,
        )
