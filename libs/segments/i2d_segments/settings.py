"""Connection settings shared by every service: where the bus, the store and the index live.

Each service has its own frozen pydantic-settings model that extends `ConnectionSettings` with
its own knobs; every field reads the environment variable `I2D_<FIELD_NAME>` (case-insensitive),
and the CLI turns every field into a `--field_name` flag that wins over the environment.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "I2D_"


def default_owner() -> str:
    """A stable-enough identity for logs and the index's `owner` column: host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ServiceSettings(BaseSettings):
    """Base of every settings model: env prefix, frozen, unknown env vars ignored."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", case_sensitive=False
    )


class ConnectionSettings(ServiceSettings):
    kafka_bootstrap_servers: str = Field(
        "localhost:9092", description="Kafka bootstrap servers, comma-separated host:port."
    )
    kafka_config: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra librdkafka settings (JSON object), e.g. security or timeouts.",
    )
    kafka_max_message_bytes: int = Field(
        16 * 1024 * 1024,
        description="Largest record produced; bigger image payloads travel by claim check.",
    )
    store_url: str = Field(
        "s3://img2dataset/",
        description="Segment store: s3://bucket/prefix or a local folder path.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO...); AWS when unset."
    )
    s3_region: str | None = Field(None, description="S3 region; the boto3 default when unset.")
    index_url: str = Field(
        "postgresql://img2dataset@localhost:5432/img2dataset",
        description="Index: postgresql://... DSN, or sqlite:///path/to/index.sqlite.",
    )
    urls_topic: str = "urls"
    append_topic: str = "APPEND"
    closed_topic: str = "SEGMENT_CLOSED"
    urls_partitions: int = Field(8, description="Partitions when this service creates `urls`.")
    append_partitions: int = Field(8, description="Partitions when this service creates APPEND.")
    closed_partitions: int = Field(1, description="Partitions of SEGMENT_CLOSED when created.")
    create_topics: bool = Field(True, description="Create missing topics at startup (idempotent).")
    metrics_host: str = Field("0.0.0.0", description="Bind address of /metrics and health.")
    metrics_port: int = Field(9100, description="Port of /metrics, /healthz, /readyz; 0 = off.")
    owner: str = Field(default_factory=default_owner, description="This instance's identity.")

    def topic_partitions(self) -> dict[str, int]:
        return {
            self.urls_topic: self.urls_partitions,
            self.append_topic: self.append_partitions,
            self.closed_topic: self.closed_partitions,
        }
