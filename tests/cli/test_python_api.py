"""img2dataset's Python API: `from img2dataset import download` takes img2dataset 1.47's
arguments with its defaults (its default layout, `files`, included), this project's options as
keyword arguments too, refuses an unknown keyword as Python does, and downloads for real."""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from PIL import Image

from i2d_cli.compat import IMG2DATASET_ARGUMENTS
from i2d_imageserver import ImageServer
from img2dataset import download

# img2dataset 1.47's `download` signature (img2dataset/main.py), name -> default.
IMG2DATASET_DEFAULTS = {
    "url_list": inspect.Parameter.empty,
    "image_size": 256,
    "output_folder": "images",
    "processes_count": 1,
    "resize_mode": "border",
    "resize_only_if_bigger": False,
    "upscale_interpolation": "lanczos",
    "downscale_interpolation": "area",
    "encode_quality": 95,
    "encode_format": "jpg",
    "skip_reencode": False,
    "output_format": "files",
    "input_format": "txt",
    "url_col": "url",
    "caption_col": None,
    "bbox_col": None,
    "thread_count": 256,
    "number_sample_per_shard": 10000,
    "extract_exif": True,
    "save_additional_columns": None,
    "timeout": 10,
    "enable_wandb": False,
    "wandb_project": "img2dataset",
    "oom_shard_count": 5,
    "compute_hash": "sha256",
    "verify_hash": None,
    "distributor": "multiprocessing",
    "subjob_size": 1000,
    "retries": 0,
    "disable_all_reencoding": False,
    "min_image_size": 0,
    "max_image_area": float("inf"),
    "max_aspect_ratio": float("inf"),
    "incremental_mode": "incremental",
    "max_shard_retry": 1,
    "user_agent_token": None,
    "disallowed_header_directives": None,
}
# this project's own options
LOCAL: dict[str, Any] = {"allowed_networks": "127.0.0.1/32", "progress": False}


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


def test_the_signature_is_img2dataset_s() -> None:
    params = inspect.signature(download).parameters
    own = {n: p.default for n, p in params.items() if p.kind is not p.VAR_KEYWORD}
    assert list(own) == list(IMG2DATASET_DEFAULTS) == list(IMG2DATASET_ARGUMENTS)
    assert own == IMG2DATASET_DEFAULTS
    assert [p.kind for p in params.values()][-1] is inspect.Parameter.VAR_KEYWORD
    assert importlib.import_module("img2dataset.main").download is download


def test_an_unknown_argument_is_python_s_type_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(
        TypeError, match=r"^download\(\) got an unexpected keyword argument 'thread'$"
    ):
        download(url_list=str(tmp_path / "urls.txt"), output_folder=str(out), thread=4)
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'url_list'"):
        download(output_folder=str(out))  # type: ignore[call-arg]
    assert not out.exists()


def test_an_invalid_value_is_a_value_error_naming_the_argument(tmp_path: Path) -> None:
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/a.jpg\n")
    out = tmp_path / "out"
    common: dict[str, Any] = {"url_list": str(tmp_path / "urls.txt"), "output_folder": str(out)}
    with pytest.raises(ValueError, match=r"^invalid argument resize_mode: Input should be"):
        download(**common, resize_mode="stretch")
    with pytest.raises(ValueError, match=r"^invalid argument output_format: .*'tar'.*files"):
        download(**common, output_format="tar")
    with pytest.raises(ValueError, match=r"invalid argument distributor: .*serve"):
        download(**common, distributor="pyspark")
    assert not out.exists()


def test_enable_wandb_without_wandb_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # as if not installed
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/a.jpg\n")
    out = tmp_path / "out"
    with pytest.raises(
        ValueError, match=r"enable_wandb: wandb is not installed: pip install wandb"
    ):
        download(url_list=str(tmp_path / "urls.txt"), output_folder=str(out), enable_wandb=True)
    assert not out.exists()


def test_a_real_download_writes_img2dataset_s_files_layout_and_resumes(
    images: ImageServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = [images.url_for(7000 + n, 120 + n, 90) for n in range(12)]
    urls[4] = images.url_for(7004, fault="missing")
    (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
    out = tmp_path / "images"
    returned = download(  # type: ignore[func-returns-value]
        str(tmp_path / "urls.txt"),  # positional, as img2dataset's first argument
        image_size=64,
        output_folder=str(out),
        number_sample_per_shard=5,
        **LOCAL,
    )
    assert returned is None
    assert "12 rows fetched" in capsys.readouterr().out
    # img2dataset's default output_format is files: its layout, the segments apart
    top = sorted(p.name for p in out.iterdir())
    assert top == [
        "00000", "00000.parquet", "00000_stats.json",
        "00001", "00001.parquet", "00001_stats.json",
        "00002", "00002.parquet", "00002_stats.json",
        "_segments",
    ]  # fmt: skip
    # key: shard x 10 + row (1 digit for 5 rows a shard), on 5 + 1 digits
    assert sorted(p.name for p in (out / "00000").iterdir()) == [
        f"00000{i}.{ext}" for i in (0, 1, 2, 3) for ext in ("jpg", "json")
    ]
    assert sorted(p.name for p in (out / "00002").iterdir()) == [
        "000020.jpg", "000020.json", "000021.jpg", "000021.json"
    ]  # fmt: skip
    meta = json.loads((out / "00000" / "000001.json").read_text())
    assert list(meta) == [
        "url", "key", "status", "error_message", "width", "height",
        "original_width", "original_height", "exif", "sha256",
    ]  # fmt: skip
    assert meta["url"] == urls[1] and meta["key"] == "000001" and meta["status"] == "success"
    assert (meta["original_width"], meta["original_height"]) == (121, 90)
    assert Image.open(out / "00000" / "000001.jpg").size == (64, 64)  # border, img2dataset's
    table = pq.read_table(out / "00000.parquet")
    assert table.column("key").to_pylist() == [f"00000{i}" for i in range(5)]
    assert table.column("status").to_pylist()[4] == "failed_to_download"
    stats = json.loads((out / "00000_stats.json").read_text())
    assert (stats["count"], stats["successes"], stats["failed_to_download"]) == (5, 4, 1)
    assert (out / "_segments" / "index.sqlite").is_file()

    # Called again: nothing is fetched again and the layout is left as it is.
    stamp = (out / "00001_stats.json").stat().st_mtime_ns
    download(str(tmp_path / "urls.txt"), image_size=64, output_folder=str(out),
             number_sample_per_shard=5, **LOCAL)  # fmt: skip
    assert "0 rows fetched" in capsys.readouterr().out
    assert (out / "00001_stats.json").stat().st_mtime_ns == stamp
