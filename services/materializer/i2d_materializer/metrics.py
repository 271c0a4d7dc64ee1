"""Prometheus metrics of the materializer."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from i2d_segments import stagecpu

SEGMENTS = Counter(
    "img2dataset_materializer_segments_total", "Segments materialized (metadata + stats)."
)
SECONDS = Histogram("img2dataset_materializer_segment_seconds", "Time to materialize one segment.")
LAG_SECONDS = Gauge(
    "img2dataset_materializer_lag_seconds",
    "Time from the opening of the last materialized segment to its materialization "
    "(including the time the segment took to fill).",
)
MANIFEST_SECONDS = Histogram(
    "img2dataset_materializer_manifest_seconds",
    "Time to rewrite the dataset manifests (shard lists, wids JSON, summary).",
)

# The materializer's CPU (i2d_segments.stagecpu): sidecars and manifests.
STAGES = ("materialize",)
stagecpu.precreate(STAGES)
