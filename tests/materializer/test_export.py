"""`img2dataset materialize --export`: copies of the dataset in the layout a user asks for
(files, parquet with image bytes, re-sharded WebDataset tars of N samples), filtered by status,
minimum size and an id list; the segments stay untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from i2d_cli.main import main
from i2d_segments.index import SampleRow
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.reader import DatasetReader
from tests.reader.dataset import Dataset
from tests.rows import folder_rows


def samples(dataset: Dataset) -> list[SampleRow]:
    index = SqliteIndex(dataset.folder / "index.sqlite")
    rows = folder_rows(dataset.folder, index)
    try:
        return [s for seg in index.segments() for s in rows.samples_for_segment(seg.segment_id)]
    finally:
        index.close()


def images_by_item(dataset: Dataset) -> dict[str, bytes]:
    with DatasetReader.open(str(dataset.folder)) as ds:
        return {i.item_id: i.image for i in ds}


def export(dataset: Dataset, dest: Path, fmt: str, *args: str) -> int:
    where = ["--output_folder", str(dataset.folder), "--dest", str(dest)]
    return main(["materialize", *where, "--export", fmt, *args])


def segment_files(dataset: Dataset) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (dataset.folder / "segments").rglob("*.tar")}


def test_webdataset_reshard_into_tars_of_n(dataset: Dataset, tmp_path: Path) -> None:
    before = segment_files(dataset)
    dest = tmp_path / "wds"
    assert export(dataset, dest, "webdataset", "--samples_per_shard", "10") == 0
    successes = [s for s in samples(dataset) if s.status == "success"]
    images = images_by_item(dataset)

    tars = sorted(dest.glob("*.tar"))
    assert len(tars) == -(-len(successes) // 10)
    counts = []
    got: dict[str, dict[str, object]] = {}
    for tar in tars:
        shard = list(wds.WebDataset(str(tar), shardshuffle=False))
        counts.append(len(shard))
        for s in shard:
            got[s["__key__"]] = s
        # each shard has img2dataset's metadata parquet of its rows
        assert pq.read_table(tar.with_suffix(".parquet")).num_rows == len(shard)
    assert counts[:-1] == [10] * (len(tars) - 1) and 0 < counts[-1] <= 10
    # One exported sample per successful input row, keyed by its sample_id (the duplicate
    # image is copied for each of its two rows).
    assert sorted(got) == sorted(s.sample_id for s in successes)
    for s in successes:
        exported = got[s.sample_id]
        assert s.item_id is not None and exported["jpg"] == images[s.item_id]
        meta = json.loads(exported["json"])  # type: ignore[arg-type]
        assert meta["url"] == s.url and meta["status"] == "success"
        assert exported["txt"] == (s.caption or "").encode()

    described = json.loads((dest / "export.json").read_text())
    assert described["format"] == "webdataset" and described["samples"] == len(successes)
    assert [x["nsamples"] for x in described["shards"]] == counts
    wids = json.loads((dest / "wids.json").read_text())
    assert wids["wids_version"] == 1
    assert [x["nsamples"] for x in wids["shardlist"]] == counts
    assert all((dest / x["url"]).is_file() for x in wids["shardlist"])
    assert len((dest / "shards.txt").read_text().split()) == len(tars)
    assert segment_files(dataset) == before  # the truth is untouched

    # A destination with content is refused unless asked to overwrite.
    assert export(dataset, dest, "webdataset") == 2
    assert export(dataset, dest, "webdataset", "--overwrite", "True") == 0
    assert len(list(dest.glob("*.tar"))) == 1  # 10000 per shard by default


def test_files_layout(dataset: Dataset, tmp_path: Path) -> None:
    dest = tmp_path / "files"
    assert export(dataset, dest, "files", "--samples_per_shard", "50") == 0
    successes = {s.sample_id: s for s in samples(dataset) if s.status == "success"}
    images = images_by_item(dataset)
    jpgs = sorted(dest.glob("*/*.jpg"))
    assert {p.parent.name for p in jpgs} == {"00000", "00001"}
    assert len(list((dest / "00000").glob("*.jpg"))) == 50
    assert sorted(p.stem for p in jpgs) == sorted(successes)
    for p in jpgs:
        s = successes[p.stem]
        assert s.item_id is not None and p.read_bytes() == images[s.item_id]
        meta = json.loads(p.with_suffix(".json").read_text())
        assert meta["url"] == s.url and meta["key"] == s.attrs.get("key")
        assert p.with_suffix(".txt").read_text() == s.caption
        with Image.open(p) as img:
            assert img.size == (64, 64)
    assert sum(pq.read_table(x).num_rows for x in dest.glob("*.parquet")) == len(successes)


def test_parquet_with_image_bytes_and_failures(dataset: Dataset, tmp_path: Path) -> None:
    dest = tmp_path / "pq"
    statuses = "['success','failed_to_download','failed_to_resize']"
    assert export(dataset, dest, "parquet", "--status", statuses) == 0
    rows = [r for p in sorted(dest.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    every = samples(dataset)
    assert sorted(r["sample_id"] for r in rows) == sorted(s.sample_id for s in every)
    images = images_by_item(dataset)
    for r in rows:
        if r["status"] == "success":
            assert r["image"] == images[r["item_id"]] and r["ext"] == "jpg"
            assert r["width"] == 64
        else:
            assert r["image"] is None and r["error_message"]
    assert sum(r["status"] != "success" for r in rows) == 14


@pytest.mark.parametrize("min_size", [70, 80])
def test_min_image_size_filter(dataset: Dataset, tmp_path: Path, min_size: int) -> None:
    dest = tmp_path / "big"
    assert export(dataset, dest, "parquet", "--min_image_size", str(min_size)) == 0
    rows = pq.read_table(next(dest.glob("*.parquet"))).to_pylist()
    expected = [
        s.sample_id
        for s in samples(dataset)
        if s.status == "success"
        and min(s.attrs["original_width"], s.attrs["original_height"]) >= min_size
    ]
    assert 0 < len(expected) < 78
    assert sorted(r["sample_id"] for r in rows) == sorted(expected)
    assert all(min(r["original_width"], r["original_height"]) >= min_size for r in rows)


def test_subset_by_an_id_list(dataset: Dataset, tmp_path: Path) -> None:
    successes = [s for s in samples(dataset) if s.status == "success"]
    by_sample = [s.sample_id for s in successes[:5]]
    by_item = successes[-1]
    ids = tmp_path / "keep.txt"
    ids.write_text("\n".join([*by_sample, "", str(by_item.item_id), "unknown-id"]) + "\n")
    dest = tmp_path / "subset"
    assert export(dataset, dest, "webdataset", "--ids_file", str(ids)) == 0
    keys = [s["__key__"] for s in wds.WebDataset(str(dest / "00000.tar"), shardshuffle=False)]
    # An item id selects every row whose image it is.
    same_image = [s.sample_id for s in successes if s.item_id == by_item.item_id]
    assert sorted(keys) == sorted({*by_sample, *same_image})

    # The same list as a parquet column (DataComp's resharder takes parquet id lists).
    pq.write_table(pa.table({"uid": by_sample}), tmp_path / "keep.parquet")
    dest2 = tmp_path / "subset2"
    assert (
        export(
            dataset,
            dest2,
            "files",
            "--ids_file",
            str(tmp_path / "keep.parquet"),
            "--ids_column",
            "uid",
        )
        == 0
    )
    assert sorted(p.stem for p in dest2.glob("*/*.jpg")) == sorted(by_sample)
    report = json.loads((dest2 / "export.json").read_text())
    assert report["samples"] == 5 and report["filter"]["ids"] == 5
