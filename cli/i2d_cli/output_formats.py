"""`img2dataset download --output_format`: img2dataset's layouts, written from the segments.

Where things are (OUT is --output_folder):
- `webdataset` (this tool's default): the dataset itself is OUT: `segments/` (WebDataset tars,
  with img2dataset's parquet and `_stats.json` beside each), `index.sqlite`, `manifests/`.
- `files`, `parquet`, `tfrecord`, `dummy` (img2dataset's default is `files`): OUT holds
  img2dataset's layout of that name, exactly as img2dataset 1.47 names it (`00000/000000000.jpg`,
  `00000.parquet`, `00000_stats.json`...), and nothing else but `_segments/`: the dataset
  (segments, index, manifests), kept apart as img2dataset keeps its own `_tmp`, so the layout
  stays clean. The segments are the truth: the download resumes from them
  (--incremental_mode works as always), then the layout's shards that changed are written again
  from them (i2d_materializer.img2dataset_layout). `dummy` writes only the stats files.
- A folder that already holds a dataset (an earlier run's `index.sqlite`, in OUT or in
  OUT/_segments) keeps it where it is, whatever the format asked for this time: changing
  --output_format never downloads again, it writes the other layout.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from i2d_cli.compat import IMG2DATASET_ARGUMENTS, Img2datasetCompat
from i2d_cli.options import DownloadOptions
from i2d_fetcher.settings import FetcherSettings
from i2d_segments.folder import INNER_FOLDER, FolderError, OutputFolder

if TYPE_CHECKING:
    from i2d_cli.embedded import Summary
    from i2d_materializer.img2dataset_layout import LayoutReport, LayoutSpec

log = logging.getLogger(__name__)


def dataset_folder(output_folder: Path, output_format: str) -> Path:
    """Where the segments and the index of a download into `output_folder` live: where an
    earlier run put them, else where this format keeps them."""
    try:
        return OutputFolder.find(output_folder).path
    except FolderError:
        pass
    return output_folder if output_format == "webdataset" else output_folder / INNER_FOLDER


def layout_spec(opts: DownloadOptions, fetcher: FetcherSettings, output_format: str) -> LayoutSpec:
    from i2d_materializer.img2dataset_layout import LayoutSpec

    additional = list(opts.save_additional_columns or [])
    if fetcher.bbox_col:  # img2dataset adds it to the additional columns
        additional.append(fetcher.bbox_col)
    return LayoutSpec(
        output_format=output_format,
        number_sample_per_shard=opts.number_sample_per_shard,
        oom_shard_count=opts.oom_shard_count,
        encode_format=fetcher.encode_format,
        input_format=opts.input_format,
        caption=opts.caption_col is not None,
        additional_columns=tuple(additional),
        extract_exif=fetcher.extract_exif,
        compute_hash=fetcher.compute_hash,
        verify_hash=None if fetcher.verify_hash is None else tuple(fetcher.verify_hash),  # type: ignore[arg-type]
    )


def img2dataset_arguments(
    opts: DownloadOptions, fetcher: FetcherSettings, compat: Img2datasetCompat
) -> dict[str, Any]:
    """The run's value of each of img2dataset's `download` arguments (W&B's config)."""
    out: dict[str, Any] = {}
    for name in IMG2DATASET_ARGUMENTS:
        for model in (opts, fetcher, compat):
            if name in type(model).model_fields:
                value = getattr(model, name)
                out[name] = list(value) if isinstance(value, tuple) else value
                break
    return out


def run_download(
    opts: DownloadOptions,
    fetcher: FetcherSettings,
    compat: Img2datasetCompat,
    stop: threading.Event | None = None,
) -> Summary:
    """The embedded download into the dataset's folder, logged to W&B when asked, then
    img2dataset's layout when another format than webdataset is asked for."""
    from i2d_cli.embedded import EmbeddedDownload

    out = Path(opts.output_folder)
    folder = dataset_folder(out, compat.output_format)
    inner = opts if folder == out else opts.model_copy(update={"output_folder": str(folder)})
    wandb = None
    if compat.enable_wandb:
        from i2d_cli.wandb_log import WandbLogger

        config = img2dataset_arguments(opts, fetcher, compat)
        wandb = WandbLogger(folder, compat.wandb_project, config).start()
    failed = True
    try:
        summary = EmbeddedDownload(inner, fetcher, stop=stop).run()
        failed = False
    finally:
        if wandb is not None:
            wandb.finish(failed=failed)
    if compat.output_format != "webdataset":
        spec = layout_spec(opts, fetcher, compat.output_format)
        report = write_layout(folder, out, spec)
        log.info(
            "img2dataset %s layout in %s: %d shards (%d written, %d unchanged, %d removed), "
            "%d rows, %d images",
            spec.output_format,
            out,
            report.shards,
            report.written,
            report.unchanged,
            report.removed,
            report.rows,
            report.images,
        )
    return summary


def write_layout(dataset: Path, dest: Path, spec: LayoutSpec) -> LayoutReport:
    """img2dataset's layout of the dataset in `dataset` into `dest`, holding the dataset's
    lock (no download writes to it meanwhile)."""
    from i2d_materializer.img2dataset_layout import STATE_FILE, Img2datasetLayout

    folder = OutputFolder.at(dataset)
    with folder.lock("layout"):
        store = folder.open_store()
        index = folder.open_existing_index()
        try:
            return Img2datasetLayout(store, index, dest, spec, dataset / STATE_FILE).run()
        finally:
            index.close()
            store.close()
