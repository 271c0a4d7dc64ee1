"""img2dataset's layouts (files, parquet, tfrecord, dummy) written from a real dataset's segments:
each input row in its list shard, named by its img2dataset key, with img2dataset's metadata
columns in its order, its image bytes those stored, img2dataset's stats per shard; a second
write rewrites only the shards that changed and removes those that are gone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from i2d_cli.output_formats import write_layout
from i2d_materializer.export import export_key
from i2d_materializer.img2dataset_layout import STATE_FILE, LayoutReport, LayoutSpec
from i2d_materializer.tfrecord import parse_example, read_records
from i2d_segments.index import SampleRow
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.reader import DatasetReader
from tests.reader.dataset import ROWS_PER_SEGMENT, Dataset
from tests.rows import folder_rows

STATS_KEYS = [
    "count", "successes", "failed_to_download", "failed_to_resize",
    "duration", "start_time", "end_time", "status_dict",
]  # fmt: skip
# The dataset's list: jsonl with --caption_col caption --save_additional_columns [license].
PARQUET_COLUMNS = [
    "license", "caption", "url", "key", "status", "error_message",
    "width", "height", "original_width", "original_height", "exif", "sha256",
]  # fmt: skip


def spec(fmt: str, **changes: Any) -> LayoutSpec:
    options: dict[str, Any] = {
        "output_format": fmt,
        "number_sample_per_shard": ROWS_PER_SEGMENT,
        "input_format": "jsonl",
        "caption": True,
        "additional_columns": ("license",),
        **changes,
    }
    return LayoutSpec(**options)


def write(dataset: Dataset, dest: Path, layout: LayoutSpec) -> LayoutReport:
    return write_layout(dataset.folder, dest, layout)


def rows_by_shard(dataset: Dataset) -> dict[str, list[SampleRow]]:
    """Expected shards: list shards by row number (rows without a key of their own), then the
    rows whose own key is not a number, in key order."""
    index = SqliteIndex(dataset.folder / "index.sqlite")
    rows = folder_rows(dataset.folder, index)
    try:
        by_url = {
            s.url: s for seg in index.segments() for s in rows.samples_for_segment(seg.segment_id)
        }
    finally:
        index.close()
    shards: dict[str, list[SampleRow]] = {}
    own = []
    for n, row in enumerate(dataset.rows):
        sample = by_url[row["url"]]
        if "key" in row:
            assert sample.attrs["key"] == row["key"]
            own.append(sample)
            continue
        key = f"{(n // 25) * 100 + n % 25:07d}"  # img2dataset's key: 2 row digits, 5 shard
        assert sample.attrs["key"] == key
        shards.setdefault(f"{n // 25:05d}", []).append(sample)
    first = len(shards)
    own.sort(key=lambda s: s.attrs["key"])
    for i in range(0, len(own), 25):
        shards[f"{first + i // 25:05d}"] = own[i : i + 25]
    return shards


def stored_images(dataset: Dataset) -> dict[str, bytes]:
    with DatasetReader.open(str(dataset.folder)) as ds:
        return {i.item_id: i.image for i in ds}


def check_parquet(path: Path, rows: list[SampleRow], extra: list[str] | None = None) -> pa.Table:
    table = pq.read_table(path)
    assert table.column_names == PARQUET_COLUMNS + (extra or [])
    assert [f.type for f in table.schema][6:10] == [pa.int32()] * 4
    assert table.column("key").to_pylist() == sorted(s.attrs["key"] for s in rows)
    by_key = {s.attrs["key"]: s for s in rows}
    for got in table.to_pylist():
        s = by_key[got["key"]]
        success = s.status == "success"
        assert (got["url"], got["caption"], got["status"]) == (s.url, s.caption, s.status)
        assert got["license"] == s.attrs["license"] and got["error_message"] == s.error
        assert got["sha256"] == (s.attrs["sha256"] if success else None)
        assert got["width"] == s.attrs.get("width")
    return table


def check_stats(path: Path, rows: list[SampleRow]) -> None:
    stats = json.loads(path.read_text())
    assert list(stats) == STATS_KEYS
    statuses = [s.status for s in rows]
    assert stats["count"] == len(rows)
    assert stats["successes"] == statuses.count("success")
    assert stats["failed_to_download"] == statuses.count("failed_to_download")
    assert stats["failed_to_resize"] == statuses.count("failed_to_resize")
    assert sum(stats["status_dict"].values()) == len(rows)
    assert stats["status_dict"].get("success", 0) == statuses.count("success")
    assert stats["end_time"] >= stats["start_time"] > 0
    assert stats["duration"] == pytest.approx(stats["end_time"] - stats["start_time"])


def test_files_layout_is_img2dataset_s_row_for_row(dataset: Dataset, tmp_path: Path) -> None:
    dest = tmp_path / "images"
    report = write(dataset, dest, spec("files"))
    shards = rows_by_shard(dataset)
    assert sorted(shards) == ["00000", "00001", "00002", "00003", "00004", "00005"]
    assert (report.shards, report.written, report.rows) == (6, 6, len(dataset.rows))
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        f"{name}{suffix}" for name in shards for suffix in ("", ".parquet", "_stats.json")
    )
    images = stored_images(dataset)
    for name, rows in shards.items():
        check_parquet(dest / f"{name}.parquet", rows)
        check_stats(dest / f"{name}_stats.json", rows)
        files = set()
        for s in rows:
            if s.status != "success":
                continue
            base = dest / name / export_key(s.attrs["key"])
            files |= {f"{base.name}.jpg", f"{base.name}.json", f"{base.name}.txt"}
            assert base.with_suffix(".jpg").read_bytes() == images[s.item_id]  # type: ignore[index]
            assert base.with_suffix(".txt").read_text() == s.caption
            text = base.with_suffix(".json").read_text()
            meta = json.loads(text)
            assert list(meta) == PARQUET_COLUMNS  # img2dataset's meta order
            assert text == json.dumps(meta, indent=4)  # img2dataset's formatting
            assert meta["key"] == s.attrs["key"] and meta["exif"] == s.attrs["exif"]
            assert (meta["original_width"], meta["original_height"]) == (
                s.attrs["original_width"],
                s.attrs["original_height"],
            )
        assert {p.name for p in (dest / name).iterdir()} == files  # failures: parquet only


def test_parquet_layout_holds_the_bytes_in_img2dataset_s_column(
    dataset: Dataset, tmp_path: Path
) -> None:
    dest = tmp_path / "pq"
    write(dataset, dest, spec("parquet"))
    images = stored_images(dataset)
    shards = rows_by_shard(dataset)
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        f"{name}{suffix}" for name in shards for suffix in (".parquet", "_stats.json")
    )
    for name, rows in shards.items():
        table = check_parquet(dest / f"{name}.parquet", rows, extra=["jpg"])
        assert table.schema.field("jpg").type == pa.binary()
        by_key = {s.attrs["key"]: s for s in rows}
        for got in table.to_pylist():
            s = by_key[got["key"]]
            assert got["jpg"] == (images[s.item_id] if s.status == "success" else None)  # type: ignore[index]


def test_tfrecord_layout_is_read_back(dataset: Dataset, tmp_path: Path) -> None:
    dest = tmp_path / "tf"
    write(dataset, dest, spec("tfrecord", encode_format="webp"))
    images = stored_images(dataset)
    for name, rows in rows_by_shard(dataset).items():
        with (dest / f"{name}.tfrecord").open("rb") as f:
            examples = [parse_example(r) for r in read_records(f)]
        successes = sorted((s for s in rows if s.status == "success"), key=lambda s: s.attrs["key"])
        assert len(examples) == len(successes)
        for ex, s in zip(examples, successes, strict=True):
            assert set(ex) == {"key", "webp", "txt", *PARQUET_COLUMNS}
            assert ex["key"] == ("bytes", [s.attrs["key"].encode()])
            assert ex["webp"] == ("bytes", [images[s.item_id]])  # type: ignore[index]
            assert ex["txt"] == ex["caption"] == ("bytes", [s.caption.encode()])  # type: ignore[union-attr]
            assert ex["width"] == ("int64", [s.attrs["width"]])
            assert ex["error_message"] == ("bytes", [b""])  # None, as img2dataset writes it
            assert ex["license"] == ("bytes", [s.attrs["license"].encode()])
        check_parquet(dest / f"{name}.parquet", rows)


def test_dummy_layout_is_the_stats_only(dataset: Dataset, tmp_path: Path) -> None:
    dest = tmp_path / "dummy"
    write(dataset, dest, spec("dummy"))
    shards = rows_by_shard(dataset)
    assert sorted(p.name for p in dest.iterdir()) == [f"{n}_stats.json" for n in sorted(shards)]
    for name, rows in shards.items():
        check_stats(dest / f"{name}_stats.json", rows)


def test_a_second_write_rewrites_only_what_changed(dataset: Dataset, tmp_path: Path) -> None:
    dest = tmp_path / "images"
    assert write(dataset, dest, spec("files")).written == 6
    stamps = {p.name: p.stat().st_mtime_ns for p in dest.glob("*_stats.json")}

    again = write(dataset, dest, spec("files"))
    assert (again.written, again.unchanged, again.removed) == (0, 6, 0)
    assert {p.name: p.stat().st_mtime_ns for p in dest.glob("*_stats.json")} == stamps

    # A shard whose stats file is gone (an interrupted write) is written again, alone.
    (dest / "00002_stats.json").unlink()
    (dest / "00002" / "stray.jpg").write_bytes(b"x")
    again = write(dataset, dest, spec("files"))
    assert (again.written, again.unchanged) == (1, 5)
    assert not (dest / "00002" / "stray.jpg").exists()

    # A shard recorded earlier that the dataset no longer has is removed.
    state_path = dataset.folder / STATE_FILE
    state = json.loads(state_path.read_text())
    state["shards"]["00009"] = "0" * 64
    state_path.write_text(json.dumps(state))
    (dest / "00009").mkdir()
    (dest / "00009" / "000900.jpg").write_bytes(b"old")
    (dest / "00009.parquet").write_bytes(b"old")
    (dest / "00009_stats.json").write_text("{}")
    again = write(dataset, dest, spec("files"))
    assert (again.written, again.removed) == (0, 1)
    assert not any(p.name.startswith("00009") for p in dest.iterdir())

    # Other options, another layout: every shard written again, nothing of the old left.
    again = write(dataset, dest, spec("tfrecord"))
    assert again.written == 6
    assert sorted({p.suffix for p in dest.iterdir()}) == [".json", ".parquet", ".tfrecord"]
    assert not [p for p in dest.iterdir() if p.is_dir()]


def test_img2dataset_s_column_choices(dataset: Dataset, tmp_path: Path) -> None:
    """txt lists have the url only; no exif without extract_exif; no hash column without
    compute_hash; verify_hash's column is the hash's, before the url (img2dataset's reader)."""
    txt = spec("dummy", input_format="txt", caption=False, additional_columns=())
    assert txt.parquet_columns() == PARQUET_COLUMNS[2:]
    bare = spec("dummy", extract_exif=False, compute_hash=None)
    assert bare.parquet_columns() == [c for c in PARQUET_COLUMNS if c not in ("exif", "sha256")]
    verified = spec("dummy", verify_hash=("expected", "sha256"))
    assert verified.parquet_columns() == [
        "license", "caption", "sha256", "url", "key", "status", "error_message",
        "width", "height", "original_width", "original_height", "exif",
    ]  # fmt: skip
    assert verified.json_columns() == PARQUET_COLUMNS
    dest = tmp_path / "bare"
    write(dataset, dest, spec("files", extract_exif=False, compute_hash=None, caption=False))
    table = pq.read_table(dest / "00000.parquet")
    gone = ("caption", "exif", "sha256")
    assert table.column_names == [c for c in PARQUET_COLUMNS if c not in gone]
    assert not list(dest.glob("00000/*.txt"))
