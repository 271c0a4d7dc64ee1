"""The imaging thread: where a row's CPU work runs (hashing, decode, resize, encode), one per
event loop, in a worker process as in the inline fetcher.

Why a thread, when a worker process exists to do this work: the process's event loop must
stay free for the network. Decoding a heavy image takes seconds; on the loop, every other
row's socket waited that long, their timeouts ran out and the breaker of an innocent host
opened. On its own thread, Pillow and hashlib release the GIL for the heavy parts, so the loop
keeps reading sockets meanwhile. One thread: the worker processes already use every core, and
one decode at a time per process bounds the pixel memory a process holds.

A light image (at most 2 Mpx, `pipeline.is_light`: most web images) skips the thread: its few
ms on the loop cost less than the two thread switches of the hand-off. So a process holds at
most one heavy decode here and one light one (under the gate's floor) on its loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class ImagingThread:
    """`await imaging(fn, *args)` runs `fn(*args)` on the thread (row.RunCpu)."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="imaging")

    def __call__(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
