"""A small real dataset for the reader, materializer and status tests: `img2dataset download`
of a jsonl list from the local image server (captions, keys, an extra column, failures of
several kinds, and two urls serving the same bytes), in segments of 25 rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from i2d_cli.main import main
from i2d_imageserver import ImageServer

ROWS_PER_SEGMENT = 25
# Row n's fault, if any: a 404 every 11th row, an HTML page served as an image every 13th.
FAULT_EVERY = {"missing": 11, "notimage": 13}


@dataclass(frozen=True)
class Dataset:
    folder: Path
    rows: list[dict[str, str]]  # the input rows, as written to the jsonl list
    duplicate_urls: tuple[str, str]  # two urls whose bytes are the same image


def build_dataset(
    images: ImageServer, folder: Path, count: int = 90, *, progress: bool = False
) -> Dataset:
    urls = []
    for n in range(count):
        # Small images of varied sizes: the tests are about layout and bookkeeping, not pixels.
        size = (80 + 7 * (n % 9), 60 + 5 * (n % 7))
        fault = next((k for k, every in FAULT_EVERY.items() if n % every == every - 1), None)
        urls.append(images.url_for(1000 + n, *size, fault=fault))
    direct = images.url_for(424242, 300, 200)
    redirected = images.url_for(424242, 300, 200, fault="redirect")
    urls += [direct, redirected]
    rows = []
    for n, url in enumerate(urls):
        row = {"url": url, "caption": f"picture number {n}", "license": f"cc-{n % 3}"}
        if n % 2 == 0:
            row["key"] = f"k{n:06d}"
        rows.append(row)
    folder.mkdir(parents=True, exist_ok=True)
    url_list = folder.parent / f"{folder.name}-urls.jsonl"
    url_list.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = main(
        [
            "download",
            "--url_list",
            str(url_list),
            "--input_format",
            "jsonl",
            "--caption_col",
            "caption",
            "--save_additional_columns",
            "['license']",
            "--output_folder",
            str(folder),
            "--number_sample_per_shard",
            str(ROWS_PER_SEGMENT),
            "--image_size",
            "64",
            "--processes_count",
            "1",
            "--thread_count",
            "16",
            "--progress",
            str(progress),
            "--allowed_networks",
            "127.0.0.1/32",  # the local image server
        ]
    )
    assert rc == 0
    return Dataset(folder, rows, (direct, redirected))
