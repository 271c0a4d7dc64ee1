"""Hostile url lists, end to end with the embedded download: JSON nested past what Python's json
(or pydantic, or a parquet reader) takes is a failed sample with its key, and keys that are no
safe file name (10 KB, `/`, `..`, NUL, newline...) are exported under a bounded safe name,
inside the destination, with the metadata `key` kept as it is."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from i2d_cli.main import main
from i2d_imageserver import ImageServer, make_url_list
from i2d_materializer.export import export_key
from i2d_segments.ids import sample_id_for, sha256_hex

BIN = Path(sys.executable).parent
TOO_DEEP = "malformed row: invalid JSON row: nested deeper than 32 levels"


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


def download(url_list: Path, out: Path, *flags: str) -> int:
    return main(
        [
            "download",
            f"--url_list={url_list}",
            f"--input_format={url_list.suffix[1:]}",
            f"--output_folder={out}",
            "--processes_count=1",
            "--progress=False",
            "--allowed_networks=127.0.0.1/32",  # the local image server
            *flags,
        ]
    )


def export(out: Path, dest: Path, fmt: str) -> int:
    return main(["materialize", "--output_folder", str(out), "--export", fmt, "--dest", str(dest)])


def metadata(out: Path) -> dict[str, dict[str, Any]]:
    """The metadata parquet rows of the dataset, by key."""
    rows = [r for p in (out / "segments").rglob("*.parquet") for r in pq.read_table(p).to_pylist()]
    return {r["key"]: r for r in rows}


def nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return value


def test_deep_json_rows_are_failed_samples_and_the_others_are_stored(
    images: ImageServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A jsonl line of `[` x 100000 ended the run with a RecursionError traceback and 0 rows
    recorded; a value 300 deep broke the APPEND record, one 40 deep the metadata parquet."""
    urls = make_url_list(images.base_url, 5, seed=23)
    deepest = nested(31)  # with its row object: the 32 levels allowed
    lines = [
        json.dumps({"url": urls[0]}),
        "[" * 100_000,
        '{"url": "' + urls[1] + '", "key": "own", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
        json.dumps({"url": urls[2], "x": nested(300)}),
        json.dumps({"url": urls[3], "x": deepest}),
        '{"url": "' + urls[4] + '", "x": ' + "9" * 5000 + "}",
    ]
    (tmp_path / "urls.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert download(tmp_path / "urls.jsonl", out, "--save_additional_columns=['x']") == 0
    rows = metadata(out)
    assert sorted(rows) == ["000000000", "000000001", "000000003", "000000004", "000000005", "own"]
    errors = {k: r["error_message"] for k, r in rows.items()}
    assert errors["000000001"] == errors["own"] == errors["000000003"] == TOO_DEEP
    assert errors["000000005"].startswith("malformed row: invalid JSON row: unreadable value")
    assert rows["000000000"]["status"] == rows["000000004"]["status"] == "success"
    # The deepest value allowed went through the record, the segment, the index and the
    # parquet sidecar (which still opens), as it was.
    assert rows["000000004"]["x"] == deepest
    (tar,) = (out / "segments").rglob("*.tar")
    members = [json.loads(s["json"]) for s in wds.WebDataset(str(tar), shardshuffle=False)]
    assert [m["x"] for m in members if m["key"] == "000000004"] == [deepest]
    for fmt in ("webdataset", "files", "parquet"):
        assert export(out, tmp_path / fmt, fmt) == 0
    exported = pq.read_table(tmp_path / "parquet" / "00000.parquet").to_pylist()
    assert [r["x"] for r in exported if r["key"] == "000000004"] == [deepest]
    capsys.readouterr()
    assert download(tmp_path / "urls.jsonl", out) == 0  # a rerun finds every row recorded
    assert "6 rows skipped (already recorded)" in capsys.readouterr().out


def test_a_json_list_keeps_its_other_items_and_a_broken_file_is_one_line(
    images: ImageServer, tmp_path: Path
) -> None:
    urls = make_url_list(images.base_url, 2, seed=29)
    items = [
        json.dumps({"url": urls[0]}),
        "[" * 100_000 + "]" * 100_000,
        json.dumps({"url": urls[1]}),
    ]
    (tmp_path / "urls.json").write_text("[" + ",".join(items) + "]")
    out = tmp_path / "out"
    assert download(tmp_path / "urls.json", out) == 0
    rows = metadata(out)
    assert {k: r["status"] for k, r in rows.items()} == {
        "000000000": "success",
        "000000001": "failed_to_download",
        "000000002": "success",
    }
    assert rows["000000001"]["error_message"] == TOO_DEEP
    # A file that is no array at all: one line, no traceback, nothing written.
    (tmp_path / "broken.json").write_text("[" * 100_000)
    run = subprocess.run(
        [str(BIN / "img2dataset"), "download", "--url_list", str(tmp_path / "broken.json"),
         "--input_format=json", f"--output_folder={tmp_path / 'broken'}", "--progress=False"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    (line,) = [x for x in run.stderr.splitlines() if "broken.json" in x]
    assert "not a valid JSON file: Unterminated" in line
    assert len(line) < 500


HOSTILE_KEYS = [
    "k" * 10_000,  # "File name too long" for `--export files`
    "../../escaped",
    "/absolute",
    "a/b",
    "..",
    ".",
    "dots.in.key",
    "nul\x00byte",
    "new\nline",
    # Line separators JSON does not escape: the segment's manifest is still read line by line.
    "line\u2028para\u2029next\x85sep",
    "tab\tand space",
    "ünïcödé",
    "emoji-🙂",
    "x" * 65,
]
SAFE_KEYS = ["k000001", "-", "x" * 64, "A_b-9", "__key__", sha256_hex(b"a url")]


def test_long_and_hostile_keys_are_exported_under_bounded_names_inside_the_destination(
    images: ImageServer, tmp_path: Path
) -> None:
    keys = HOSTILE_KEYS + SAFE_KEYS
    urls = make_url_list(images.base_url, len(keys), seed=31)
    rows = [
        {"url": u, "key": k, "caption": f"cap {i}"}
        for i, (u, k) in enumerate(zip(urls, keys, strict=True))
    ]
    (tmp_path / "urls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert download(tmp_path / "urls.jsonl", out, "--caption_col=caption") == 0
    # The rows' text is in the segments' manifests, not in the index: a NUL stays a NUL.
    stored = list(keys)
    assert sorted(metadata(out)) == sorted(stored)  # every row stored, its key as it was
    assert all(r["status"] == "success" for r in metadata(out).values())

    for fmt in ("files", "webdataset", "parquet"):
        assert export(out, tmp_path / fmt, fmt) == 0, fmt

    safe = re.compile(r"[A-Za-z0-9_-]{1,64}|sha256-[0-9a-f]{64}")
    # Names come from the row's identity: its key, or past 256 characters `key-sha256:<hash>`.
    ids = {k: sample_id_for("", k) for k in stored}
    expected = {k: k if k in SAFE_KEYS else "sha256-" + sha256_hex(ids[k].encode()) for k in stored}
    assert {export_key(ids[k]) for k in stored} == set(expected.values())
    assert len(set(expected.values())) == len(keys)  # no two rows share a name
    # Nothing was written outside the destinations (`../../escaped`, `/absolute`).
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "files", "out", "parquet", "urls.jsonl", "webdataset"
    ]  # fmt: skip
    assert not (tmp_path.parent / "escaped.jpg").exists() and not Path("/absolute.jpg").exists()

    files = tmp_path / "files"
    by_name: dict[str, dict[str, Any]] = {}
    for path in files.rglob("*"):
        assert path.resolve().is_relative_to(files.resolve())
        if path.suffix == ".json" and path.parent != files:
            stem = path.name.removesuffix(".json")
            assert safe.fullmatch(stem), stem
            by_name[stem] = json.loads(path.read_text())
            assert path.with_suffix(".jpg").is_file()
            assert path.with_suffix(".txt").read_text() == by_name[stem]["caption"]
    assert {name: meta["key"] for name, meta in by_name.items()} == {
        name: key for key, name in expected.items()
    }  # the json keeps the key itself

    (tar,) = (tmp_path / "webdataset").glob("*.tar")
    with tarfile.open(tar) as t:
        names = t.getnames()
    assert all(safe.fullmatch(n.split(".", 1)[0]) and len(n) <= 76 for n in names), names
    samples = list(wds.WebDataset(str(tar), shardshuffle=False))
    assert {s["__key__"]: json.loads(s["json"])["key"] for s in samples} == {
        name: key for key, name in expected.items()
    }
    unpacked = tmp_path / "webdataset" / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "xf", str(tar), "-C", str(unpacked)], check=True)
    assert len(list(unpacked.iterdir())) == len(names)  # plain `tar x` can unpack it

    exported = pq.read_table(tmp_path / "parquet" / "00000.parquet").to_pylist()
    assert sorted(r["key"] for r in exported) == sorted(stored)
