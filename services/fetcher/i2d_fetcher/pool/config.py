"""What the pool and its callers agree on: the configuration a worker starts with, how the
per-host limits are split across workers, and the `RowFetcher` interface both kinds of pool
(worker processes, or this process) offer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

from i2d_fetcher.imaging.gate import DecodeGate
from i2d_fetcher.options import FetchOptions
from i2d_fetcher.outcome import Outcome


class RowFetcher(Protocol):
    def fetch(self, value: bytes) -> Awaitable[Outcome | None]:
        """The outcome of one `urls` record; None for a blank line."""
        ...


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, sent once when it starts."""

    options: FetchOptions
    # Rows it works on at once (its connection pool's size); it is given up to twice as many,
    # the others waiting in it to start (`capacity`).
    concurrency: int
    url_field: str = "url"
    caption_field: str | None = "caption"
    log_level: int = logging.WARNING
    # Shared by every worker process: heavy decodes reserve their memory in it.
    decode_gate: DecodeGate | None = None
    # Worker processes sharing the per-host limits (options holds this one's part of them);
    # a site's robots.txt Crawl-delay is split across them the same way.
    workers: int = 1


# Rows a worker process holds beyond those it works on, per row it works on: they wait in the
# worker, not started (no connection, no timeout, no memory), and the next starts as soon as a
# row ends. The main process hands out rows on a loop that shares its GIL with the appender and
# the materializer: while they commit and materialize a segment it answers late, and a worker
# with nothing queued went idle meanwhile (`download` of a list of urls that all answer 404, 2
# workers on 2 cores: 1.84-1.86 cores busy on average, down to 1.3-1.6 at each segment close;
# 1.89-1.91 with the queue; 0 to 10% less wall-clock time in alternating pairs).
QUEUED_PER_ROW = 1


def capacity(concurrency: int, processes: int) -> int:
    """Rows the fetcher hands the pool at once: `concurrency` being fetched and, with worker
    processes, QUEUED_PER_ROW times as many waiting in them to start. This process fetching
    (processes 0) has nothing to bridge: only `concurrency`."""
    return concurrency * (1 + QUEUED_PER_ROW) if processes > 0 else concurrency


def share(total: int, workers: int, index: int) -> int:
    """Worker `index`'s part of `total` split over `workers`: the parts add up to `total`
    (when total >= workers), and each is at least 1."""
    return max(1, total // workers + (1 if index < total % workers else 0))


def worker_options(opts: FetchOptions, workers: int, index: int) -> FetchOptions:
    """`opts` for worker `index` of `workers`: its part of the per-host limits and of the
    memory budget for bodies in flight."""
    return opts.model_copy(
        update={
            "max_connections_per_host": share(opts.max_connections_per_host, workers, index),
            "host_rate_limit": opts.host_rate_limit / workers,
            "max_body_bytes_in_flight": share(opts.max_body_bytes_in_flight, workers, index),
        }
    )
