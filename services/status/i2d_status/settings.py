"""The status service's settings: env `I2D_<FIELD>` or `img2dataset serve status --<field>`.

Two ways to run: over an output folder (`output_folder`: its index and segments, and its durable
bus when `img2dataset service` runs there; no Kafka) or over the distributed deployment's
Postgres index, store and Kafka (the connection settings every service shares).
"""

from __future__ import annotations

from pydantic import Field

from i2d_segments.settings import ConnectionSettings


class StatusSettings(ConnectionSettings):
    http_host: str = Field(
        "127.0.0.1",
        description="Bind address of the dashboard, API and metrics (this machine only by "
        "default; 0.0.0.0 for every interface, as in a container).",
    )
    http_port: int = Field(
        8080, description="Port of the dashboard, /api/*, /metrics, /healthz and /readyz."
    )
    output_folder: str | None = Field(
        None,
        description="An output folder to watch (its index, segments and, if it has one, its "
        "durable bus; no Kafka); unset: the distributed settings (index_url, store_url, "
        "kafka_bootstrap_servers).",
    )
    refresh_seconds: float = Field(
        1.0, gt=0, description="How often the figures are recomputed (and the page refreshes)."
    )
    rate_window_seconds: float = Field(
        10.0,
        gt=0,
        description="Window of the images/s and rows/s rates when measured here (the "
        "appenders publish theirs over their progress_window_seconds).",
    )
    progress_stale_seconds: float = Field(
        15.0,
        gt=0,
        description="An appender's live progress older than this is ignored (the appender is "
        "gone; what its open segment held is not recorded).",
    )
    history_points: int = Field(
        3600, ge=2, le=100_000, description="Refreshes kept for the dashboard's charts."
    )
    recent_items: int = Field(20, ge=0, le=500, description="Recent items shown.")
    fetcher_group: str = Field("fetcher", description="The fetchers' group on the urls topic.")
    appender_group: str = Field("appender", description="The appenders' group on APPEND.")
    materializer_group: str = Field(
        "materializer", description="The materializer's group on SEGMENT_CLOSED."
    )
    extra_consumer_groups: dict[str, str] = Field(
        default_factory=dict,
        description="More groups whose lag to show, as JSON {group: topic} (your consumers).",
    )
    kafka_timeout_seconds: float = Field(
        5.0, gt=0, description="Longest wait of one Kafka admin request (lag, metadata)."
    )

    def consumer_groups(self) -> list[tuple[str, str]]:
        """(group, topic) pairs whose lag is reported, pipeline order first."""
        pairs = [
            (self.fetcher_group, self.urls_topic),
            (self.appender_group, self.append_topic),
            (self.materializer_group, self.closed_topic),
        ]
        pairs += sorted(self.extra_consumer_groups.items())
        return pairs
