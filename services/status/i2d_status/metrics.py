"""/metrics of the status service: consumer lag and the index's figures, from the latest refresh.

`img2dataset_consumer_lag{group,topic,partition}` is the one place consumer lag is exported
(KEDA and the Grafana dashboard read it); scrapes never query Kafka or the index themselves,
they read the figures of the last refresh. Values that can go down (a failed row re-fetched
becomes a success) are gauges; no url or host ever becomes a label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from i2d_status.schema import StatusResponse

CONSUMER_LAG = "img2dataset_consumer_lag"


class StatusCollector(Collector):
    def __init__(self, latest: Callable[[], StatusResponse | None]) -> None:
        self._latest = latest

    def collect(self) -> Iterator[Metric]:
        snap = self._latest()
        if snap is None:
            return
        lag = GaugeMetricFamily(
            CONSUMER_LAG,
            "Records on a topic partition not yet committed by a consumer group.",
            labels=["group", "topic", "partition"],
        )
        for x in snap.lag:
            lag.add_metric([x.group, x.topic, str(x.partition)], x.lag)
        yield lag
        samples = GaugeMetricFamily(
            "img2dataset_index_samples",
            "Input rows recorded in the index, by status.",
            labels=["status"],
        )
        for status, n in snap.progress.by_status.items():
            samples.add_metric([status], n)
        yield samples
        yield GaugeMetricFamily(
            "img2dataset_open_segment_samples",
            "Input rows appended to open segments, not committed to the index yet.",
            value=snap.progress.in_open_segments,
        )
        if snap.progress.total is not None and snap.progress.done is not None:
            yield GaugeMetricFamily(
                "img2dataset_progress_total_rows",
                "Rows to do: the latest download's list (embedded), the rows enqueued.",
                value=snap.progress.total,
            )
            yield GaugeMetricFamily(
                "img2dataset_progress_done_rows",
                "Of those, rows with an outcome (skipped as recorded, or appended).",
                value=snap.progress.done,
            )
        yield GaugeMetricFamily(
            "img2dataset_index_segments", "Committed segments.", value=snap.segments.closed
        )
        yield GaugeMetricFamily(
            "img2dataset_index_items",
            "Images stored in committed segments.",
            value=snap.segments.items,
        )
        yield GaugeMetricFamily(
            "img2dataset_index_segment_bytes",
            "Bytes of committed segments.",
            value=snap.segments.bytes,
        )
        yield GaugeMetricFamily(
            "img2dataset_segments_open",
            "Partitions with a segment being written.",
            value=snap.segments.open,
        )
        if snap.segments.last_closed_at is not None:
            yield GaugeMetricFamily(
                "img2dataset_last_segment_timestamp_seconds",
                "Creation time of the newest committed segment.",
                value=snap.segments.last_closed_at,
            )


def status_registry(latest: Callable[[], StatusResponse | None]) -> CollectorRegistry:
    """A registry of its own (several apps can live in one test process): the status figures
    plus the process and platform collectors every service exports."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(StatusCollector(latest))
    return registry
