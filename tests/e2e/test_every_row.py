"""Every input row is a sample (docs/architecture.md, "Identities"): a COCO-style list (one
image, several captions) keeps every row, with its own caption, in the index, the metadata, the
reader and a per-sample export, while each image is stored once; rows are identified by their
place in their list, so a rerun is idempotent, a changed list adds rows, two lists never collide and
img2dataset's `key` column stays unique in the dataset; `--retry_failed` fetches failed rows
again."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from i2d_cli.main import main
from i2d_imageserver import ImageServer, make_url_list
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.reader import DatasetReader
from tests.rows import folder_rows


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["url", "caption"])
        w.writerows(rows)


def download(url_list: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "download",
            f"--url_list={url_list}",
            f"--output_folder={out}",
            "--input_format=csv",
            "--caption_col=caption",
            "--number_sample_per_shard=25",
            "--processes_count=1",
            "--progress=False",
            "--allowed_networks=127.0.0.1/32",
            *extra,
        ]
    )


def all_samples(out: Path) -> list[dict[str, object]]:
    index = SqliteIndex(out / "index.sqlite")
    try:
        return [
            {"sample_id": s.sample_id, "url": s.url, "caption": s.caption, "status": s.status,
             "error": s.error, "item_id": s.item_id, "key": s.attrs.get("key")}
            for seg in index.segments()
            for s in folder_rows(out, index).samples_for_segment(seg.segment_id)
        ]  # fmt: skip
    finally:
        index.close()


def parquet_rows(out: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for path in sorted((out / "segments").rglob("*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows


def coco(images: ImageServer, n_urls: int = 20, captions: int = 3) -> list[tuple[str, str]]:
    urls = make_url_list(images.base_url, n_urls, seed=11)
    return [(u, f"caption {c} of image {i}") for i, u in enumerate(urls) for c in range(captions)]


def test_a_coco_list_keeps_every_row_and_stores_each_image_once(
    images: ImageServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = coco(images)
    write_csv(tmp_path / "coco.csv", rows)
    out = tmp_path / "out"
    assert download(tmp_path / "coco.csv", out) == 0
    assert "success=60" in capsys.readouterr().out

    samples = all_samples(out)
    assert len(samples) == 60 and {s["status"] for s in samples} == {"success"}
    assert sorted((s["url"], s["caption"]) for s in samples) == sorted(rows)
    assert len({s["item_id"] for s in samples}) == 20
    index = SqliteIndex(out / "index.sqlite")
    try:
        assert sum(seg.item_count for seg in index.segments()) == 20  # each image stored once
        assert index.status_counts() == {"success": 60}
    finally:
        index.close()
    keys = [s["key"] for s in samples]
    assert len(set(keys)) == 60  # img2dataset's key: one per row

    table = parquet_rows(out)
    assert sorted((r["url"], r["caption"]) for r in table) == sorted(rows)

    with DatasetReader.open(str(out)) as ds:
        pairs = [(it.url, it.caption, it.image[:2]) for it in ds.iter_samples()]
        assert sum(1 for _ in ds.iter_items()) == 20
    assert sorted((u, c) for u, c, _ in pairs) == sorted(rows)
    assert {head for _, _, head in pairs} == {b"\xff\xd8"}

    dest = tmp_path / "export"
    rc = main(["materialize", "--output_folder", str(out), "--dest", str(dest),
               "--export", "webdataset"])  # fmt: skip
    assert rc == 0
    exported = [
        (json.loads(s["json"])["url"], s["txt"].decode())
        for tar in sorted(dest.rglob("*.tar"))
        for s in wds.WebDataset(str(tar), shardshuffle=False)
    ]
    assert sorted(exported) == sorted(rows)  # one tar sample per input row

    # The same list again: the same samples, every row skipped.
    assert download(tmp_path / "coco.csv", out) == 0
    assert "60 rows skipped" in capsys.readouterr().out
    again = all_samples(out)
    assert sorted(map(str, again)) == sorted(map(str, samples))

    # A changed list: a caption changed in place and a row added are new rows, the others
    # are the same samples; no row takes another's identity or key.
    changed = [*rows, (rows[0][0], "a new caption")]
    changed[1] = (rows[1][0], "an edited caption")
    write_csv(tmp_path / "coco.csv", changed)
    assert download(tmp_path / "coco.csv", out) == 0
    printed = capsys.readouterr().out
    assert "2 rows fetched" in printed and "59 rows skipped" in printed
    after = all_samples(out)
    assert len(after) == 62
    assert {(r[0], r[1]) for r in changed} <= {(s["url"], s["caption"]) for s in after}
    assert len({s["key"] for s in after}) == 62
    index = SqliteIndex(out / "index.sqlite")
    try:
        assert sum(seg.item_count for seg in index.segments()) == 20
    finally:
        index.close()


def test_two_lists_into_one_folder_share_no_sample_and_no_key(
    images: ImageServer, tmp_path: Path
) -> None:
    urls = make_url_list(images.base_url, 250, seed=12)
    # The same urls in two lists (another caption each): two lists, two samples per url.
    write_csv(tmp_path / "a.csv", [(u, "a") for u in urls])
    write_csv(tmp_path / "b.csv", [(u, "b") for u in urls])
    out = tmp_path / "out"
    assert download(tmp_path / "a.csv", out) == 0
    assert download(tmp_path / "b.csv", out) == 0
    samples = all_samples(out)
    assert len(samples) == 500
    keys = Counter(s["key"] for s in samples)
    assert [k for k, n in keys.items() if n > 1] == []
    assert len(parquet_rows(out)) == 500


def test_retry_failed_fetches_again_the_rows_whose_failure_may_not_last(
    images: ImageServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = images.base_url.rstrip("/")
    good = make_url_list(images.base_url, 5, seed=13)
    flaky = [u.replace(f"{base}/img/", f"{base}/fault/flaky/") for u in
             make_url_list(images.base_url, 4, seed=14)]  # fmt: skip
    missing = [u.replace(f"{base}/img/", f"{base}/fault/missing/") for u in
               make_url_list(images.base_url, 2, seed=15)]  # fmt: skip
    rows = [(u, "c") for u in good + flaky + missing]
    write_csv(tmp_path / "urls.csv", rows)
    out = tmp_path / "out"
    assert download(tmp_path / "urls.csv", out) == 0
    first = {s["url"]: s for s in all_samples(out)}
    assert [first[u]["status"] for u in flaky] == ["failed_to_download"] * 4
    assert all("503" in str(first[u]["error"]) for u in flaky)
    capsys.readouterr()

    # By default (img2dataset's behaviour) a rerun retries nothing.
    assert download(tmp_path / "urls.csv", out) == 0
    assert "0 rows fetched" in capsys.readouterr().out

    # transient: the 503s again (the server healed), not the 404s.
    assert download(tmp_path / "urls.csv", out, "--retry_failed=transient") == 0
    assert "4 rows fetched" in capsys.readouterr().out
    second = {s["url"]: s for s in all_samples(out)}
    assert len(second) == 11  # each retried row is still one sample, with its latest outcome
    assert [second[u]["status"] for u in flaky] == ["success"] * 4
    assert [second[u]["status"] for u in missing] == ["failed_to_download"] * 2
    assert {u: s["sample_id"] for u, s in second.items()} == {
        u: s["sample_id"] for u, s in first.items()
    }
    assert len(parquet_rows(out)) == 11  # a moved row is listed by one segment only

    # all: every failed row again (the 404s still fail).
    assert download(tmp_path / "urls.csv", out, "--retry_failed=all") == 0
    assert "2 rows fetched" in capsys.readouterr().out
    assert len(all_samples(out)) == 11
