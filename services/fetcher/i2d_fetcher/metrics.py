"""Prometheus metrics of the fetcher (no URL or host labels: bounded cardinality).

Only the main process observes them (it serves /metrics): the worker processes send each row's
figures back with its result (`RowStats`), and `observe` records them here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from i2d_segments import stagecpu
from i2d_segments.labels import LabelledChildren

if TYPE_CHECKING:
    from i2d_fetcher.outcome import RowStats

ROWS = Counter(
    "img2dataset_fetcher_rows_total",
    "Input rows whose APPEND record was acknowledged, by sample status.",
    ["status"],
)
FAILURES = Counter(
    "img2dataset_fetcher_failures_total",
    "Failed rows by reason: the kind of their error message (a bounded set, see reasons.py).",
    ["reason"],
)
# Updated per row: their children by label value, looked up once.
ROWS_BY_STATUS = LabelledChildren(ROWS)
FAILURES_BY_REASON = LabelledChildren(FAILURES)
IN_FLIGHT = Gauge(
    "img2dataset_fetcher_in_flight",
    "Rows handed to the fetch workers and not answered yet: being downloaded or processed, or "
    "queued in a worker to start next (up to thread_count of each per worker process).",
)
FETCH_SECONDS = Histogram(
    "img2dataset_fetcher_fetch_seconds",
    "Time to download one URL (successful or not), retries included.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60),
)
BYTES = Counter("img2dataset_fetcher_bytes_total", "Image bytes downloaded (bodies received).")
RESIZE_SECONDS = Histogram(
    "img2dataset_fetcher_resize_seconds",
    "Time to decode, resize and encode one image (rejected images included).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

ROBOTS_HITS = Counter(
    "img2dataset_fetcher_robots_cache_hits_total",
    "Urls checked against a robots.txt already cached (per worker process).",
)
ROBOTS_MISSES = Counter(
    "img2dataset_fetcher_robots_cache_misses_total",
    "Urls whose site's robots.txt was not cached (or had expired): they waited for a fetch, "
    "their own or one already in flight for the site.",
)
ROBOTS_FETCHES = Counter(
    "img2dataset_fetcher_robots_fetches_total",
    "robots.txt requests by result: ok (2xx, its rules), unavailable (4xx: all allowed), "
    "unreachable (5xx, 429: all disallowed for a while), timeout (the same), stale (failed; "
    "an earlier copy used), error (no answer: the row that asked failed with the reason).",
    ["result"],
)
ROBOTS_RESULTS = ("ok", "unavailable", "unreachable", "timeout", "stale", "error")


# The stages of a row's CPU the fetcher measures (i2d_segments.stagecpu): in its worker
# processes, reported with their results.
STAGES = ("download", "hash", "decode", "resize", "encode", "record", "handoff")
stagecpu.precreate(STAGES)


def observe(stats: RowStats) -> None:
    if stats.cpu:
        stagecpu.add_reported(stats.cpu)
    if stats.fetch_seconds is not None:
        FETCH_SECONDS.observe(stats.fetch_seconds)
    if stats.downloaded_bytes:
        BYTES.inc(stats.downloaded_bytes)
    if stats.resize_seconds is not None:
        RESIZE_SECONDS.observe(stats.resize_seconds)
    if stats.robots:
        for what, n in stats.robots.items():
            if what == "hit":
                ROBOTS_HITS.inc(n)
            elif what == "miss":
                ROBOTS_MISSES.inc(n)
            elif what.startswith("fetch:"):
                ROBOTS_FETCHES.labels(what[6:]).inc(n)
