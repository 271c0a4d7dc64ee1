"""The fetcher's tests run against the project's local image server, in this process."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import aiohttp
import pytest

from i2d_fetcher.download import make_session
from i2d_fetcher.options import FetchOptions
from i2d_imageserver import ImageServer

T = TypeVar("T")

_seeds = itertools.count(10_000)


def fresh_seed() -> int:
    """A seed no other test used: per-path request counters start at zero."""
    return next(_seeds)


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def with_session(opts: FetchOptions, body: Callable[[aiohttp.ClientSession], Awaitable[T]]) -> T:
    """Run `body(session)` in a fresh event loop with the fetcher's own session."""

    async def main() -> T:
        async with make_session(opts, 8) as session:
            return await body(session)

    return run(main())
