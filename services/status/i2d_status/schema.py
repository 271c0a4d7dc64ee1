"""The REST API's JSON, as pydantic models: these are its schema.

`GET /api/schema` serves the JSON Schema of every endpoint, generated from these models; the
handlers build their answers from them, so the schema cannot drift from the answers.

Conventions: times are unix seconds (float); sizes are bytes; a figure the current mode cannot
know is null (e.g. `enqueued` over an output folder, which has no `urls` topic); `errors` lists
the parts that could not be read (a broker down), the rest of the answer still stands.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Mode = Literal["embedded", "distributed"]


class Progress(BaseModel):
    samples: int = Field(description="Input rows recorded in the index (successes + failures).")
    successes: int
    failures: int
    success_rate: float | None = Field(description="successes / samples; null before any.")
    by_status: dict[str, int]
    enqueued: int | None = Field(
        description="Rows ever written to the urls topic (sum of its end offsets); "
        "distributed only."
    )
    fetched: int | None = Field(
        description="Rows the fetchers committed on the urls topic; distributed only."
    )
    fraction: float | None = Field(description="fetched / enqueued, when both are known.")


class Rates(BaseModel):
    window_seconds: float
    images_per_second: float = Field(description="Successes recorded per second.")
    samples_per_second: float = Field(description="Rows recorded per second.")
    source: Literal["observed", "segments"] = Field(
        description="observed: measured between this service's refreshes; segments: estimated "
        "from the segments committed within the window (right after start)."
    )


class Failure(BaseModel):
    reason: str
    count: int


class SegmentCounts(BaseModel):
    closed: int = Field(description="Committed segments.")
    open: int = Field(
        description="Partitions with a segment being written (uploads in progress; records "
        "on APPEND past the committed position when distributed)."
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


class StatusResponse(BaseModel):
    """GET /api/status: everything the dashboard shows."""

    version: str
    mode: Mode
    generated_at: float
    refresh_seconds: float
    progress: Progress
    rates: Rates
    failures: list[Failure] = Field(description="Top failure reasons, most frequent first.")
    segments: SegmentCounts
    lag: list[Lag]
    recent: list[RecentItem] = Field(description="Rows of the newest segments.")
    errors: list[str]


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
    end: int | None = Field(description="End offset on the bus; null without Kafka.")
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
    "/api/index": IndexResponse,
    "/api/queue": QueueResponse,
    "/api/segments": SegmentsResponse,
}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of each endpoint's answer."""
    return {path: model.model_json_schema() for path, model in ENDPOINTS.items()}
