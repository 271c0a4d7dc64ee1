"""The SegmentStore port: append-only objects, invisible until complete.

Adapters live in `i2d_segments.store.local` and `i2d_segments.store.s3` and are imported on
demand, so the embedded mode never loads boto3.
"""

from i2d_segments.store.base import (
    IncompleteUpload,
    ObjectExistsError,
    ObjectInfo,
    SegmentStore,
    SegmentUpload,
    StoreError,
)

__all__ = [
    "IncompleteUpload",
    "ObjectExistsError",
    "ObjectInfo",
    "SegmentStore",
    "SegmentUpload",
    "StoreError",
]
