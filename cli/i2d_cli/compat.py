"""img2dataset's download flags that choose among its own machinery, accepted so its command
lines run unchanged. Each takes the one value that describes what happens here; any other
value is a clear error that says what to use instead, never silently ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Img2datasetCompat(BaseModel):
    model_config = ConfigDict(frozen=True)

    output_format: str = Field(
        "webdataset",
        description="Always webdataset: segments are WebDataset tars with img2dataset's "
        "parquet and stats next to each; other layouts come from `img2dataset materialize "
        "--export files|parquet|webdataset`.",
    )
    distributor: str = Field(
        "multiprocessing",
        description="Always multiprocessing on one machine; the distributed mode is "
        "`img2dataset serve` over Kafka.",
    )
    enable_wandb: bool = Field(
        False,
        description="Always False: figures are on /metrics, in `img2dataset status` and the "
        "Grafana dashboard.",
    )
    wandb_project: str = Field("img2dataset", description="Unused (no wandb).")
    subjob_size: int = Field(
        1000, ge=1, description="Unused (img2dataset's pyspark distributor only)."
    )
    max_shard_retry: int = Field(
        1,
        ge=0,
        description="Unused: no shard fails as a whole here (a row fails alone; --retries "
        "retries it) and running the command again resumes.",
    )

    @field_validator("output_format")
    @classmethod
    def _webdataset(cls, value: str) -> str:
        if value != "webdataset":
            raise ValueError(
                f"output_format {value!r} is not written by download: it always writes "
                "WebDataset segments; run `img2dataset materialize --output_folder OUT "
                f"--export {value} --dest DIR` afterwards for that layout"
                if value in ("files", "parquet")
                else f"output_format {value!r}: only webdataset (see materialize --export)"
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
    def _no_wandb(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "enable_wandb: wandb is not supported; every figure is on /metrics "
                "(Prometheus), in `img2dataset status` and the Grafana dashboard"
            )
        return value
