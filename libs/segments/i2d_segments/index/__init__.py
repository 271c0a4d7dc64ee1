"""The Index port: item_id -> (segment, offset, length), samples, segments, partition ownership."""

from i2d_segments.index.base import (
    FencedError,
    Index,
    IndexError_,
    ItemRow,
    PartitionLease,
    PartitionRow,
    SampleRow,
    SegmentCommit,
    SegmentRow,
)

__all__ = [
    "FencedError",
    "Index",
    "IndexError_",
    "ItemRow",
    "PartitionLease",
    "PartitionRow",
    "SampleRow",
    "SegmentCommit",
    "SegmentRow",
]
