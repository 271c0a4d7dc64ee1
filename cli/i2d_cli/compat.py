"""img2dataset's download flags that choose among its own machinery, accepted so its command
lines run unchanged: `--output_format` (each of its layouts), `--enable_wandb` (its figures on
Weights & Biases), and the ones that take the one value describing what happens here; any
other value is a clear error that says what to use instead, never silently ignored."""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# img2dataset 1.47's `download(...)` arguments, in its order: its Python API (the `img2dataset`
# package here) takes exactly these, and --enable_wandb logs their values as the run's config.
IMG2DATASET_ARGUMENTS = (
    "url_list", "image_size", "output_folder", "processes_count", "resize_mode",
    "resize_only_if_bigger", "upscale_interpolation", "downscale_interpolation",
    "encode_quality", "encode_format", "skip_reencode", "output_format", "input_format",
    "url_col", "caption_col", "bbox_col", "thread_count", "number_sample_per_shard",
    "extract_exif", "save_additional_columns", "timeout", "enable_wandb", "wandb_project",
    "oom_shard_count", "compute_hash", "verify_hash", "distributor", "subjob_size", "retries",
    "disable_all_reencoding", "min_image_size", "max_image_area", "max_aspect_ratio",
    "incremental_mode", "max_shard_retry", "user_agent_token", "disallowed_header_directives",
)  # fmt: skip

OutputFormat = Literal["webdataset", "files", "parquet", "tfrecord", "dummy"]
OUTPUT_FORMATS: tuple[str, ...] = ("webdataset", "files", "parquet", "tfrecord", "dummy")
WANDB_INSTALL = "pip install wandb (or the extra: pip install 'img2dataset-segments[wandb]')"


def wandb_installed() -> bool:
    try:
        return importlib.util.find_spec("wandb") is not None
    except (ImportError, ValueError):  # a broken install, a module without a spec
        return False


class Img2datasetCompat(BaseModel):
    model_config = ConfigDict(frozen=True)

    output_format: OutputFormat = Field(
        "webdataset",
        description="webdataset: the WebDataset segments themselves, in the output folder. "
        "files, parquet, tfrecord, dummy: img2dataset's layout of that name in the output "
        "folder, written from the segments (kept in OUTPUT_FOLDER/_segments) after the "
        "download; a rerun resumes and rewrites only the shards that changed.",
    )
    distributor: str = Field(
        "multiprocessing",
        description="Always multiprocessing on one machine; the distributed mode is "
        "`img2dataset serve` over Kafka.",
    )
    enable_wandb: bool = Field(
        False,
        description="Log img2dataset's figures (per-shard and total speeds, success and "
        "failure ratios, counts, the status table) to Weights & Biases; needs wandb "
        "(pip install 'img2dataset-segments[wandb]').",
    )
    wandb_project: str = Field("img2dataset", description="W&B project of --enable_wandb.")
    subjob_size: int = Field(
        1000, ge=1, description="Unused (img2dataset's pyspark distributor only)."
    )
    max_shard_retry: int = Field(
        1,
        ge=0,
        description="Unused: no shard fails as a whole here (a row fails alone; --retries "
        "retries it) and running the command again resumes.",
    )

    @field_validator("output_format", mode="before")
    @classmethod
    def _known_format(cls, value: object) -> object:
        if value not in OUTPUT_FORMATS:
            raise ValueError(
                f"output_format {value!r}: one of {', '.join(OUTPUT_FORMATS)} (img2dataset's)"
            )
        return value

    @field_validator("distributor")
    @classmethod
    def _one_machine(cls, value: str) -> str:
        if value != "multiprocessing":
            raise ValueError(
                f"distributor {value!r}: to spread a download over machines, run the "
                "services (`img2dataset serve fetcher|appender|materializer`) over Kafka"
            )
        return value

    @field_validator("enable_wandb")
    @classmethod
    def _wandb_installed(cls, value: bool) -> bool:
        if value and not wandb_installed():
            raise ValueError(f"wandb is not installed: {WANDB_INSTALL}")
        return value
