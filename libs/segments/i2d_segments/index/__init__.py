"""The Index port: item_id -> (segment, offset, length), samples, segments, partition ownership.

Adapters: `SqliteIndex` (stdlib, exported here) and `PostgresIndex` (loaded on first use, so the
embedded mode never imports psycopg).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from i2d_segments.index.base import (
    DownloadRun,
    FencedError,
    Index,
    IndexAccessError,
    IndexTotals,
    ItemRow,
    PartitionLease,
    PartitionProgress,
    PartitionRow,
    PositionError,
    SampleRow,
    SegmentCommit,
    SegmentMove,
    SegmentRow,
)
from i2d_segments.index.sqlite import SqliteIndex

if TYPE_CHECKING:
    from i2d_segments.index.postgres import PostgresIndex


def __getattr__(name: str) -> Any:
    if name == "PostgresIndex":
        from i2d_segments.index.postgres import PostgresIndex

        return PostgresIndex
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DownloadRun",
    "FencedError",
    "Index",
    "IndexAccessError",
    "IndexTotals",
    "ItemRow",
    "PartitionLease",
    "PartitionProgress",
    "PartitionRow",
    "PositionError",
    "PostgresIndex",
    "SampleRow",
    "SegmentCommit",
    "SegmentMove",
    "SegmentRow",
    "SqliteIndex",
]
