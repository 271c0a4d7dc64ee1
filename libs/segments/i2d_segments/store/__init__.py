"""The SegmentStore port: append-only objects, invisible until complete."""

from i2d_segments.store.base import (
    ObjectExistsError,
    ObjectInfo,
    SegmentStore,
    SegmentUpload,
    StoreError,
)

__all__ = ["ObjectExistsError", "ObjectInfo", "SegmentStore", "SegmentUpload", "StoreError"]
