"""The dataset an operator command works on: an embedded output folder (its segments and
index.sqlite), or a store and an index (`--store_url`/`--index_url`, else `I2D_STORE_URL`,
`I2D_INDEX_URL`...), as `img2dataset materialize` and `status` take them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from i2d_segments.connect import open_index, open_store
from i2d_segments.index import Index
from i2d_segments.settings import ServiceSettings
from i2d_segments.store import SegmentStore

INDEX_FILE = "index.sqlite"


class DatasetOptions(ServiceSettings):
    output_folder: str | None = Field(
        None, description="An embedded output folder (its index.sqlite and segments)."
    )
    store_url: str | None = Field(None, description="Segment store: s3://bucket/prefix or folder.")
    index_url: str | None = Field(None, description="Index: postgresql://... or sqlite:///...")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint.")
    s3_region: str | None = Field(None, description="S3 region.")


def store_of(opts: DatasetOptions) -> SegmentStore:
    if opts.output_folder is not None:
        return open_store(opts.output_folder)
    if opts.store_url is None:
        raise SystemExit("img2dataset: give --output_folder, or --store_url and --index_url")
    return open_store(
        opts.store_url, s3_endpoint_url=opts.s3_endpoint_url, s3_region=opts.s3_region
    )


def index_url_of(opts: DatasetOptions) -> str:
    """`--index_url` if given, else the output folder's index.sqlite."""
    if opts.index_url is not None:
        return opts.index_url
    if opts.output_folder is None:
        raise SystemExit("img2dataset: give --output_folder, or --store_url and --index_url")
    return str(Path(opts.output_folder) / INDEX_FILE)


def existing_index_of(opts: DatasetOptions) -> Index:
    """The dataset's index, which must exist (an output folder without one is no dataset)."""
    if opts.index_url is None and opts.output_folder is not None:
        path = Path(opts.output_folder) / INDEX_FILE
        if not path.is_file():
            raise SystemExit(f"img2dataset: {opts.output_folder} has no {INDEX_FILE}")
    index = open_index(index_url_of(opts))
    index.migrate()
    return index
