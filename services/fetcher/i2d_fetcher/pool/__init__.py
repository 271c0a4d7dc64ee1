"""Where rows are fetched: `open_fetcher` gives worker processes (supervisor.py on this side,
worker.py in each worker, wire.py between them, started from forkserver.py), or this process
when processes_count is 0 (inline.py). Both run `row.fetch_value`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from i2d_fetcher.pool.config import RowFetcher, WorkerConfig
from i2d_fetcher.pool.supervisor import FetchWorkers

__all__ = ["FetchWorkers", "RowFetcher", "WorkerConfig", "open_fetcher"]


@contextlib.asynccontextmanager
async def open_fetcher(config: WorkerConfig, processes: int) -> AsyncIterator[RowFetcher]:
    """`processes` worker processes (FetchWorkers), or this process when 0 (InlineFetcher)."""
    if processes <= 0:
        from i2d_fetcher.http.client import open_client
        from i2d_fetcher.pool.inline import InlineFetcher

        async with open_client(config.options, config.concurrency) as client:
            inline = InlineFetcher(client, config)
            try:
                yield inline
            finally:
                inline.close()
        return
    workers = FetchWorkers(config, processes)
    try:
        await workers.start()
        yield workers
    finally:
        await workers.close()
