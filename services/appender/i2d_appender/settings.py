"""The appender's settings: env `I2D_<FIELD>` or `img2dataset serve appender --<field>`."""

from __future__ import annotations

from pydantic import Field

from i2d_segments.settings import ConnectionSettings


class AppenderSettings(ConnectionSettings):
    group_id: str = Field("appender", description="Consumer group owning APPEND partitions.")
    number_sample_per_shard: int = Field(
        10000, ge=1, description="Close a segment after this many input rows (img2dataset's name)."
    )
    segment_max_bytes: int = Field(
        512 * 1024 * 1024, ge=1024, description="Close a segment once it holds this many bytes."
    )
    segment_idle_seconds: float = Field(
        30.0, ge=0, description="Close a segment that received nothing for this long."
    )
    segment_max_age_seconds: float = Field(
        3600.0,
        gt=0,
        description="Close a segment open this long even if records keep trickling in, so an "
        "upload never lives longer than this (gc's grace period for uploads relies on it).",
    )
    poll_max_records: int = Field(500, ge=1, description="Records taken per poll.")
    poll_timeout_seconds: float = Field(0.5, gt=0, description="Longest wait of one poll.")
    poll_linger_seconds: float = Field(
        0.04,
        ge=0,
        description="After a poll that brought fewer than poll_max_records / 8 records, wait "
        "this long before the next, so records come in batches: each poll that wakes the "
        "appender for a few records costs a thread switch (in `download` the appender shares "
        "its process with the fetcher). 0: poll again at once.",
    )
    commit_attempts: int = Field(
        8,
        ge=1,
        description="Consecutive failures of a partition's store or index calls before the "
        "partition stops (readiness fails) instead of retrying.",
    )
    retry_base_seconds: float = Field(
        0.2, gt=0, description="First backoff after a transient failure; doubles each time."
    )
    retry_max_seconds: float = Field(10.0, gt=0, description="Longest backoff between retries.")
    announce_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="How long a revoke or shutdown waits for SEGMENT_CLOSED acknowledgements.",
    )
    progress_interval_seconds: float = Field(
        1.0,
        ge=0,
        description="How often the live progress of each owned partition (rows in its open "
        "segment, rates, latest rows) is published to the index for status; 0: never.",
    )
    progress_window_seconds: float = Field(
        10.0, gt=0, description="Window of the published rates (rows/s, images/s)."
    )
    progress_recent_rows: int = Field(
        20, ge=0, le=500, description="Latest rows of each partition published with it."
    )
