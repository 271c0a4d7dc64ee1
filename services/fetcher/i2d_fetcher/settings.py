"""The fetcher's settings: connection settings, img2dataset's download options (same names and
defaults), and the service's own knobs. Env `I2D_<FIELD>` or `--field` flags."""

from __future__ import annotations

from pydantic import Field

from i2d_fetcher.cpus import usable_cpus
from i2d_fetcher.options import FetchOptions
from i2d_segments.settings import ConnectionSettings


def default_workers() -> int:
    """One worker process per CPU this process may use (a container's CPU limit included)."""
    return usable_cpus()


class FetcherSettings(ConnectionSettings, FetchOptions):
    group_id: str = Field("fetcher", description="Consumer group on the urls topic.")
    thread_count: int = Field(
        256,
        ge=1,
        description="Rows downloaded concurrently per worker process, as in img2dataset (so "
        "`--processes_count 16 --thread_count 64` has 1024 rows in flight); with "
        "processes_count 0, in this process.",
    )
    processes_count: int = Field(
        default_factory=default_workers,
        ge=0,
        description="Worker processes that download, decode, resize and encode (default: one "
        "per CPU this process may use, a container's CPU limit included; 0 = all in this "
        "process, images on a thread). The per-host "
        "limits are split across them.",
    )
    url_field: str = Field("url", description="JSON field of a `urls` record holding the url.")
    caption_field: str | None = Field(
        "caption", description="JSON field of a `urls` record holding the caption."
    )
    inline_payload_limit: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Larger images travel by claim check through the store, not the bus.",
    )
    commit_interval_seconds: float = Field(1.0, gt=0, description="How often offsets commit.")
    poll_timeout_seconds: float = Field(0.5, gt=0, description="Longest wait of one poll.")

    @property
    def rows_in_flight(self) -> int:
        """The most rows this fetcher downloads at once: thread_count per worker process."""
        return self.thread_count * max(1, self.processes_count)

    def fetch_options(self) -> FetchOptions:
        return FetchOptions.model_validate(
            {name: getattr(self, name) for name in FetchOptions.model_fields}
        )
