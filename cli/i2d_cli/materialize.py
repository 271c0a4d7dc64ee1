"""`img2dataset materialize`: bring a dataset's materialized outputs up to date, or export it.

    img2dataset materialize --output_folder out        # missing sidecars, then the manifests
    img2dataset materialize --output_folder out --export webdataset --dest out_1k \\
        --samples_per_shard 1000 --min_image_size 128 --ids_file keep.txt
    img2dataset materialize --store_url s3://bucket/ds/ --index_url postgresql://... \
        --export files --dest s3://bucket/files/

The dataset is an output folder, or a store and an index (`I2D_STORE_URL`, `I2D_INDEX_URL`...).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Literal

from pydantic import Field

from i2d_cli.dataset import DatasetOptions, existing_index_of, store_of
from i2d_cli.flags import add_model_flags, model_kwargs
from i2d_materializer.export import Exporter, ExportError, ExportFilter, read_ids, root_uri
from i2d_materializer.service import MaterializerService
from i2d_materializer.settings import MaterializerSettings
from i2d_segments.connect import open_store

NAME = "materialize"
HELP = "Write missing metadata/manifests, or export the dataset (files, parquet, webdataset)."


class MaterializeOptions(DatasetOptions):
    export: Literal["webdataset", "files", "parquet"] | None = Field(
        None, description="Export layout; without it, only bring sidecars and manifests up to date."
    )
    dest: str | None = Field(
        None, description="Export destination: a folder or s3://bucket/prefix."
    )
    samples_per_shard: int = Field(10_000, ge=1, description="Rows per exported shard.")
    status: list[str] = Field(
        default_factory=lambda: ["success"],
        description="Statuses exported, e.g. \"['success','failed_to_download']\" (failures "
        "reach only the parquet layout).",
    )
    min_image_size: int = Field(
        0, ge=0, description="Keep rows whose original image's smaller side is at least this."
    )
    ids_file: str | None = Field(
        None, description="Keep only these sample ids or item ids: text (one per line) or parquet."
    )
    ids_column: str | None = Field(None, description="Column of a parquet ids_file.")
    overwrite: bool = Field(False, description="Replace the destination's existing contents.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser, MaterializeOptions)


def run(ns: argparse.Namespace) -> int:
    opts = MaterializeOptions(**model_kwargs(ns, MaterializeOptions))
    store = store_of(opts)
    index = existing_index_of(opts)
    try:
        if opts.export is None:
            service = MaterializerService(
                None, store, index, MaterializerSettings(metrics_port=0, create_topics=False)
            )
            done = service.reconcile()
            total = index.totals().segments
            print(f"materialized {done} segments; manifests rewritten ({total} segments)")
            return 0
        if opts.dest is None:
            raise SystemExit("img2dataset: --export needs --dest")
        selection = ExportFilter(
            statuses=frozenset(opts.status),
            min_image_size=opts.min_image_size,
            ids=None if opts.ids_file is None else read_ids(opts.ids_file, opts.ids_column),
        )
        dest = open_store(opts.dest, s3_endpoint_url=opts.s3_endpoint_url, s3_region=opts.s3_region)
        try:
            report = Exporter(
                store,
                index,
                dest,
                opts.export,
                samples_per_shard=opts.samples_per_shard,
                selection=selection,
                overwrite=opts.overwrite,
            ).run()
        except ExportError as e:
            print(f"img2dataset: {e}", file=sys.stderr)
            return 2
        finally:
            dest.close()
        summary = report.as_dict()
        summary.pop("shards")
        print(json.dumps(summary, sort_keys=True))
        print(f"{len(report.shards)} shards in {root_uri(dest)}")
        return 0
    finally:
        index.close()
        store.close()
