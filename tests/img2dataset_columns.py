"""img2dataset's per-sample metadata columns, in its order (the hash column, named after
`compute_hash`, follows `exif`): what users who join on img2dataset's parquet rely on."""

from __future__ import annotations

METADATA_COLUMNS = [
    "url",
    "caption",
    "key",
    "status",
    "error_message",
    "width",
    "height",
    "original_width",
    "original_height",
    "exif",
]
# With the default compute_hash.
IMG2DATASET_COLUMNS = [*METADATA_COLUMNS, "sha256"]
