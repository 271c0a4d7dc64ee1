"""Prometheus metrics of the fetcher (no URL or host labels: bounded cardinality)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ROWS = Counter(
    "img2dataset_fetcher_rows_total",
    "Input rows whose APPEND record was acknowledged, by sample status.",
    ["status"],
)
IN_FLIGHT = Gauge("img2dataset_fetcher_in_flight", "Rows being downloaded or processed.")
