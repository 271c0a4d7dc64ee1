"""Helpers of the fetcher tests: unique seeds, options that allow the local image server, and
a fresh event loop per call with the fetcher's own HTTP client on a name table, never DNS."""

from __future__ import annotations

import asyncio
import itertools
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from i2d_fetcher.http.client import HttpClient, open_client
from i2d_fetcher.http.resolver import Lookup, StaticLookup
from i2d_fetcher.options import FetchOptions
from i2d_imageserver import ImageServer

T = TypeVar("T")

_seeds = itertools.count(10_000)

# The local image server listens on 127.0.0.1: the one non-public address the tests allow.
# Attacks aim at other loopback addresses (127.0.0.2...), refused and still never off the host.
IMAGE_SERVER_NETWORKS = ("127.0.0.1/32",)


def local_options(**fields: Any) -> FetchOptions:
    """Download options that may reach the local image server (and nothing else private)."""
    return FetchOptions(allowed_networks=IMAGE_SERVER_NETWORKS, **fields)


def served(server: ImageServer, seed: int, w: int, h: int) -> bytes:
    """The bytes the image server sends for one image, fetched without the fetcher."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(server.url_for(seed, w, h), timeout=10) as r:
        data: bytes = r.read()
        return data


def fresh_seed() -> int:
    """A seed no other test used: per-path request counters start at zero."""
    return next(_seeds)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def with_session(
    opts: FetchOptions,
    body: Callable[[HttpClient], Awaitable[T]],
    lookup: Lookup | None = None,
) -> T:
    """Run `body(client)` in a fresh event loop with the fetcher's own client. Names resolve
    through `lookup`, by default an empty table: a test never queries real DNS."""

    async def main() -> T:
        async with open_client(opts, 8, lookup or StaticLookup({})) as client:
            return await body(client)

    return run(main())


async def run_here(fn: Callable[..., T], /, *args: Any) -> T:
    """A `row.RunCpu` that runs the CPU step on the caller's loop (tests need no thread)."""
    return fn(*args)
