"""The fork server the fetch worker processes start from (supervisor.py).

`forkserver`, not `fork`: forking a process that already runs librdkafka and aiohttp threads
is unsafe; the fork server is a clean single-threaded process. It imports the worker code once
(preload), so each worker, and each replacement of a dead one, starts warm. This module stays
light (no aiohttp, Pillow or pydantic) so a command can start the server first thing and let
it import on the other core while the command does its own start-up.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import forkserver
from multiprocessing.context import ForkServerContext

WORKER_MODULE = "i2d_fetcher.pool.worker"


def context() -> ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    # Only applies to a server not yet running; one started earlier preloaded the same.
    ctx.set_forkserver_preload([WORKER_MODULE])
    return ctx


def start_early() -> None:
    """Start the fork server now (it takes ~0.5 s to import the worker code), not when the
    first worker is needed."""
    context()
    forkserver.ensure_running()
