"""The REST API's JSON, as pydantic models: these are its schema.

`GET /api/schema` serves the JSON Schema of every endpoint, generated from these models; the
handlers build their answers from them, so the schema cannot drift from the answers.

Conventions: times are unix seconds (float); sizes are bytes; a figure the current mode cannot
know is null (e.g. `enqueued` over an output folder a download wrote, which has no `urls` topic);
`errors` lists the parts that could not be read (a broker down), the rest of the answer still
stands.

Modes: `embedded`, an output folder written by `img2dataset download` (no bus); `service`, an
output folder with its durable bus (`img2dataset service` runs there, `enqueue` feeds it): its
queue figures and consumer lag come from that bus; `distributed`, the services over Kafka.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Mode = Literal["embedded", "service", "distributed"]


class Run(BaseModel):
    """The latest `img2dataset download` into the folder (embedded)."""

    url_list: str
    started_at: float
    finished_at: float | None = Field(description="Null while it runs (or if it was killed).")
    rows_total: int | None = Field(description="The list's rows, when known.")
    rows_read: int
    rows_skipped: int = Field(description="Already recorded by an earlier run: not fetched again.")


class Progress(BaseModel):
    samples: int = Field(
        description="Input rows recorded (successes + failures): committed in the index plus "
        "those appended to open segments, which the index records when they close."
    )
    committed: int = Field(description="Rows of committed segments.")
    in_open_segments: int = Field(
        description="Rows appended to segments still open (published by the appenders about "
        "every second)."
    )
    successes: int
    failures: int
    success_rate: float | None = Field(description="successes / samples; null before any.")
    by_status: dict[str, int] = Field(description="Committed rows by status.")
    enqueued: int | None = Field(
        description="Rows ever written to the urls topic (sum of its end offsets); "
        "distributed and service only."
    )
    fetched: int | None = Field(
        description="Rows the fetchers committed on the urls topic; distributed and service only."
    )
    total: int | None = Field(
        description="Rows to do: the latest download's list (embedded), the rows enqueued "
        "(service, distributed); null while unknown."
    )
    done: int | None = Field(
        description="Of those, rows with an outcome: skipped as already recorded, plus APPEND "
        "records the appenders took (open segments included); over a folder's bus (service), "
        "the rows the fetchers committed less the APPEND records no appender took yet."
    )
    fraction: float | None = Field(description="done / total (at most 1), when both are known.")
    run: Run | None = Field(description="The latest download run (embedded).")


class Rates(BaseModel):
    window_seconds: float
    images_per_second: float = Field(description="Successes recorded per second.")
    samples_per_second: float = Field(description="Rows recorded per second.")
    failures_per_second: float = Field(description="Failed rows recorded per second.")
    source: Literal["appenders", "observed", "none"] = Field(
        description="appenders: measured by the appenders as they append (published with the "
        "live progress); observed: measured between this service's refreshes (no appender "
        "publishes); none: neither, yet (0)."
    )


class Failure(BaseModel):
    reason: str
    count: int


class SegmentCounts(BaseModel):
    closed: int = Field(description="Committed segments.")
    open: int = Field(
        description="Partitions with a segment being written (uploads in progress; records "
        "on APPEND past the committed position when there is a bus)."
    )
    items: int = Field(description="Images stored (sum of the segments' item counts).")
    bytes: int
    last_closed_at: float | None


class Lag(BaseModel):
    group: str
    topic: str
    partition: int
    committed: int | None = Field(description="The group's committed offset; null if never.")
    end: int = Field(description="The partition's end offset (high watermark).")
    lag: int


class RecentItem(BaseModel):
    item_id: str | None
    sample_id: str
    url: str
    caption: str | None
    status: str
    error: str | None
    width: int | None
    height: int | None
    segment_id: str
    committed: bool = Field(description="False while its segment is still open.")
    at: float = Field(description="When the appender recorded the row's outcome.")


class StatusResponse(BaseModel):
    """GET /api/status: everything the dashboard shows."""

    version: str
    mode: Mode
    generated_at: float
    refresh_seconds: float
    progress: Progress
    rates: Rates
    failures: list[Failure] = Field(
        description="Top failure reasons, most frequent first (open segments' included)."
    )
    segments: SegmentCounts
    lag: list[Lag]
    recent: list[RecentItem] = Field(description="The latest rows, newest first.")
    errors: list[str]


class HistoryPoint(BaseModel):
    at: float
    samples: int
    successes: int
    failures: int
    images_per_second: float
    samples_per_second: float
    failures_per_second: float


class HistoryResponse(BaseModel):
    """GET /api/history: the figures of this service's refreshes, oldest first (the
    dashboard's charts); kept in memory, so they start when the service started."""

    refresh_seconds: float
    points: list[HistoryPoint]


class PartitionState(BaseModel):
    topic: str
    partition: int
    epoch: int
    next_offset: int
    owner: str | None
    updated_at: float


class IndexTotalsModel(BaseModel):
    segments: int
    items: int
    samples: int = Field(description="Rows committed with the segments (a re-fetched row twice).")
    bytes: int
    first_created_at: float | None
    last_created_at: float | None


class IndexResponse(BaseModel):
    """GET /api/index: what the index holds."""

    mode: Mode
    generated_at: float
    totals: IndexTotalsModel
    status_counts: dict[str, int]
    error_counts: list[Failure]
    partitions: list[PartitionState] = Field(description="Appender ownership and positions.")
    errors: list[str]


class TopicPartitionState(BaseModel):
    topic: str
    partition: int
    end: int | None = Field(description="End offset on the bus; null without one.")
    index_next_offset: int | None = Field(
        description="APPEND only: the position committed in the index (segments before it "
        "are closed)."
    )
    pending: int | None = Field(
        description="APPEND only: records past the committed position (in open segments)."
    )
    owner: str | None


class QueueResponse(BaseModel):
    """GET /api/queue: topics, partitions and consumer lag."""

    mode: Mode
    generated_at: float
    partitions: list[TopicPartitionState]
    lag: list[Lag]
    total_lag: dict[str, int] = Field(description="Lag summed per group.")
    errors: list[str]


class SegmentModel(BaseModel):
    segment_id: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    epoch: int
    uri: str
    item_count: int
    sample_count: int
    bytes: int
    sha256: str
    created_at: float
    metadata_uri: str = Field(description="img2dataset's metadata parquet of the segment.")
    stats_uri: str


class SegmentsResponse(BaseModel):
    """GET /api/segments?limit=&offset=: committed segments, newest first."""

    total: int
    limit: int
    offset: int
    segments: list[SegmentModel]


ENDPOINTS: dict[str, type[BaseModel]] = {
    "/api/status": StatusResponse,
    "/api/history": HistoryResponse,
    "/api/index": IndexResponse,
    "/api/queue": QueueResponse,
    "/api/segments": SegmentsResponse,
}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of each endpoint's answer."""
    return {path: model.model_json_schema() for path, model in ENDPOINTS.items()}
