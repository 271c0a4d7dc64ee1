"""The imaging thread: where a row's CPU work runs (hashing, decode, resize, encode) unless
the image is light (a web photo: `pipeline.light`, processed on the loop itself), one per
event loop, in a worker process as in the inline fetcher.

Why a thread, when a worker process exists to do this work: the process's event loop must
stay free for the network. Decoding a heavy image takes seconds; on the loop, every other
row's socket waited that long, their timeouts ran out and the breaker of an innocent host
opened. A light one takes a few ms, less than the hop to this thread and the two threads'
contention for the GIL cost (about 1 ms of CPU an image): it stays on the loop. On its
own thread, Pillow and hashlib release the GIL for the heavy parts, so the loop keeps
reading sockets meanwhile. One thread: the worker processes already use every core, and
one decode at a time per process bounds the pixel memory a process holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from i2d_fetcher.imaging.pipeline import light
from i2d_fetcher.row import process_body

T = TypeVar("T")


class ImagingThread:
    """`await imaging(fn, *args)` runs `fn(*args)` on the thread (row.RunCpu); a light
    image's `process_body` at once, on the caller's loop."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="imaging")

    def __call__(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]:
        loop = asyncio.get_running_loop()
        if fn is process_body and light(args[0], args[1]):  # (data, opts, ...)
            done: asyncio.Future[T] = loop.create_future()
            try:
                done.set_result(fn(*args))
            except Exception as e:
                done.set_exception(e)
            return done
        return loop.run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
