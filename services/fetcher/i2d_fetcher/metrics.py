"""Prometheus metrics of the fetcher (no URL or host labels: bounded cardinality)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ROWS = Counter(
    "img2dataset_fetcher_rows_total",
    "Input rows whose APPEND record was acknowledged, by sample status.",
    ["status"],
)
IN_FLIGHT = Gauge("img2dataset_fetcher_in_flight", "Rows being downloaded or processed.")
FETCH_SECONDS = Histogram(
    "img2dataset_fetcher_fetch_seconds",
    "Time to download one URL (successful or not), retries included.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60),
)
BYTES = Counter("img2dataset_fetcher_bytes_total", "Image bytes downloaded (bodies received).")
RESIZE_SECONDS = Histogram(
    "img2dataset_fetcher_resize_seconds",
    "Time to decode, resize and encode one image in a worker (rejected images included).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
