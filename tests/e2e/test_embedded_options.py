"""img2dataset's options through the embedded download as a user types them: input columns,
hashes, filters, blurring and re-encoding reach each sample's `.json` member and the metadata
parquet with img2dataset's column names; incremental modes and shard sizes do what they say."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from i2d_cli.main import main
from i2d_imageserver import ImageServer
from i2d_segments.index.sqlite import SqliteIndex
from tests.img2dataset_columns import METADATA_COLUMNS

# The fetcher refuses non-public addresses unless allowed; the image server is on 127.0.0.1.
LOCAL = ["--allowed_networks=127.0.0.1/32"]


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


def original(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as r:
        return bytes(r.read())


def download(*flags: str) -> int:
    return main([*flags, "--processes_count=1", "--thread_count=8", "--progress=False", *LOCAL])


def parquet_rows(out: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted((out / "segments").rglob("*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows


def tar_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """Every stored sample of every segment, by key: member suffix -> bytes."""
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted((out / "segments").rglob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                f = tar.extractfile(m)
                if f is not None and not key.startswith("__"):
                    samples.setdefault(key, {})[ext] = f.read()
    return samples


def test_columns_options_and_failures_reach_json_and_parquet(
    images: ImageServer, tmp_path: Path
) -> None:
    good = [images.url_for(seed, 320, 240) for seed in range(500, 506)]
    exif_url = images.url_for(506, 400, 300, fault="exif")
    small = images.url_for(507, 40, 40)
    bad_hash = images.url_for(508, 320, 240)
    missing = images.url_for(509, 320, 240, fault="missing")
    html = images.url_for(510, 320, 240, fault="notimage")
    blurred = images.url_for(511, 320, 240)
    bodies = {u: original(u) for u in [*good, exif_url, small, bad_hash, html, blurred]}
    rows = []
    for i, url in enumerate([*good, exif_url, small, bad_hash, missing, html, blurred]):
        md5 = hashlib.md5(bodies[url]).hexdigest() if url in bodies else "0" * 32
        rows.append(
            {
                "link": url,
                "text": f"caption {i}",
                "license": f"cc-{i}",
                "md5": "f" * 32 if url == bad_hash else md5,
                "faces": "[[0.2, 0.2, 0.8, 0.8]]" if url == blurred else "",
            }
        )
    url_list = tmp_path / "list.csv"
    with url_list.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out"
    rc = download(
        f"--url_list={url_list}",
        f"--output_folder={out}",
        "--input_format=csv",
        "--url_col=link",
        "--caption_col=text",
        "--save_additional_columns=[license]",
        "--bbox_col=faces",
        "--verify_hash",
        '["md5","md5"]',
        "--compute_hash=sha512",
        "--min_image_size=50",
        "--resize_mode=center_crop",
        "--image_size=64",
        "--number_sample_per_shard=5",
    )
    assert rc == 0
    by_url = {r["url"]: r for r in parquet_rows(out)}
    assert len(by_url) == len(rows) == 12
    index = SqliteIndex(out / "index.sqlite")
    try:
        assert len(index.segments()) == 3  # 12 rows, 5 per segment
    finally:
        index.close()

    columns = set(next(iter(by_url.values())))
    assert {*METADATA_COLUMNS, "sha512", "license", "md5", "faces"} <= columns
    assert "sha256" not in columns and "link" not in columns and "text" not in columns

    samples = tar_samples(out)
    stored = {json.loads(s["json"])["url"]: (key, s) for key, s in samples.items()}
    for url in [*good, exif_url, blurred]:
        row = by_url[url]
        src = Image.open(io.BytesIO(bodies[url]))
        assert row["status"] == "success" and row["error_message"] is None
        assert row["caption"] == rows[[r["link"] for r in rows].index(url)]["text"]
        assert (row["width"], row["height"]) == (64, 64)
        assert (row["original_width"], row["original_height"]) == src.size
        assert row["sha512"] == hashlib.sha512(bodies[url]).hexdigest()
        assert row["license"].startswith("cc-")
        key, sample = stored[url]
        # The tar key is the item_id: the original's sha256, with the boxes for a blurred one.
        assert (key == hashlib.sha256(bodies[url]).hexdigest()) is (url != blurred)
        member = json.loads(sample["json"])
        for name in [*METADATA_COLUMNS, "sha512", "license", "md5", "faces"]:
            assert member[name] == row[name], name
        assert sample["txt"].decode() == row["caption"]
        assert Image.open(io.BytesIO(sample["jpg"])).size == (64, 64)
    assert json.loads(by_url[exif_url]["exif"])["Image Make"] == "I2DCam"
    assert by_url[good[0]]["exif"] == "{}"
    assert json.loads(by_url[blurred]["faces"]) == [[0.2, 0.2, 0.8, 0.8]]

    failures = {
        small: ("failed_to_resize", "image too small"),
        bad_hash: ("failed_to_download", "hash mismatch"),
        missing: ("failed_to_download", "HTTP Error 404: Not Found"),
        html: ("failed_to_resize", "not an image: unrecognized format"),
    }
    for url, (status, error) in failures.items():
        row = by_url[url]
        assert (row["status"], row["error_message"]) == (status, error)
        assert row["width"] is None and row["sha512"] is None
        assert row["license"].startswith("cc-")  # failures keep their input columns
    assert len(samples) == len(good) + 2  # failures have a parquet row and no files


def test_blurring_changes_only_the_rows_with_boxes(images: ImageServer, tmp_path: Path) -> None:
    plain_url, boxed_url = images.url_for(521, 400, 400), images.url_for(522, 400, 400)
    # The plain image's bytes again (a redirect to it), this time with boxes: blurred, it is
    # another item, and neither copy may stand for the other.
    twin_url = images.url_for(521, 400, 400, fault="redirect")
    boxes = [[0.3, 0.3, 0.7, 0.7]]
    rows = [
        {"url": plain_url, "faces": None},
        {"url": boxed_url, "faces": boxes},
        {"url": twin_url, "faces": boxes},
    ]
    url_list = tmp_path / "list.jsonl"  # boxes as JSON lists, as on the urls topic
    url_list.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    rc = download(
        f"--url_list={url_list}",
        f"--output_folder={out}",
        "--input_format=jsonl",
        "--bbox_col=faces",
        "--encode_format=png",
        "--resize_mode=no",
    )
    assert rc == 0
    samples = tar_samples(out)
    by_url = {json.loads(s["json"])["url"]: s for s in samples.values()}
    assert len(samples) == 3 and set(by_url) == {plain_url, boxed_url, twin_url}
    for url, blurred in ((plain_url, False), (boxed_url, True), (twin_url, True)):
        body = original(url)
        meta = json.loads(by_url[url]["json"])
        assert meta["sha256"] == hashlib.sha256(body).hexdigest()  # the original's hash
        src = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.int32)
        png = by_url[url]["png"]
        out_px = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32)
        inside = np.abs(src[150:250, 150:250] - out_px[150:250, 150:250]).mean()
        assert bool(inside > 1) is blurred
        assert (src[:60] == out_px[:60]).all()  # far from the (grown) box: untouched


def test_reencoding_options_store_the_original_bytes(images: ImageServer, tmp_path: Path) -> None:
    urls = [images.url_for(530, 300, 200), images.url_for(531, 300, 200, ext="png")]
    url_list = tmp_path / "urls.txt"
    url_list.write_text("\n".join(urls) + "\n")
    raw = tmp_path / "raw"
    assert (
        download(f"--url_list={url_list}", f"--output_folder={raw}", "--disable_all_reencoding")
        == 0
    )
    samples = tar_samples(raw)
    jpg, png = (samples[hashlib.sha256(original(u)).hexdigest()] for u in urls)
    assert jpg["jpg"] == original(urls[0])
    assert png["png"] == original(urls[1])  # the member is named after the real format
    for row in parquet_rows(raw):
        assert row["status"] == "success"
        assert [row[c] for c in ("width", "height", "original_width", "original_height")] == [
            None
        ] * 4

    skip = tmp_path / "skip"
    rc = download(
        f"--url_list={url_list}",
        f"--output_folder={skip}",
        "--skip_reencode=True",
        "--resize_mode=no",
    )
    assert rc == 0
    samples = tar_samples(skip)
    jpg, png = (samples[hashlib.sha256(original(u)).hexdigest()] for u in urls)
    assert jpg["jpg"] == original(urls[0])  # already jpg, not resized: kept as downloaded
    assert Image.open(io.BytesIO(png["jpg"])).format == "JPEG"  # png -> encoded to jpg
    assert {(r["width"], r["height"]) for r in parquet_rows(skip)} == {(300, 200)}


def test_incremental_modes(images: ImageServer, tmp_path: Path) -> None:
    urls = [images.url_for(seed, 200, 150) for seed in range(540, 546)]
    url_list = tmp_path / "urls.txt"
    url_list.write_text("\n".join(urls[:4]) + "\n")
    out = tmp_path / "out"
    flags = (f"--url_list={url_list}", f"--output_folder={out}", "--number_sample_per_shard=2")

    def hits() -> list[int]:
        return [images.hits(u) for u in urls]

    def segments() -> int:
        index = SqliteIndex(out / "index.sqlite")
        try:
            return len(index.segments())
        finally:
            index.close()

    assert download(*flags) == 0
    assert hits() == [1, 1, 1, 1, 0, 0]
    assert segments() == 2

    url_list.write_text("\n".join(urls) + "\n")
    assert download(*flags) == 0  # incremental (the default): only the new rows
    assert hits() == [1, 1, 1, 1, 1, 1]
    assert segments() == 3
    assert len(parquet_rows(out)) == 6

    assert download(*flags, "--incremental_mode=extend") == 0  # every row again, kept
    assert hits() == [2] * 6
    assert segments() == 6
    assert len(tar_samples(out)) == 6  # the items were already stored: not stored twice

    url_list.write_text(urls[0] + "\n")
    assert download(*flags, "--incremental_mode=overwrite") == 0  # start over
    assert hits()[0] == 3
    assert segments() == 1
    assert [r["url"] for r in parquet_rows(out)] == [urls[0]]
