"""The dataset an operator command works on: an output folder, or a store and an index
(`--store_url`/`--index_url`, else `I2D_STORE_URL`, `I2D_INDEX_URL`...), as `img2dataset
materialize` and `status` take them.

An output folder is resolved by `OutputFolder.find`, as every command resolves it: its index is
the one the folder records (`--index_name` of the download that wrote it), and the dataset of a
download in one of img2dataset's layouts is the one it keeps in `_segments/`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from i2d_segments.connect import open_index, open_store
from i2d_segments.folder import INNER_FOLDER, FolderError, OutputFolder
from i2d_segments.index import Index
from i2d_segments.settings import ServiceSettings
from i2d_segments.store import SegmentStore

_NEITHER = "img2dataset: give --output_folder, or --store_url and --index_url"


class DatasetOptions(ServiceSettings):
    output_folder: str | None = Field(
        None, description="An output folder (its index and segments, or its _segments/)."
    )
    store_url: str | None = Field(None, description="Segment store: s3://bucket/prefix or folder.")
    index_url: str | None = Field(None, description="Index: postgresql://... or sqlite:///...")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint.")
    s3_region: str | None = Field(None, description="S3 region.")


def _folder(path: str) -> OutputFolder:
    """The dataset `--output_folder` names: the one it holds, else (no index there yet, as for
    `reindex` of a lost one) the folder itself, or its `_segments/` when it has one, with the
    index it records or the default one."""
    try:
        return OutputFolder.find(path)
    except FolderError:
        pass
    inner = Path(path) / INNER_FOLDER
    try:
        return OutputFolder.at(inner if inner.is_dir() else path)
    except FolderError as e:  # its img2dataset.json cannot be read
        raise SystemExit(f"img2dataset: {e}") from e


def store_of(opts: DatasetOptions) -> SegmentStore:
    if opts.output_folder is not None:
        return _folder(opts.output_folder).open_store()
    if opts.store_url is None:
        raise SystemExit(_NEITHER)
    return open_store(
        opts.store_url, s3_endpoint_url=opts.s3_endpoint_url, s3_region=opts.s3_region
    )


def index_url_of(opts: DatasetOptions) -> str:
    """`--index_url` if given, else the output folder's index (which may not exist yet)."""
    if opts.index_url is not None:
        return opts.index_url
    if opts.output_folder is None:
        raise SystemExit(_NEITHER)
    return f"sqlite://{_folder(opts.output_folder).index_path.absolute()}"


def existing_index_of(opts: DatasetOptions) -> Index:
    """The dataset's index, which must exist (an output folder without one is no dataset)."""
    if opts.index_url is None and opts.output_folder is not None:
        try:
            folder = OutputFolder.find(opts.output_folder)
        except FolderError as e:
            raise SystemExit(f"img2dataset: {e}") from e
        return folder.open_existing_index()
    index = open_index(index_url_of(opts))
    index.migrate()
    return index
