"""Options of `img2dataset download` that are not a service's settings (img2dataset's names)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from i2d_cli.inputs import RowReader

# Metadata columns of every row: an input column of the same name would overwrite them.
RESERVED_COLUMNS = frozenset(
    {"url", "caption", "key", "status", "error_message", "width", "height", "original_width",
     "original_height", "exif", "md5", "sha256", "sha512", "sample_id", "item_id"}
)  # fmt: skip


def additional_columns(value: Any) -> Any:
    """`--save_additional_columns license,width` works as well as `[license,width]`; a
    column that would overwrite a metadata column is refused, as img2dataset does."""
    if isinstance(value, str):
        value = [c.strip() for c in value.split(",") if c.strip()] or None
    reserved = sorted(RESERVED_COLUMNS & set(value or ()))
    if reserved:
        raise ValueError(
            f"{reserved} cannot be additional columns: each row's metadata has its own "
            "column of that name (use --caption_col for the caption)"
        )
    return value


class UrlListOptions(BaseModel):
    """How a url list is read (img2dataset's names): shared by `download` and `enqueue`."""

    url_list: str = Field(description="A url file, or a folder of them.")
    input_format: str = Field(
        "txt", description="txt, csv, tsv, json, jsonl (each also .gz), or parquet."
    )
    url_col: str = Field("url", description="Column holding the url (csv, tsv, json, parquet).")
    caption_col: str | None = Field(None, description="Column holding the caption.")
    save_additional_columns: list[str] | None = Field(
        None, description="More input columns kept in each sample's metadata."
    )
    oom_shard_count: int = Field(
        5, ge=1, le=20, description="Digits of the shard number in the rows' `key`."
    )
    progress: bool = Field(True, description="Show a progress bar with rate and ETA.")
    retry_failed: Literal["none", "transient", "all"] = Field(
        "none",
        description="Rows already recorded are skipped; also fetch again the failed ones "
        "whose failure may not last (transient: timeouts, DNS, connection errors, 429, 5xx) "
        "or every failed one (all). none: img2dataset's behaviour.",
    )

    _columns = field_validator("save_additional_columns", mode="before")(additional_columns)

    def row_reader(self, carried: Sequence[str], number_sample_per_shard: int) -> RowReader:
        """The reader of this list, carrying `carried` columns (inputs.carried_columns)."""
        from i2d_cli.inputs import RowReader  # pyarrow: only once a list is read

        return RowReader(
            self.input_format,
            self.url_col,
            self.caption_col,
            carried,
            number_sample_per_shard,
            self.oom_shard_count,
        )


class FolderOptions(BaseModel):
    """The output folder a local pipeline writes, and how: shared by `download` and `service`."""

    model_config = ConfigDict(frozen=True)

    output_folder: str = Field("images", description="Where segments, index and metadata go.")
    number_sample_per_shard: int = Field(
        10000,
        ge=1,
        description="Input rows per segment (segments also close by size); also numbers the "
        "rows' img2dataset `key` as its shards do.",
    )
    index_name: str = Field(
        "index.sqlite",
        description="SQLite index file of a new output folder (an existing folder's index is "
        "the one it records in img2dataset.json).",
    )
    segment_max_bytes: int = Field(
        512 * 1024 * 1024, ge=1024, description="Close a segment once it holds this many bytes."
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Serve the run's /metrics, /healthz and /readyz on this port, as the "
        "services do (0: off).",
    )
    metrics_host: str = Field("127.0.0.1", description="Bind address of --metrics_port.")

    def explicit_index_name(self) -> str | None:
        """--index_name when the user gave it: it must then agree with the folder's."""
        return self.index_name if "index_name" in self.model_fields_set else None


class DownloadOptions(UrlListOptions, FolderOptions):
    model_config = ConfigDict(frozen=True)

    incremental_mode: Literal["incremental", "overwrite", "extend"] = Field(
        "incremental",
        description="incremental: skip rows already recorded (resume); overwrite: start over; "
        "extend: fetch every row again, keeping what is stored.",
    )
