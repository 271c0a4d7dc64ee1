"""A dataset whose index was written before migration 0007 (text rows in `samples` and `items`)
opens, is migrated in place with its progress logged, and reads back as before: items by id,
samples by id and by url, every segment's rows, the status figures, and the metadata parquet
the materializer writes again, byte for byte."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from i2d_cli.main import main
from i2d_segments.index import SegmentCommit
from i2d_segments.index import compact as compact_module
from i2d_segments.index import totals as totals_module
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.naming import object_name_of
from i2d_segments.reader import DatasetReader, SegmentRows
from i2d_segments.store.local import LocalStore
from tests.index_before_0007 import OldWriter
from tests.reader.dataset import Dataset
from tests.rows import folder_rows


def everything(folder: Path, index: SqliteIndex) -> dict[str, Any]:
    """What a user reads of the dataset, through the index and the manifests."""
    rows = folder_rows(folder, index)
    segments = index.segments()
    samples = [s for seg in segments for s in rows.samples_for_segment(seg.segment_id)]
    items = [i for seg in segments for i in rows.items_for_segment(seg.segment_id)]
    return {
        "segments": [(s.segment_id, s.item_count, s.sample_count, s.sha256) for s in segments],
        "samples": samples,
        "items": items,
        "by_id": {s.sample_id: rows.sample(s.sample_id) for s in samples},
        "by_url": {s.url: rows.samples_by_url(s.url) for s in samples},
        "items_by_id": {i.item_id: rows.item(i.item_id) for i in items},
        "status": index.status_counts(),
        "errors": index.error_counts(),
        "totals": index.totals(),
        "partitions": [(p.topic, p.partition, p.next_offset) for p in index.partitions()],
    }


def write_before_0007(folder: Path, path: Path) -> None:
    """The index of the folder's segments as the code before 0007 wrote it (migrations up to
    0005: the 0006 step then counts the totals, as for any older dataset), commit by commit
    from the segments' manifests."""
    current = SqliteIndex(folder / "index.sqlite")
    rows = SegmentRows(LocalStore(folder), current)
    writer = OldWriter("sqlite", str(path))
    try:
        for seg in sorted(current.segments(), key=lambda s: (s.created_at, s.segment_id)):
            manifest = rows.manifest(seg.segment_id)
            assert manifest is not None
            writer.commit(
                SegmentCommit(seg.epoch, seg, manifest.items, manifest.samples, seg.last_offset + 1)
            )
    finally:
        writer.close()
        current.close()


def copy_indexed_before_0007(dataset: Dataset, folder: Path) -> dict[str, Any]:
    """A copy of `dataset` in `folder` whose index is rewritten as the code before 0007 wrote
    it; returns what a user read of the dataset before (`everything`)."""
    shutil.copytree(dataset.folder, folder)
    index = SqliteIndex(folder / "index.sqlite")
    try:
        before = everything(folder, index)
    finally:
        index.close()
    old = folder.parent / f"{folder.name}-old.sqlite"
    write_before_0007(folder, old)
    for suffix in ("", "-wal", "-shm"):
        (folder / f"index.sqlite{suffix}").unlink(missing_ok=True)
    shutil.copy(old, folder / "index.sqlite")
    return before


def test_a_dataset_indexed_before_0007_is_migrated_in_place_and_reads_the_same(
    dataset: Dataset,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "migrated"
    before = copy_indexed_before_0007(dataset, folder)
    parquets = {p: p.read_bytes() for p in (folder / "segments").rglob("*.parquet")}
    assert parquets and before["samples"] and before["items"]

    # Small batches and a line each time: what a large index shows.
    monkeypatch.setattr(compact_module, "COMPACT_BATCH", 7)
    monkeypatch.setattr(compact_module, "BACKFILL_LOG_SECONDS", 0.0)
    monkeypatch.setattr(totals_module, "BACKFILL_LOG_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger=compact_module.__name__):
        index = SqliteIndex.open(folder / "index.sqlite")
    try:
        logged = [r.getMessage() for r in caplog.records]
        total = len(before["samples"])
        assert any(f"sample rows: 7 of {total} (" in m and "rows/s" in m for m in logged), logged
        assert any(f"{total} sample rows and 0 carrier rows written" in m for m in logged), logged
        # Segments committed before 0007 have no recorded manifest location (found by a scan).
        assert all(s.manifest_offset is None for s in index.segments())
        after = everything(folder, index)
    finally:
        index.close()
    assert after == before

    # The materializer writes the same metadata from the migrated index.
    for p in parquets:
        p.unlink()
    for seg in before["segments"]:
        (folder / object_name_of(seg[0])).with_name(
            Path(object_name_of(seg[0])).stem + "_stats.json"
        ).unlink(missing_ok=True)
    assert main(["materialize", "--output_folder", str(folder)]) == 0
    assert {p: p.read_bytes() for p in parquets} == parquets


def test_the_reader_migrates_a_folder_indexed_before_0007_and_answers_lookups(
    dataset: Dataset, tmp_path: Path
) -> None:
    """`DatasetReader.open(folder)` on a dataset a previous version wrote: random access works
    at once (the reader migrates the folder's own index; it would find no sample table else)."""
    folder = tmp_path / "old-folder"
    expected = copy_indexed_before_0007(dataset, folder)

    with DatasetReader.open(str(folder)) as reader:
        for item_id in expected["items_by_id"]:
            item = reader.get(item_id)
            assert item is not None and item.item_id == item_id
        for sample_id, sample in expected["by_id"].items():
            got = reader.get_sample(sample_id)
            assert (got.item_id if got else None) == (sample.item_id if sample else None)
        assert reader.get_url("http://no.such/url.jpg") == []
