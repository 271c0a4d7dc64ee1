"""`--enable_wandb`: img2dataset's figures (logger.py: worker and total speeds, ratios and
counts per shard, the status table) reach Weights & Biases, from the segments this run
committed. With a stand-in `wandb` module every logged value is checked; with the real package
(when installed) the run is written offline (WANDB_MODE=offline); without wandb, a one-line
error says how to install it, before anything is written."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from i2d_cli.compat import IMG2DATASET_ARGUMENTS
from i2d_cli.main import main
from i2d_imageserver import ImageServer
from i2d_segments.index.sqlite import SqliteIndex

ROWS = 30
PER_SHARD = 10
MISSING = (3, 14, 25)  # rows answered 404


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


def url_list(images: ImageServer, folder: Path) -> Path:
    urls = [
        images.url_for(9000 + n, 100, 80, fault="missing" if n in MISSING else None)
        for n in range(ROWS)
    ]
    path = folder / "urls.txt"
    path.write_text("\n".join(urls) + "\n")
    return path


def run(urls: Path, out: Path, *flags: str) -> int:
    return main(
        [
            f"--url_list={urls}",
            f"--output_folder={out}",
            f"--number_sample_per_shard={PER_SHARD}",
            "--image_size=32",
            "--processes_count=1",
            "--progress=False",
            "--allowed_networks=127.0.0.1/32",
            *flags,
        ]
    )


class FakeRun:
    def __init__(self) -> None:
        self.logged: list[dict[str, Any]] = []
        self.finished: list[int] = []

    def log(self, data: dict[str, Any]) -> None:
        self.logged.append(data)

    def finish(self, exit_code: int = 0) -> None:
        self.finished.append(exit_code)


class FakeTable:
    def __init__(self, columns: list[str], data: list[list[Any]]) -> None:
        self.columns = columns
        self.data = data


@pytest.fixture
def fake_wandb(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """A `wandb` module recording what it is given (the real one is not needed)."""
    record = types.SimpleNamespace(inits=[], runs=[])
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)

    def init(**kwargs: Any) -> FakeRun:
        record.inits.append(kwargs)
        record.runs.append(FakeRun())
        return record.runs[-1]

    module.init = init  # type: ignore[attr-defined]
    module.Table = FakeTable  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", module)
    return record


def test_img2dataset_s_figures_are_logged(
    images: ImageServer, tmp_path: Path, fake_wandb: types.SimpleNamespace
) -> None:
    urls = url_list(images, tmp_path)
    out = tmp_path / "out"
    assert run(urls, out, "--enable_wandb", "--wandb_project=my-project") == 0

    assert len(fake_wandb.inits) == 1
    init = fake_wandb.inits[0]
    assert init["project"] == "my-project"
    config = init["config"]
    assert list(config) == list(IMG2DATASET_ARGUMENTS)  # img2dataset's arguments, its order
    assert config["url_list"] == str(urls) and config["enable_wandb"] is True
    assert config["number_sample_per_shard"] == PER_SHARD and config["image_size"] == 32

    run_ = fake_wandb.runs[0]
    assert run_.finished == [0]
    workers = [d for d in run_.logged if any(k.startswith("worker/") for k in d)]
    totals = [d for d in run_.logged if any(k.startswith("total/") for k in d)]
    tables = [d["status"] for d in run_.logged if "status" in d]
    names = ["img_per_sec", "success", "failed_to_download", "failed_to_resize", "count"]
    index = SqliteIndex(out / "index.sqlite")
    try:
        segments = index.segments()
    finally:
        index.close()
    # one "worker" figure set per segment of this run (img2dataset: per shard), then the total
    assert len(workers) == len(totals) == len(segments) == ROWS // PER_SHARD
    for d in workers:
        assert sorted(d) == sorted(f"worker/{n}" for n in names)
        assert d["worker/count"] == PER_SHARD
        assert d["worker/success"] + d["worker/failed_to_download"] == pytest.approx(1.0)
    assert [d["total/count"] for d in totals] == [10, 20, 30]
    last = totals[-1]
    assert sorted(last) == sorted(f"total/{n}" for n in names)
    assert last["total/success"] == pytest.approx((ROWS - len(MISSING)) / ROWS)
    assert last["total/failed_to_download"] == pytest.approx(len(MISSING) / ROWS)
    assert last["total/failed_to_resize"] == 0
    assert last["total/img_per_sec"] > 0
    # the status table: at least once at the end, img2dataset's columns
    table = tables[-1]
    assert table.columns == ["status", "frequency", "count"]
    assert table.data == [
        ["success", (ROWS - len(MISSING)) / ROWS, ROWS - len(MISSING)],
        ["HTTP Error 404: Not Found", len(MISSING) / ROWS, len(MISSING)],
    ]

    # A rerun logs its own segments only: none (every row is recorded already).
    assert run(urls, out, "--enable_wandb") == 0
    assert fake_wandb.inits[1]["project"] == "img2dataset"  # img2dataset's default project
    assert fake_wandb.runs[1].logged == [] and fake_wandb.runs[1].finished == [0]


def test_without_wandb_a_one_line_error_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/a.jpg\n")
    out = tmp_path / "out"
    assert run(tmp_path / "urls.txt", out, "--enable_wandb", "True") == 2
    err = capsys.readouterr().err
    assert err == (
        "img2dataset: invalid option --enable_wandb: wandb is not installed: pip install wandb "
        "(or the extra: pip install 'img2dataset-segments[wandb]')\n"
    )
    assert not out.exists()


def test_the_real_wandb_logs_offline(
    images: ImageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    urls = url_list(images, tmp_path)
    assert run(urls, tmp_path / "out", "--enable_wandb", "--output_format=files") == 0
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (log_file,) = run_dir.glob("run-*.wandb")
    data = log_file.read_bytes()
    for name in ("worker/img_per_sec", "worker/count", "total/success", "total/count"):
        assert name.encode() in data
    (table_file,) = (run_dir / "files" / "media" / "table").glob("status_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["status", "frequency", "count"]
    assert ["success", (ROWS - len(MISSING)) / ROWS, ROWS - len(MISSING)] in table["data"]
