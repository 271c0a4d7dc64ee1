"""Decode, resize and encode off the event loop, on every core.

A process pool, because Python-level work around Pillow holds the GIL. Workers start with the
`forkserver` method: forking a process that already runs librdkafka and aiohttp threads is
unsafe, and forkserver starts each worker from a clean single-threaded server.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from i2d_fetcher import metrics
from i2d_fetcher.blur import Box
from i2d_fetcher.imaging import ProcessedImage, process_image
from i2d_fetcher.options import FetchOptions


def _timed_process(
    data: bytes, opts: FetchOptions, boxes: Sequence[Box]
) -> tuple[ProcessedImage | None, BaseException | None, float]:
    """`process_image` in the worker, with the time it took there (queueing excluded)."""
    started = time.perf_counter()
    try:
        return process_image(data, opts, boxes), None, time.perf_counter() - started
    except Exception as e:  # returned, so the time is observed for rejected images too
        return None, e, time.perf_counter() - started


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
        image, error, seconds = await loop.run_in_executor(
            self._executor, _timed_process, data, opts, boxes
        )
        metrics.RESIZE_SECONDS.observe(seconds)
        if error is not None:
            raise error
        assert image is not None
        return image

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
