"""Where rows are fetched: `open_fetcher` gives worker processes (supervisor.py on this side,
worker.py in each worker, wire.py between them, started from forkserver.py), or this process
when processes_count is 0 (inline.py). Both run `row.fetch_value`."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from i2d_fetcher.pool.config import RowFetcher, WorkerConfig
    from i2d_fetcher.pool.supervisor import FetchWorkers

__all__ = ["FetchWorkers", "RowFetcher", "WorkerConfig", "open_fetcher"]

# Imported on first use (PEP 562): `i2d_fetcher.pool.forkserver`, which a command imports
# first thing to start the fork server, then comes without this package's pydantic models
# (~0.2 s of CPU): the fork server starts that much sooner and imports the workers' code
# while the command does its own start-up.
_LAZY = {
    "RowFetcher": "i2d_fetcher.pool.config",
    "WorkerConfig": "i2d_fetcher.pool.config",
    "FetchWorkers": "i2d_fetcher.pool.supervisor",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


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
    from i2d_fetcher.pool.supervisor import FetchWorkers

    workers = FetchWorkers(config, processes)
    try:
        await workers.start()
        yield workers
    finally:
        await workers.close()
