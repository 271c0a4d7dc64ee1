"""`img2dataset --output_format files|parquet|tfrecord|dummy`: img2dataset's layout in the output
folder, the segments in `_segments/`; a rerun resumes from the segments and rewrites only the
shards its rows changed; --incremental_mode overwrite starts over; a folder that already holds
a dataset keeps it where it is when another format is asked for."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from i2d_cli.main import main
from i2d_imageserver import ImageServer
from i2d_materializer.tfrecord import parse_example, read_records

PER_SHARD = 10


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


def urls_for(images: ImageServer, count: int) -> list[str]:
    return [
        images.url_for(5000 + n, 90 + n, 70, fault="missing" if n % 9 == 4 else None)
        for n in range(count)
    ]


def download(url_list: Path, out: Path, *flags: str) -> int:
    return main(
        [
            f"--url_list={url_list}",
            f"--output_folder={out}",
            f"--number_sample_per_shard={PER_SHARD}",
            "--image_size=48",
            "--processes_count=1",
            "--progress=False",
            "--allowed_networks=127.0.0.1/32",
            *flags,
        ]
    )


def shard_keys(out: Path) -> dict[str, list[str]]:
    return {
        p.stem: pq.read_table(p).column("key").to_pylist() for p in sorted(out.glob("*.parquet"))
    }


def stamps(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*_stats.json")}


def test_files_layout_resumes_and_grows_shard_by_shard(
    images: ImageServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = urls_for(images, 25)
    (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
    out = tmp_path / "out"
    assert download(tmp_path / "urls.txt", out, "--output_format", "files") == 0
    top = sorted(p.name for p in out.iterdir())
    assert top == [
        "00000", "00000.parquet", "00000_stats.json",
        "00001", "00001.parquet", "00001_stats.json",
        "00002", "00002.parquet", "00002_stats.json",
        "_segments",
    ]  # fmt: skip
    assert (out / "_segments" / "index.sqlite").is_file()
    assert list((out / "_segments" / "segments").rglob("*.tar"))
    keys = pq.read_table(out / "00002.parquet").column("key").to_pylist()
    assert keys == [f"0000{20 + i}" for i in range(5)]  # rows 20..24: shard 2, 1 row digit
    assert (out / "00000" / "000000.jpg").is_file()
    assert not (out / "00000" / "000004.jpg").exists()  # row 4 is a 404
    first = stamps(out)

    # The same command again: nothing fetched, nothing rewritten.
    capsys.readouterr()
    assert download(tmp_path / "urls.txt", out, "--output_format", "files") == 0
    assert "0 rows fetched" in capsys.readouterr().out
    assert stamps(out) == first

    # The list grows: the shards whose rows are the same stay as they are, the shards the new
    # rows fall in are written (which shards those are follows their img2dataset keys).
    before = shard_keys(out)
    urls = urls_for(images, 35)
    (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
    assert download(tmp_path / "urls.txt", out, "--output_format", "files") == 0
    assert "10 rows fetched" in capsys.readouterr().out
    after, now = shard_keys(out), stamps(out)
    assert sum(len(keys) for keys in after.values()) == 35
    for name, keys in after.items():
        assert {int(k) // PER_SHARD for k in keys} == {int(name)}  # key -> its shard
        same = before.get(name) == keys
        assert (now[f"{name}_stats.json"] == first.get(f"{name}_stats.json")) == same, name
    assert len(after) > len(before)

    # overwrite: the dataset starts over, and the layout follows it.
    (tmp_path / "urls.txt").write_text("\n".join(urls[:5]) + "\n")
    assert (
        download(
            tmp_path / "urls.txt", out, "--output_format=files", "--incremental_mode=overwrite"
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "00000", "00000.parquet", "00000_stats.json", "_segments"
    ]  # fmt: skip
    assert json.loads((out / "00000_stats.json").read_text())["count"] == 5


@pytest.mark.parametrize("fmt", ["parquet", "tfrecord", "dummy"])
def test_other_layouts(images: ImageServer, tmp_path: Path, fmt: str) -> None:
    (tmp_path / "urls.txt").write_text("\n".join(urls_for(images, 15)) + "\n")
    out = tmp_path / "out"
    assert download(tmp_path / "urls.txt", out, f"--output_format={fmt}") == 0
    names = sorted(p.name for p in out.iterdir())
    suffixes = {
        "parquet": [".parquet", "_stats.json"],
        "tfrecord": [".parquet", ".tfrecord", "_stats.json"],
        "dummy": ["_stats.json"],
    }[fmt]
    assert names == [*sorted(f"0000{i}{s}" for i in (0, 1) for s in suffixes), "_segments"]
    if fmt == "parquet":
        table = pq.read_table(out / "00000.parquet")
        assert table.column_names[-1] == "jpg"
        assert [v is None for v in table.column("jpg").to_pylist()] == [
            s != "success" for s in table.column("status").to_pylist()
        ]
    if fmt == "tfrecord":
        with (out / "00000.tfrecord").open("rb") as f:
            records = [parse_example(r) for r in read_records(f)]
        assert len(records) == 9  # rows 0..9 but row 4 (a 404)
        assert records[0]["key"] == ("bytes", [b"000000"])
        assert records[0]["jpg"][1][0][:2] == b"\xff\xd8"


def test_a_folder_keeps_its_dataset_where_it_is(images: ImageServer, tmp_path: Path) -> None:
    (tmp_path / "urls.txt").write_text("\n".join(urls_for(images, 12)) + "\n")
    out = tmp_path / "out"
    assert download(tmp_path / "urls.txt", out) == 0  # webdataset: the dataset is out itself
    assert (out / "index.sqlite").is_file() and not (out / "_segments").exists()
    assert download(tmp_path / "urls.txt", out, "--output_format=files") == 0
    assert not (out / "_segments").exists()  # not downloaded again elsewhere
    assert (out / "00000.parquet").is_file() and (out / "00001" / "000010.jpg").is_file()
    assert (out / "index.sqlite").is_file() and (out / "img2dataset_layout.json").is_file()
