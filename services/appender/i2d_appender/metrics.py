"""Prometheus metrics of the appender (no URL or host labels: bounded cardinality)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from i2d_segments import stagecpu
from i2d_segments.labels import LabelledChildren

RECORDS = Counter(
    "img2dataset_appender_records_total",
    "APPEND records consumed, by outcome (stored, duplicate, failure, malformed).",
    ["outcome"],
)
RECORDS_BY_OUTCOME = LabelledChildren(RECORDS)  # per record: its children, looked up once
SEGMENTS_CLOSED = Counter(
    "img2dataset_appender_segments_closed_total", "Segments committed to the index."
)
SEGMENT_BYTES = Histogram(
    "img2dataset_appender_segment_bytes",
    "Size of committed segments.",
    buckets=[2**k for k in range(16, 34, 2)],
)
COMMIT_SECONDS = Histogram(
    "img2dataset_appender_commit_seconds",
    "Time from closing a segment to its index commit and announcement.",
)
OPEN_SEGMENT_BYTES = Gauge(
    "img2dataset_appender_open_segment_bytes", "Bytes written to currently open segments."
)
FENCED = Counter(
    "img2dataset_appender_fenced_total",
    "Segment commits refused because another owner took the partition (zombie).",
)
POSITION_REFUSED = Counter(
    "img2dataset_appender_position_refused_total",
    "Segment commits refused because the index's next_offset is not where this appender "
    "resumed (it lost acknowledged commits): the partition is taken again and re-read from there.",
)
OFFSETS_SKIPPED = Counter(
    "img2dataset_appender_offsets_skipped_total",
    "APPEND offsets passed over without a record: deleted by the bus (retention) before they "
    "were appended, or held and never delivered even when read again. Their rows are lost "
    "upstream.",
)
GAPS_READ_AGAIN = Counter(
    "img2dataset_appender_gaps_read_again_total",
    "Times the bus delivered an APPEND record past offsets it still held, and the appender "
    "read the partition again from the first of them.",
)
OWNED_PARTITIONS = Gauge(
    "img2dataset_appender_owned_partitions", "APPEND partitions this instance owns."
)
RETRIES = Counter(
    "img2dataset_appender_retries_total",
    "Transient failures retried (store, index, announce, kafka_commit), by operation.",
    ["operation"],
)
SEGMENTS_ABANDONED = Counter(
    "img2dataset_appender_segments_abandoned_total",
    "Open segments discarded and re-read from the committed offset, by reason.",
    ["reason"],
)
PARTITIONS_STOPPED = Gauge(
    "img2dataset_appender_partitions_stopped",
    "Partitions stopped on a permanent error; readiness fails while any is.",
)
ANNOUNCEMENTS_PENDING = Gauge(
    "img2dataset_appender_announcements_pending",
    "Committed segments whose SEGMENT_CLOSED is not acknowledged yet.",
)
REANNOUNCED = Counter(
    "img2dataset_appender_segments_reannounced_total",
    "Committed segments announced again on taking a partition (a previous owner's may be lost).",
)

# Every label value these counters take, created at 0 at import: a dashboard panel shows 0
# rather than "No data", and an alert's increase() sees the first event.
RECORD_OUTCOMES = ("stored", "duplicate", "failure", "malformed")
RETRY_OPERATIONS = (
    "acquire",
    "announce",
    "dedup lookup",
    "index commit",
    "index position",
    "kafka_commit",
    "store complete",
    "store read",
    "store write",
)
ABANDON_REASONS = (
    "fenced",
    "lost",
    "position",
    "stopped",
    "store complete",
    "store read",
    "store write",
)
for _outcome in RECORD_OUTCOMES:
    RECORDS.labels(_outcome)
for _operation in RETRY_OPERATIONS:
    RETRIES.labels(_operation)
for _reason in ABANDON_REASONS:
    SEGMENTS_ABANDONED.labels(_reason)
# The appender's stages of a row's CPU (i2d_segments.stagecpu): the index's calls, the rest.
STAGES = ("append", "index")
stagecpu.precreate(STAGES)
