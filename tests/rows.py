"""Full sample and item rows of a dataset in the tests: the index's refs joined with the
segments' manifests, as every reader of the project gets them (`SegmentRows`)."""

from __future__ import annotations

from pathlib import Path

from i2d_segments.index import Index
from i2d_segments.reader import SegmentRows
from i2d_segments.store.local import LocalStore


def folder_rows(folder: Path, index: Index) -> SegmentRows:
    """The rows of a dataset kept in a local folder (or bucket-like folder of segments)."""
    return SegmentRows(LocalStore(Path(folder)), index)
