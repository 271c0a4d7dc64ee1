"""The embedded download, as a user runs it: img2dataset's flat command line, a folder of
WebDataset segments with metadata, and resume after SIGKILL equal to an uninterrupted run."""

from __future__ import annotations

import gzip
import io
import json
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from i2d_cli.main import main
from i2d_imageserver import ImageServer, make_url_list
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.naming import object_name_of
from tests.e2e.signals import rows_fetched
from tests.img2dataset_columns import IMG2DATASET_COLUMNS
from tests.rows import folder_rows

BIN = Path(sys.executable).parent
FAULTS = {"missing": 0.05, "notimage": 0.03, "truncated": 0.02, "noai": 0.02}


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


def test_flat_form_download_writes_a_webdataset(images: ImageServer, tmp_path: Path) -> None:
    urls = make_url_list(images.base_url, 150, seed=3, faults=FAULTS)
    (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
    out = tmp_path / "out"
    rc = main(
        [
            f"--url_list={tmp_path / 'urls.txt'}",
            f"--output_folder={out}",
            "--number_sample_per_shard=40",
            "--processes_count=1",
            "--progress=False",
            "--allowed_networks=127.0.0.1/32",  # the local image server
            # img2dataset's own machinery, with the values that describe what happens here
            "--output_format=webdataset",
            "--distributor=multiprocessing",
            "--enable_wandb=False",
            "--max_shard_retry=3",
            "--oom_shard_count=3",
        ]
    )
    assert rc == 0
    # img2dataset's key: shard (of 40 rows) x 100 + place in the shard, on 3 + 2 digits
    key_of = {url: f"{(i // 40) * 100 + i % 40:05d}" for i, url in enumerate(urls)}
    index = SqliteIndex(out / "index.sqlite")
    try:
        segments = index.segments()
        assert len(segments) == 4  # 150 rows, 40 per segment
        assert sum(index.status_counts().values()) == 150
        rows = 0
        for seg in segments:
            tar_path = out / object_name_of(seg.segment_id)
            listing = subprocess.run(
                ["tar", "tf", str(tar_path)], capture_output=True, text=True, check=True
            ).stdout.split()
            assert len(listing) >= 2 * seg.item_count
            samples = list(wds.WebDataset(str(tar_path), shardshuffle=False))
            assert len(samples) == seg.item_count
            for s in samples[:3]:
                img = Image.open(io.BytesIO(s["jpg"]))
                assert img.size == (256, 256)  # default: border to 256
                meta = json.loads(s["json"])
                assert meta["status"] == "success" and meta["sha256"] == s["__key__"]
                assert meta["key"] == key_of[meta["url"]]
            table = pq.read_table(out / f"segments/{seg.segment_id}.parquet")
            assert table.column_names[: len(IMG2DATASET_COLUMNS)] == IMG2DATASET_COLUMNS
            for url, key in zip(table["url"].to_pylist(), table["key"].to_pylist(), strict=True):
                assert key == key_of[url]
            rows += table.num_rows
            stats = json.loads((out / f"segments/{seg.segment_id}_stats.json").read_text())
            assert stats["count"] == table.num_rows
            assert stats["successes"] == seg.item_count
        assert rows == 150
        errors = index.error_counts()
        assert any("404" in e for e in errors)
    finally:
        index.close()


def outcome(folder: Path) -> tuple[dict[str, tuple[str, str | None]], set[str]]:
    """What a user relies on: each row's outcome and the set of stored items."""
    index = SqliteIndex(folder / "index.sqlite")
    try:
        samples: dict[str, tuple[str, str | None]] = {}
        items: set[str] = set()
        for seg in index.segments():
            for s in folder_rows(folder, index).samples_for_segment(seg.segment_id):
                samples[s.sample_id] = (s.status, s.item_id)
            for item in folder_rows(folder, index).items_for_segment(seg.segment_id):
                items.add(item.item_id)
                data = (folder / object_name_of(seg.segment_id)).read_bytes()
                assert item.data_length > 0
                assert data[item.data_offset : item.data_offset + 2] == b"\xff\xd8"
        on_disk = {
            p.relative_to(folder / "segments").as_posix()[:-4]
            for p in (folder / "segments").rglob("*.tar")
        }
        assert on_disk == {s.segment_id for s in index.segments()}, "orphan segment objects"
        return samples, items
    finally:
        index.close()


def download_cmd(url_list: Path, out: Path) -> list[str]:
    return [
        str(BIN / "img2dataset"),
        "download",
        "--url_list",
        str(url_list),
        "--output_folder",
        str(out),
        "--number_sample_per_shard=50",
        "--thread_count=4",
        "--processes_count=1",
        "--progress=False",
        "--allowed_networks=127.0.0.1/32",  # the local image server
    ]


def committed_segments(out: Path) -> int:
    path = out / "index.sqlite"
    if not path.exists():
        return 0
    try:
        index = SqliteIndex(path)
        try:
            return len(index.segments())
        finally:
            index.close()
    except Exception:
        return 0  # created but not migrated yet


def test_resume_after_sigkill_equals_a_clean_run(images: ImageServer, tmp_path: Path) -> None:
    urls = make_url_list(images.base_url, 600, seed=11, faults={**FAULTS, "slow": 0.02})
    url_list = tmp_path / "urls.txt"
    url_list.write_text("\n".join(urls) + "\n")

    killed = tmp_path / "killed"
    proc = subprocess.Popen(download_cmd(url_list, killed), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while committed_segments(killed) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "no segment committed in time"
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; slow it down"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial, _ = outcome(killed) if committed_segments(killed) else ({}, set())
    assert 0 < len(partial) < len(urls)

    resumed = subprocess.run(
        download_cmd(url_list, killed), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(partial)} rows skipped" in resumed.stdout

    clean = tmp_path / "clean"
    done = subprocess.run(
        download_cmd(url_list, clean), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]

    resumed_samples, resumed_items = outcome(killed)
    clean_samples, clean_items = outcome(clean)
    assert len(clean_samples) == len(set(urls))
    assert resumed_samples == clean_samples
    assert resumed_items == clean_items
    # The segments a user globs are exactly the committed ones, and each is a valid tar.
    for tar_path in (killed / "segments").rglob("*.tar"):
        with tarfile.open(tar_path) as tar:
            tar.getmembers()


def test_ctrl_c_commits_work_in_flight_and_resumes(images: ImageServer, tmp_path: Path) -> None:
    urls = make_url_list(images.base_url, 400, seed=13, faults={"slow": 0.05})
    url_list = tmp_path / "urls.txt"
    url_list.write_text("\n".join(urls) + "\n")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        download_cmd(url_list, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while committed_segments(out) < 1 and proc.poll() is None:
        assert time.monotonic() < deadline, "no segment committed in time"
        time.sleep(0.05)
    time.sleep(0.5)  # let the next segment take some rows
    index = SqliteIndex(out / "index.sqlite")
    try:
        at_signal = sum(index.status_counts().values())
    finally:
        index.close()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "run the same command again to resume" in err
    # The open segment was committed on the way out, not dropped: every row the run says it
    # fetched is recorded, beyond the segments that had closed by count.
    samples, _ = outcome(out)
    assert len(samples) == rows_fetched(err), err[-2000:]
    assert len(samples) > at_signal, "the rows fetched after the last close were dropped"
    resumed = subprocess.run(download_cmd(url_list, out), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{len(samples)} rows skipped" in resumed.stdout
    final, _ = outcome(out)
    assert len(final) == len(urls)


def test_lone_surrogates_in_a_jsonl_row_are_replaced_not_fatal(
    images: ImageServer, tmp_path: Path
) -> None:
    """JSON can escape a lone surrogate, which no UTF-8 tar member or index row can hold: the
    row is stored with each one replaced by '?' instead of failing the whole segment."""
    (url,) = make_url_list(images.base_url, 1, seed=11)
    # json.dumps would escape a real surrogate the same way; written out for readability
    line = '{"url": "' + url + '", "caption": "a \\ud800 cat", "tag": "x\\udc00"}'
    (tmp_path / "urls.jsonl").write_text(line + "\n")
    out = tmp_path / "out"
    rc = main(
        [
            "download",
            f"--url_list={tmp_path / 'urls.jsonl'}",
            "--input_format=jsonl",
            "--caption_col=caption",
            "--save_additional_columns=['tag']",
            f"--output_folder={out}",
            "--processes_count=1",
            "--progress=False",
            "--allowed_networks=127.0.0.1/32",  # the local image server
        ]
    )
    assert rc == 0
    (tar_path,) = (out / "segments").rglob("*.tar")
    (sample,) = list(wds.WebDataset(str(tar_path), shardshuffle=False))
    assert sample["txt"].decode() == "a ? cat"
    meta = json.loads(sample["json"])
    assert meta["caption"] == "a ? cat" and meta["tag"] == "x?"


def test_rows_without_a_url_are_failed_samples_with_their_key(
    images: ImageServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad line of a url list is reported, not dropped: it gets its sample row, its reason
    and its img2dataset key, and a rerun counts it as recorded."""
    first, last = make_url_list(images.base_url, 2, seed=17)
    lines = [
        json.dumps({"url": first}),
        '{"url": "truncated',
        json.dumps({"caption": "no url"}),
        json.dumps({"url": 42}),
        json.dumps({"url": last}),
    ]
    (tmp_path / "urls.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    argv = [
        "download",
        f"--url_list={tmp_path / 'urls.jsonl'}",
        "--input_format=jsonl",
        f"--output_folder={out}",
        "--number_sample_per_shard=2",
        "--progress=False",
        "--allowed_networks=127.0.0.1/32",  # the local image server
    ]
    assert main(argv) == 0
    rows = [r for p in (out / "segments").rglob("*.parquet") for r in pq.read_table(p).to_pylist()]
    assert sorted(r["key"] for r in rows) == ["000000", "000001", "000010", "000011", "000020"]
    by_key = {r["key"]: r for r in rows}
    assert (by_key["000000"]["status"], by_key["000020"]["status"]) == ("success", "success")
    reasons = {k: by_key[k]["error_message"] for k in ("000001", "000010", "000011")}
    assert reasons["000001"].startswith("malformed row: invalid JSON row: Unterminated string")
    assert reasons["000010"] == reasons["000011"] == "malformed row: no 'url' string in the row"
    assert {by_key[k]["status"] for k in reasons} == {"failed_to_download"}
    assert "truncated" in by_key["000001"]["url"]  # the bad line's text, to find it by
    assert '"caption":"no url"' in by_key["000010"]["url"]
    capsys.readouterr()
    assert main(argv) == 0
    assert "5 rows skipped (already recorded)" in capsys.readouterr().out


def test_a_list_damaged_part_way_keeps_the_rows_before_it(
    images: ImageServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = make_url_list(images.base_url, 600, seed=19)
    whole = gzip.compress(("\n".join(urls) + "\n").encode())
    damaged = tmp_path / "urls.txt.gz"
    damaged.write_bytes(whole[: len(whole) * 2 // 3])  # cut off: a truncated download
    out = tmp_path / "out"
    argv = [
        "download",
        f"--url_list={damaged}",
        "--input_format=txt.gz",
        f"--output_folder={out}",
        "--image_size=32",
        "--progress=False",
        "--allowed_networks=127.0.0.1/32",  # the local image server
    ]
    assert main(argv) == 2
    printed = capsys.readouterr()
    assert "urls.txt.gz: unreadable after" in printed.err and "run the same command" in printed.err
    index = SqliteIndex(out / "index.sqlite")
    try:
        recorded = sum(index.status_counts().values())
    finally:
        index.close()
    assert 0 < recorded < len(urls)
    assert main(argv) == 2  # a rerun on the same damaged list redoes nothing
    assert f"{recorded} rows skipped (already recorded)" in capsys.readouterr().out


def test_a_missing_list_is_one_error_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for url_list in (tmp_path / "nope.txt", tmp_path):  # missing; a folder without lists
        out = tmp_path / "out"
        assert main(["download", f"--url_list={url_list}", f"--output_folder={out}"]) == 2
        assert capsys.readouterr().err.startswith("img2dataset: ")
        assert not out.exists()
