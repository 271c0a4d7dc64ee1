"""The reader API as training code uses it, on a real downloaded dataset: every item in segment
order streamed once per segment, random access by item_id, sample_id or url in one ranged read,
a PyTorch-style iterable, and the same samples as the `webdataset` package and wids read."""

from __future__ import annotations

import json
import pickle
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import webdataset as wds

from i2d_segments.ids import sha256_hex
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.naming import object_name_of
from i2d_segments.reader import DatasetReader, Item, ItemIterable, assign_segments
from i2d_segments.store import SegmentStore
from i2d_segments.store.local import LocalStore
from tests.reader.dataset import Dataset
from tests.reader.wids_compat import import_wids


class CountingStore(LocalStore):
    """A LocalStore that counts the reads a reader makes."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: Counter[str] = Counter()

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        self.calls["read_range"] += 1
        return super().read_range(name, offset, length)

    def open_stream(self, name: str) -> BinaryIO:
        self.calls["open_stream"] += 1
        return super().open_stream(name)

    def get(self, name: str) -> bytes:
        self.calls["get"] += 1
        return super().get(name)


@pytest.fixture
def reader(dataset: Dataset) -> Iterator[tuple[DatasetReader, CountingStore, SqliteIndex]]:
    store = CountingStore(dataset.folder)
    index = SqliteIndex(dataset.folder / "index.sqlite")
    yield DatasetReader(store, index), store, index
    index.close()


def by_key(items: list[Item]) -> dict[str, Item]:
    return {i.item_id: i for i in items}


def test_sequential_reads_every_item_in_segment_order_streaming_each_segment_once(
    reader: tuple[DatasetReader, CountingStore, SqliteIndex],
) -> None:
    ds, store, index = reader
    segments = index.segments()
    assert len(segments) >= 3  # 92 rows in segments of 25

    items = list(ds)
    calls = Counter(store.calls)

    # Segment order (partition, first offset), and within a segment the index's items.
    expected: list[str] = []
    for s in segments:
        expected += sorted(i.item_id for i in ds.rows.items_for_segment(s.segment_id))
    seen: list[str] = []
    for s in segments:
        seen += sorted(i.item_id for i in items if i.segment_id == s.segment_id)
    assert [i.segment_id for i in items] == sorted(
        (i.segment_id for i in items), key=[s.segment_id for s in segments].index
    )
    assert seen == expected and len(items) == len(set(expected)) == sum(
        s.item_count for s in segments
    )
    # Each segment object was streamed exactly once; no ranged read, no whole-object get.
    assert calls == Counter({"open_stream": len(segments)})

    for item in items:
        row = ds.rows.item(item.item_id)
        assert row is not None
        assert sha256_hex(item.image) == row.data_sha256 and item.image[:2] == b"\xff\xd8"
        assert (item.data_offset, item.data_length) == (row.data_offset, row.data_length)
        assert item.meta["status"] == "success" and item.meta["sha256"] == item.item_id
        assert item.url is not None and item.url.startswith("http://127.0.0.1:")
        assert item.caption is not None and item.caption.startswith("picture number ")
        assert item.meta["license"].startswith("cc-")

    # Metadata only: same items, no image bytes.
    light = list(ds.iter_items(load_images=False))
    assert [i.item_id for i in light] == [i.item_id for i in items]
    assert all(i.image == b"" and i.meta["url"] for i in light)


def test_every_successful_row_is_readable_and_failures_are_not(
    dataset: Dataset, reader: tuple[DatasetReader, CountingStore, SqliteIndex]
) -> None:
    ds, _, _ = reader
    stored = {i.item_id for i in ds}
    successes = failures = 0
    for row in dataset.rows:
        # A row without a key is identified by its place in its list (its url finds it).
        sample_id = row.get("key") or ds.rows.samples_by_url(row["url"])[0].sample_id
        got = ds.get_sample(sample_id)
        if "missing" in row["url"] or "notimage" in row["url"]:
            assert got is None
            failures += 1
        else:
            assert got is not None and got.item_id in stored
            assert got.url == row["url"] and got.caption == row["caption"]
            assert got.sample_id == sample_id and got.meta["license"] == row["license"]
            successes += 1
    assert successes > 60 and failures > 5


@pytest.mark.parametrize("by", ["item_id", "sample_id", "url"])
def test_random_access_is_one_ranged_read(
    by: str, reader: tuple[DatasetReader, CountingStore, SqliteIndex]
) -> None:
    ds, store, index = reader
    sequential = by_key(list(ds))
    store.calls.clear()
    checked = 0
    manifests: set[str] = set()  # segments whose manifest was read (then kept parsed)
    for item in list(sequential.values())[::7]:
        store.calls.clear()
        before = len(manifests)
        if by == "item_id":
            got = ds.get(item.item_id)
        elif by == "sample_id":
            assert item.sample_id is not None
            got = ds.get_sample(item.sample_id)
        else:
            assert item.url is not None
            found = ds.get_url(item.url)
            assert len(found) == 1
            got = found[0]
        assert got is not None
        # One ranged read of the image, plus one of each manifest not read yet (the row's url,
        # caption and the image's sha256 are there): the first item of a segment costs two.
        manifests.add(got.segment_id)
        if by != "item_id":
            ref = index.sample_ref(got.sample_id or "")
            assert ref is not None
            manifests.add(ref.segment_id)
        assert store.calls == Counter({"read_range": 1 + len(manifests) - before}), store.calls
        assert got.item_id == item.item_id and got.image == item.image and got.ext == item.ext
        assert got.segment_id == item.segment_id and got.data_offset == item.data_offset
        if by != "item_id":
            assert got.url == item.url and got.caption == item.caption
        checked += 1
    assert checked >= 10
    assert ds.get("0" * 64) is None and ds.get_sample("no-such-row") is None
    assert ds.get_url("http://127.0.0.1:1/none.jpg") == []


def test_two_urls_serving_the_same_bytes_are_one_item(
    dataset: Dataset, reader: tuple[DatasetReader, CountingStore, SqliteIndex]
) -> None:
    ds, _, _ = reader
    direct, redirected = dataset.duplicate_urls
    [a] = ds.get_url(direct)
    [b] = ds.get_url(redirected)
    assert a.item_id == b.item_id and a.image == b.image
    assert (a.url, b.url) == (direct, redirected)
    assert sum(1 for i in ds if i.item_id == a.item_id) == 1
    assert len(ds.rows.items_for_segment(a.segment_id)) > 0


def test_item_iterable_splits_whole_segments_across_ranks_and_workers(dataset: Dataset) -> None:
    location = str(dataset.folder)
    with DatasetReader.open(location) as ds:
        everything = [i.item_id for i in ds]
        segment_ids = ds.segment_ids()

    iterable = ItemIterable(location, transform=lambda i: i.item_id)
    assert list(iterable) == everything  # one consumer: the sequential order

    # 2 ranks x 2 workers: each segment to exactly one consumer, each item read once.
    got: list[str] = []
    owners: list[str] = []
    for rank in range(2):
        part = ItemIterable(location, rank=rank, world_size=2, transform=lambda i: i.item_id)
        for worker in range(2):
            mine = part.segments_for(worker, 2)
            assert mine == assign_segments(segment_ids, rank, 2, worker, 2)
            owners += mine
            with DatasetReader.open(location) as ds:
                got += [i.item_id for i in ds.iter_items(mine)]
    assert sorted(owners) == sorted(segment_ids)
    assert sorted(got) == sorted(everything)

    # Shuffled segment order: the same permutation on every rank for one seed and epoch.
    a = ItemIterable(location, shuffle_segments=True, seed=3, rank=0, world_size=1)
    b = ItemIterable(location, shuffle_segments=True, seed=3, rank=0, world_size=1)
    assert a.segments_for() == b.segments_for()
    assert sorted(a.segments_for()) == sorted(segment_ids)
    orders = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        orders.add(tuple(a.segments_for()))
    assert len(orders) > 1
    with pytest.raises(ValueError):
        assign_segments(segment_ids, 2, 2, 0, 1)


def test_item_iterable_pickles_and_needs_no_torch(dataset: Dataset) -> None:
    iterable = ItemIterable(str(dataset.folder), load_images=False)
    clone = pickle.loads(pickle.dumps(iterable))
    assert [i.item_id for i in clone] == [i.item_id for i in iterable]
    if "torch" not in sys.modules:  # without PyTorch it is a plain iterable
        assert type(iterable).__mro__[1] is object


def webdataset_samples(urls: str | list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for s in wds.WebDataset(urls, shardshuffle=False):
        out[s["__key__"]] = {
            "jpg": s["jpg"],
            "json": json.loads(s["json"]),
            "txt": s["txt"].decode(),
        }
    return out


def reader_samples(items: list[Item]) -> dict[str, dict[str, Any]]:
    return {i.item_id: {"jpg": i.image, "json": i.meta, "txt": i.caption} for i in items}


def test_webdataset_and_wids_read_the_same_samples_as_the_reader(
    dataset: Dataset, tmp_path: Path
) -> None:
    with DatasetReader.open(str(dataset.folder)) as ds:
        items = list(ds)
        shard_urls = ds.shard_urls()
    ours = reader_samples(items)
    manifests = dataset.folder / "manifests"

    # webdataset, from the reader's shard list, the manifest's plain list and its brace form.
    assert webdataset_samples(shard_urls) == ours
    listed = (manifests / "shards.txt").read_text().split()
    assert listed == shard_urls
    assert webdataset_samples(listed) == ours
    brace = (manifests / "shards_brace.txt").read_text().strip()
    assert "{" in brace
    assert webdataset_samples(brace) == ours

    # wids, from the wids JSON description: same count, same samples by index.
    wids = import_wids()
    indexed = wids.ShardListDataset(
        str(manifests / "wids.json"), cache_dir=str(tmp_path / "wids"), transformations=[]
    )
    assert len(indexed) == len(items)
    theirs = {}
    for n in range(len(indexed)):
        s = indexed[n]
        theirs[s["__key__"]] = {
            "jpg": s[".jpg"].read(),
            "json": json.loads(s[".json"].read()),
            "txt": s[".txt"].read().decode(),
        }
    assert theirs == ours


def store_file_names(store: SegmentStore) -> set[str]:
    return {o.name for o in store.list("")}


def upload_segments(folder: Path, store: SegmentStore) -> None:
    for path in sorted((folder / "segments").rglob("*.tar")):
        store.put(path.relative_to(folder).as_posix(), path.read_bytes())


def test_reader_over_s3_with_and_without_the_index(
    dataset: Dataset, s3_server: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from i2d_cli.main import main
    from i2d_segments.connect import open_store
    from tests.servers.s3 import s3_env

    for k, v in s3_env(s3_server).items():
        monkeypatch.setenv(k, v)
    location = f"s3://{s3_bucket}/ds/"
    index_url = f"sqlite:///{dataset.folder / 'index.sqlite'}"
    bucket = open_store(location, s3_endpoint_url=s3_server.endpoint_url)
    try:
        upload_segments(dataset.folder, bucket)
        # The materializer over the bucket writes the sidecars and manifests there.
        rc = main(
            [
                "materialize",
                "--store_url",
                location,
                "--index_url",
                index_url,
                "--s3_endpoint_url",
                s3_server.endpoint_url,
            ]
        )
        assert rc == 0
        names = store_file_names(bucket)
        assert {"manifests/wids.json", "manifests/shards.txt", "manifests/summary.json"} <= names
        shards = bucket.get("manifests/shards.txt").decode().split()
        assert shards and all(u.startswith(f"s3://{s3_bucket}/ds/segments/") for u in shards)
    finally:
        bucket.close()

    with DatasetReader.open(str(dataset.folder)) as local:
        expected = list(local)
    with DatasetReader.open(
        location, index_url=index_url, s3_endpoint_url=s3_server.endpoint_url
    ) as remote:
        assert list(remote) == expected
        some = expected[5]
        got = remote.get(some.item_id)
        assert got is not None and got.image == some.image
        assert some.sample_id is not None
        by_sample = remote.get_sample(some.sample_id)
        assert by_sample is not None and by_sample.image == some.image
        assert remote.shard_urls() == shards
    # A trainer with bucket access only: the wids manifest says which segments exist.
    with DatasetReader.open(location, s3_endpoint_url=s3_server.endpoint_url) as bucket_only:
        assert bucket_only.index is None
        assert list(bucket_only) == expected
        with pytest.raises(RuntimeError, match="index"):
            bucket_only.get(some.item_id)
    iterable = ItemIterable(location, s3_endpoint_url=s3_server.endpoint_url, load_images=False)
    assert [i.item_id for i in iterable] == [i.item_id for i in expected]
    assert object_name_of(expected[0].segment_id).startswith("segments/")
