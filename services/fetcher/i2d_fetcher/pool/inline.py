"""processes_count=0: rows fetched on the caller's loop, images processed on a thread. The
same `fetch_value` as a worker process runs (worker.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from i2d_fetcher.http.client import HttpClient
from i2d_fetcher.imaging.blur import Box
from i2d_fetcher.imaging.pipeline import ProcessedImage, process_image
from i2d_fetcher.options import FetchOptions
from i2d_fetcher.outcome import Outcome
from i2d_fetcher.pool.config import WorkerConfig
from i2d_fetcher.row import fetch_value


class InlineFetcher:
    """processes_count=0: rows fetched on the caller's loop, images processed on a thread."""

    def __init__(self, client: HttpClient, config: WorkerConfig) -> None:
        self.client = client
        self.config = config
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="imaging")

    async def _run_cpu(
        self, data: bytes, opts: FetchOptions, boxes: Sequence[Box] = ()
    ) -> ProcessedImage:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, process_image, data, opts, boxes)

    async def fetch(self, value: bytes) -> Outcome | None:
        c = self.config
        return await fetch_value(
            self.client, value, c.options, self._run_cpu, c.url_col, c.caption_col
        )

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)
