"""`img2dataset reindex`: the index rebuilt from the segments alone equals the original, with
the garbage crashes and zombies leave behind left out, on both kinds of store and index."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from i2d_appender.open_segment import OpenSegment
from i2d_cli.main import main
from i2d_imageserver import ImageServer, make_url_list
from i2d_segments.connect import open_index, open_store
from i2d_segments.index import SegmentRow
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.naming import object_name_of, segment_object_name
from i2d_segments.ops.reindex import (
    ReindexError,
    SegmentObject,
    choose,
    rebuild_index,
)
from i2d_segments.store.local import LocalStore
from tests.append_records import failure, success
from tests.index_diff import index_differences
from tests.ops.conftest import Backend
from tests.ops.helpers import TP, build_dataset

FAULTS = {"missing": 0.1, "notimage": 0.05}


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


def _download(urls: list[str], folder: Path, out: Path) -> None:
    (folder / "urls.txt").write_text("\n".join(urls) + "\n")
    rc = main(
        [
            "download",
            "--url_list",
            str(folder / "urls.txt"),
            "--output_folder",
            str(out),
            "--number_sample_per_shard=15",
            "--processes_count=1",
            "--progress=False",
            "--allowed_networks=127.0.0.1/32",  # the image server is on loopback
        ]
    )
    assert rc == 0


def test_reindex_of_an_embedded_download_equals_its_index(
    images: ImageServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    first = make_url_list(images.base_url, 40, seed=5, faults=FAULTS)
    _download(first, tmp_path, out)
    # A second run over a longer list: new segments under the next epoch.
    _download(first + make_url_list(images.base_url, 20, seed=6, faults=FAULTS), tmp_path, out)
    # A zombie of the first run wrote offsets 40.. too, and was fenced: garbage on disk.
    zombie = OpenSegment(open_store(str(out)), TP, 1, 40)
    for offset, record in enumerate([success(100), failure(101)], start=40):
        zombie.add(offset, record, record.payload, stored=False)
    zombie.finish()
    (out / "segments" / "p00000" / "notes.txt").write_text("not a segment")
    capsys.readouterr()

    rebuilt = tmp_path / "rebuilt.sqlite"
    assert main(["reindex", "--output_folder", str(out), "--index_url", str(rebuilt)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "segments/s" in captured.err  # progress, with its rate
    assert f"garbage, not indexed: {segment_object_name(0, 40, 1)}" in printed

    original = SqliteIndex(out / "index.sqlite")
    again = SqliteIndex(rebuilt)
    try:
        counts = original.status_counts()
        assert counts["success"] and sum(counts.values()) - counts["success"] > 0  # failures too
        assert {s.epoch for s in original.segments()} == {1, 2}
        assert index_differences(original, again, LocalStore(out), exact_epochs=True) == []
    finally:
        original.close()
        again.close()

    # The index itself lost: rebuilt in place, the folder then works as before.
    shutil.copy(rebuilt, tmp_path / "expected.sqlite")
    for suffix in ("", "-wal", "-shm"):
        (out / f"index.sqlite{suffix}").unlink(missing_ok=True)
    assert main(["reindex", "--output_folder", str(out)]) == 0
    expected, restored = (
        SqliteIndex(tmp_path / "expected.sqlite"),
        SqliteIndex(out / "index.sqlite"),
    )
    try:
        assert index_differences(expected, restored, LocalStore(out), exact_epochs=True) == []
    finally:
        expected.close()
        restored.close()
    assert main(["verify", "--output_folder", str(out), "--sample", "all"]) == 0


def test_reindex_leaves_out_zombie_and_crash_objects(
    backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    data = build_dataset(backend.store, backend.index)
    names = {info.name for info in backend.store.list("segments/")}
    assert set(data.committed + data.garbage) <= names  # the garbage is really there
    assert backend.index.sample_ref("s1").status == "failed_to_download"  # type: ignore[union-attr]

    target = backend.new_index_url()
    assert main(["reindex", *backend.flags(target)]) == 0
    printed = capsys.readouterr().out
    for name in data.garbage:
        assert f"garbage, not indexed: {name}" in printed
    rebuilt = open_index(target)
    try:
        assert index_differences(backend.index, rebuilt, backend.store, exact_epochs=True) == []
        assert [s.epoch for s in rebuilt.segments()] == [1, 2, 3]
        assert rebuilt.partition("APPEND", 0).next_offset == 10  # type: ignore[union-attr]
        # A second reindex into the same, now full, index is refused.
        assert main(["reindex", *backend.flags(target)]) == 2
    finally:
        rebuilt.close()


def test_unreadable_segment_is_reported_and_the_rest_indexed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = open_store(str(tmp_path / "store"))
    index = SqliteIndex(tmp_path / "index.sqlite")
    index.migrate()
    data = build_dataset(store, index)
    last = data.committed[-1]
    blob = store.get(last)
    store.put(last, blob[: len(blob) // 2])  # truncated: not a complete tar any more
    target = tmp_path / "rebuilt.sqlite"
    rc = main(["reindex", "--store_url", str(tmp_path / "store"), "--index_url", str(target)])
    assert rc == 1
    assert f"UNREADABLE, not indexed: {last}" in capsys.readouterr().out
    rebuilt = SqliteIndex(target)
    try:
        assert [s.segment_id for s in rebuilt.segments()] == [
            s.segment_id for s in index.segments()[:-1]
        ]
        # The partition stops before the lost segment (its records are read again) but keeps
        # the epoch that object carries.
        partition = rebuilt.partition("APPEND", 0)
        assert partition is not None and (partition.next_offset, partition.epoch) == (7, 3)
        # Its epoch-2 predecessor at the same offsets stays garbage: a later owner wrote there.
        assert rebuilt.segment(object_name_of(data.garbage[1])[9:-4]) is None
        with pytest.raises(ReindexError):
            rebuild_index(store, rebuilt)
    finally:
        rebuilt.close()
        index.close()


def _obj(first: int, last: int, epoch: int) -> SegmentObject:
    name = segment_object_name(0, first, epoch)
    row = SegmentRow(
        segment_id=name[len("segments/") : -len(".tar")],
        topic="APPEND",
        partition=0,
        first_offset=first,
        last_offset=last,
        epoch=epoch,
        uri=name,
        item_count=0,
        sample_count=0,
        bytes=0,
        sha256="",
        created_at=0.0,
    )
    return SegmentObject(name, row, None)


def test_epoch_rule() -> None:
    committed = [_obj(0, 9, 1), _obj(10, 19, 2), _obj(20, 29, 2), _obj(30, 39, 4)]
    zombie = _obj(10, 14, 1)  # fenced owner of epoch 1, overwritten by epoch 2 from 10
    crashed = _obj(30, 45, 3)  # completed, never committed; epoch 4 rewrote from 30
    late_zombie = _obj(40, 41, 2)  # epoch 2 kept writing after epoch 4 took over at 30
    tail = _obj(40, 49, 4)  # the last owner died before its commit: nothing tells
    chosen, skipped = choose([*committed, zombie, crashed, late_zombie, tail])
    assert [o.name for o in chosen] == [o.name for o in [*committed, tail]]
    assert {s.name for s in skipped} == {zombie.name, crashed.name, late_zombie.name}
    # An object that no longer reads back still proves its writer came later.
    chosen, skipped = choose([_obj(0, 9, 1), _obj(10, 19, 1)], [segment_object_name(0, 15, 2)])
    assert [o.segment.first_offset for o in chosen] == [0]
    assert [s.name for s in skipped] == [segment_object_name(0, 10, 1)]
