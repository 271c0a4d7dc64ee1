"""Decode, resize and encode off the event loop, on every core.

A process pool, because Python-level work around Pillow holds the GIL. Workers start with the
`forkserver` method: forking a process that already runs librdkafka and aiohttp threads is
unsafe, and forkserver starts each worker from a clean single-threaded server.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from i2d_fetcher.blur import Box
from i2d_fetcher.imaging import ProcessedImage, process_image
from i2d_fetcher.options import FetchOptions


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


class CpuPool:
    """`await pool.run(data, opts)` runs `process_image` in a worker; 0 workers = a thread."""

    def __init__(self, workers: int | None = None) -> None:
        n = default_workers() if workers is None else workers
        self.workers = n
        self._executor: Executor
        if n <= 0:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="imaging")
        else:
            ctx = multiprocessing.get_context("forkserver")
            self._executor = ProcessPoolExecutor(n, mp_context=ctx)

    async def run(
        self, data: bytes, opts: FetchOptions, boxes: Sequence[Box] = ()
    ) -> ProcessedImage:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, process_image, data, opts, boxes)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
