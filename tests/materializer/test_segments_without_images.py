"""A segment without an image (every row failed, or every row moved on) is in no shard list,
so Hugging Face `datasets` loads the dataset even when such a segment comes first (it infers
the columns from the first shard listed and fails on an empty one), and every image stays
reachable: a segment whose rows all moved to a newer segment keeps the images it wrote, and
stays listed. The same list everywhere a reader finds segments: `shards.txt`, its brace form,
`wids.json`, the reader API (with the index or from `wids.json` alone), `ItemIterable`'s
split, and the shards of `materialize --export webdataset`."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import datasets
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image

from i2d_cli.main import main
from i2d_segments.index import SegmentMove, SegmentRow
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.naming import object_name_of
from i2d_segments.reader import DatasetReader, ItemIterable
from i2d_segments.records import AppendRecord
from i2d_segments.store.local import LocalStore
from tests.append_records import failure, success
from tests.ops.helpers import Pipeline, run_until
from tests.reader.wids_compat import import_wids
from tests.rows import folder_rows

PER_SEGMENT = 5  # the ops pipeline's number_sample_per_shard


def size_of(n: int) -> tuple[int, int]:
    return 16 + n, 12


def photo(n: int) -> AppendRecord:
    """Row `n` (sample `s{n}`) as a success whose stored image is a real JPEG."""
    buf = io.BytesIO()
    Image.new("RGB", size_of(n), (20 * n % 256, 80, 160)).save(buf, "JPEG")
    return AppendRecord(meta=success(n).meta, payload=buf.getvalue())


def failed(n: int) -> AppendRecord:
    """Row `n` (sample `s{n}`, as `photo(n)`) as a failure: a 404."""
    return failure(n, sample_id=f"s{n}")


def materialize(folder: Path) -> None:
    assert main(["materialize", "--output_folder", str(folder)]) == 0


def shards_txt(folder: Path) -> list[str]:
    return (folder / "manifests" / "shards.txt").read_text().splitlines()


def hf_load(urls: list[str], cache: Path) -> datasets.Dataset:
    """What the issue did: `load_dataset("webdataset", data_files=...)` over a shard list."""
    ds = datasets.load_dataset(
        "webdataset", data_files={"train": urls}, split="train", cache_dir=str(cache)
    )
    assert isinstance(ds, datasets.Dataset)
    return ds


def check_hf_rows(ds: datasets.Dataset, photos: list[int]) -> None:
    """One row per stored image, decoded, with the metadata and caption of its row."""
    assert ds.num_rows == len(photos)
    by_url = {r["json"]["url"]: r for r in ds}
    assert sorted(by_url) == sorted(success(n).meta.url for n in photos)
    for n in photos:
        row = by_url[success(n).meta.url]
        assert row["jpg"].size == size_of(n)  # an Image feature: decoded by Pillow
        assert row["txt"] == f"caption {n}"
        assert row["__key__"] == success(n).meta.item_id


def check_lists(folder: Path, listed: list[SegmentRow]) -> list[str]:
    """The manifests name exactly `listed`, each in every form; the reader agrees."""
    store = LocalStore(folder)
    urls = [store.uri(object_name_of(s.segment_id)) for s in listed]
    assert shards_txt(folder) == urls
    brace = (folder / "manifests" / "shards_brace.txt").read_text().strip()
    assert list(braceexpand(brace)) == urls
    wids = json.loads((folder / "manifests" / "wids.json").read_text())
    assert [(s["url"], s["nsamples"], s["segment_id"]) for s in wids["shardlist"]] == [
        (f"../{object_name_of(s.segment_id)}", s.item_count, s.segment_id) for s in listed
    ]
    assert all(s.item_count > 0 for s in listed)
    ids = [s.segment_id for s in listed]
    with DatasetReader.open(str(folder)) as ds:  # with the folder's index
        assert ds.index is not None
        assert ds.segment_ids() == ids and ds.shard_urls() == urls
    bucket_only = DatasetReader(store)  # no index: wids.json says which segments exist
    assert bucket_only.segment_ids() == ids and bucket_only.shard_urls() == urls
    return urls


def wds_keys(urls: list[str]) -> list[str]:
    return [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)]


def test_segments_without_images_are_in_no_shard_list_and_every_image_loads(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    index = SqliteIndex.open(folder / "index.sqlite")
    try:
        p = Pipeline(LocalStore(folder), index)
        appender = p.appender("appender")

        # The issue: the first segment holds failures only, the second images.
        p.send([failed(n) for n in range(PER_SEGMENT)])
        p.send([photo(n) for n in range(10, 10 + PER_SEGMENT)])
        run_until(appender, lambda: len(index.segments()) == 2)
        empty, images = index.segments()
        assert (empty.item_count, images.item_count) == (0, PER_SEGMENT)
        materialize(folder)
        urls = check_lists(folder, [images])
        check_hf_rows(hf_load(urls, tmp_path / "hf1"), list(range(10, 15)))
        summary = json.loads((folder / "manifests" / "summary.json").read_text())
        assert (summary["segments"], summary["shard_count"]) == (2, 1)
        assert summary["status_counts"] == {"failed_to_download": 5, "success": 5}

        # The export: its first rows have no image (failures asked for, not written to a tar),
        # yet no shard is empty, and its lists load too.
        dest = tmp_path / "export"
        args = ["--export", "webdataset", "--dest", str(dest), "--samples_per_shard", "2"]
        statuses = ["--status", "['success','failed_to_download']"]
        assert main(["materialize", "--output_folder", str(folder), *args, *statuses]) == 0
        exported = (dest / "shards.txt").read_text().splitlines()
        counts = [len(wds_keys([u])) for u in exported]
        assert counts == [2, 2, 1]
        wids = json.loads((dest / "wids.json").read_text())
        assert [s["nsamples"] for s in wids["shardlist"]] == counts
        ds = hf_load(exported, tmp_path / "hf-export")
        assert sorted(ds["__key__"]) == sorted(f"s{n}" for n in range(10, 15))

        # Rows delivered again with another outcome move to the newer segment: the failed
        # rows of the first segment succeed now (a third segment, of images), the successes
        # of the second fail now (a fourth, of failures only). The second segment keeps the
        # only copy of its images although it holds no row any more: it stays listed.
        p.send([photo(n) for n in range(PER_SEGMENT)])
        p.send([failed(n) for n in range(10, 10 + PER_SEGMENT)])
        run_until(appender, lambda: len(index.segments()) == 4)
        segments = index.segments()
        assert segments[:2] == [empty, images]
        later_images, later_failures = segments[2:]
        assert index.moves_into(later_images.segment_id) == [
            SegmentMove(later_images.segment_id, empty.segment_id, PER_SEGMENT)
        ]
        assert index.moves_into(later_failures.segment_id) == [
            SegmentMove(later_failures.segment_id, images.segment_id, PER_SEGMENT)
        ]
        rows = folder_rows(folder, index)
        assert rows.samples_for_segment(images.segment_id) == []
        assert len(rows.items_for_segment(images.segment_id)) == PER_SEGMENT
        assert later_failures.item_count == 0
        every_item = {i.item_id for s in segments for i in rows.items_for_segment(s.segment_id)}
    finally:
        index.close()

    materialize(folder)
    listed = [images, later_images]
    urls = check_lists(folder, listed)
    photos = [*range(PER_SEGMENT), *range(10, 10 + PER_SEGMENT)]
    ds = hf_load(urls, tmp_path / "hf2")
    check_hf_rows(ds, photos)
    assert set(ds["__key__"]) == every_item  # every image reachable from the list
    assert sorted(wds_keys(urls)) == sorted(every_item)
    summary = json.loads((folder / "manifests" / "summary.json").read_text())
    assert (summary["segments"], summary["shard_count"], summary["items"]) == (4, 2, 10)

    widsmod = import_wids()
    indexed = widsmod.ShardListDataset(
        str(folder / "manifests" / "wids.json"),
        cache_dir=str(tmp_path / "wids"),
        transformations=[],
    )
    assert len(indexed) == len(every_item)
    assert {indexed[n]["__key__"] for n in range(len(indexed))} == every_item

    # The reader's sequential read and its split across consumers: images only, one listed
    # segment per consumer (no rank or worker handed an empty segment).
    with DatasetReader.open(str(folder)) as reader:
        assert {i.item_id for i in reader} == every_item
    halves: list[list[str]] = [
        ItemIterable(str(folder), rank=r, world_size=2, load_images=False).segments_for()
        for r in range(2)
    ]
    assert halves == [[images.segment_id], [later_images.segment_id]]


def test_a_wids_manifest_that_lists_empty_segments_is_read_without_them(
    tmp_path: Path,
) -> None:
    """A `wids.json` written before empty segments were left out names them with nsamples 0:
    a reader with bucket access only skips them as the index-backed reader does."""
    folder = tmp_path / "out"
    folder.mkdir()
    index = SqliteIndex.open(folder / "index.sqlite")
    try:
        p = Pipeline(LocalStore(folder), index)
        appender = p.appender("appender")
        p.send([failed(n) for n in range(PER_SEGMENT)])
        p.send([photo(n) for n in range(10, 10 + PER_SEGMENT)])
        run_until(appender, lambda: len(index.segments()) == 2)
        segments = index.segments()
    finally:
        index.close()
    old: dict[str, Any] = {
        "wids_version": 1,
        "name": "img2dataset",
        "shardlist": [
            {
                "url": f"../{object_name_of(s.segment_id)}",
                "nsamples": s.item_count,
                "segment_id": s.segment_id,
            }
            for s in segments
        ],
    }
    store = LocalStore(folder)
    store.put("manifests/wids.json", json.dumps(old).encode())
    reader = DatasetReader(store)
    assert reader.segment_ids() == [segments[1].segment_id]
    assert len(list(reader)) == PER_SEGMENT
