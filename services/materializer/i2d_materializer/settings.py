"""The materializer's settings: env `I2D_<FIELD>` or `img2dataset serve materializer --<field>`."""

from __future__ import annotations

from pydantic import Field

from i2d_segments.settings import ConnectionSettings


class MaterializerSettings(ConnectionSettings):
    group_id: str = Field("materializer", description="Consumer group on SEGMENT_CLOSED.")
    poll_timeout_seconds: float = Field(0.5, gt=0, description="Longest wait of one poll.")
    reconcile_on_start: bool = Field(
        True,
        description="At startup, materialize committed segments that have no metadata yet "
        "(events lost before they were handled).",
    )
    manifest_interval_seconds: float = Field(
        10.0,
        ge=0,
        description="Rewrite the dataset manifests at most this often while events flow "
        "(always when idle and at shutdown).",
    )
