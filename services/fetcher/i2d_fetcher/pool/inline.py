"""processes_count=0: rows fetched on the caller's loop, their CPU work on the imaging thread.
The same `fetch_value` as a worker process runs (worker.py)."""

from __future__ import annotations

from i2d_fetcher.http.client import HttpClient
from i2d_fetcher.outcome import Outcome
from i2d_fetcher.pool.config import WorkerConfig
from i2d_fetcher.pool.cpu import ImagingThread
from i2d_fetcher.row import fetch_value, report_robots


class InlineFetcher:
    """processes_count=0: rows fetched on the caller's loop, images processed on a thread."""

    def __init__(self, client: HttpClient, config: WorkerConfig) -> None:
        self.client = client
        self.config = config
        self._imaging = ImagingThread()

    async def fetch(self, value: bytes) -> Outcome | None:
        c = self.config
        outcome = await fetch_value(
            self.client, value, c.options, self._imaging, c.url_field, c.caption_field
        )
        if outcome is not None:
            report_robots(self.client, outcome.stats)  # this process observes them: each row
        return outcome

    def close(self) -> None:
        self._imaging.close()
