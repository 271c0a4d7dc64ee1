"""Helpers of the fetcher tests: unique seeds and a fresh event loop per call."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import aiohttp

from i2d_fetcher.download import make_session
from i2d_fetcher.options import FetchOptions

T = TypeVar("T")

_seeds = itertools.count(10_000)


def fresh_seed() -> int:
    """A seed no other test used: per-path request counters start at zero."""
    return next(_seeds)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def with_session(opts: FetchOptions, body: Callable[[aiohttp.ClientSession], Awaitable[T]]) -> T:
    """Run `body(session)` in a fresh event loop with the fetcher's own session."""

    async def main() -> T:
        async with make_session(opts, 8) as session:
            return await body(session)

    return run(main())
