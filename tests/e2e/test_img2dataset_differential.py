"""Differential test against img2dataset 1.47 itself (`.venv-bench`, `make bench` installs it):
the same small lists from the local image server, downloaded by both with the same command line,
give the same layout: the same paths and file names, byte-identical per-sample json files and
captions, the same parquet schema and rows (row for row, in key order), the same stats keys and
counts. Only the image bytes differ (two resizers): their presence and pixel sizes are compared.
`tfrecord` is left out: img2dataset needs TensorFlow to write it, which its venv lacks.

Both tools run at once (img2dataset's runs as subprocesses), ~15 s in all: `make diff`, which
installs `.venv-bench` first."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from i2d_cli.main import main
from i2d_imageserver import ImageServer

ROOT = Path(__file__).resolve().parents[2]
IMG2DATASET = ROOT / ".venv-bench" / "bin" / "img2dataset"

# Runs with `make diff` (which installs img2dataset 1.47), not in `make test`.
pytestmark = pytest.mark.differential

COMMON = ["--number_sample_per_shard=10", "--image_size=64", "--processes_count=1",
          "--thread_count=8"]  # fmt: skip
# name -> (list file, its flags)
CASES = {
    "files": ("urls.txt", ["--output_format=files"]),
    "parquet": ("urls.txt", ["--output_format=parquet"]),
    "dummy": ("urls.txt", ["--output_format=dummy"]),
    "csv_files": (
        "urls.csv",
        [
            "--output_format=files",
            "--input_format=csv",
            "--caption_col=text",
            "--save_additional_columns=[license,source]",
        ],
    ),
}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """Every case downloaded by img2dataset (into theirs/) and by this tool (into ours/)."""
    root = tmp_path_factory.mktemp("differential")
    with ImageServer() as images:
        urls = [
            images.url_for(8100 + n, 120 + 3 * n, 90 + n, fault="missing" if n % 7 == 3 else None)
            for n in range(25)
        ]
        (root / "urls.txt").write_text("\n".join(urls) + "\n")
        rows = io.StringIO()
        writer = csv.writer(rows)
        writer.writerow(["url", "text", "license", "source"])
        for n, url in enumerate(urls):
            writer.writerow([url, f"a photo, number {n}", f"cc-by-{n % 3}", f"site-{n % 2}"])
        (root / "urls.csv").write_text(rows.getvalue())
        theirs = {}
        for name, (lst, flags) in CASES.items():
            where = [f"--url_list={root / lst}", f"--output_folder={root / 'theirs' / name}"]
            theirs[name] = subprocess.Popen(
                [str(IMG2DATASET), *where, *COMMON, *flags],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=root,
            )
        try:
            for name, (lst, flags) in CASES.items():
                ours = [f"--url_list={root / lst}", f"--output_folder={root / 'ours' / name}"]
                local = ["--progress=False", "--allowed_networks=127.0.0.1/32"]
                assert main([*ours, *COMMON, *flags, *local]) == 0
            for name, proc in theirs.items():
                _, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, f"img2dataset {name}: {err.decode()[-2000:]}"
        finally:
            for proc in theirs.values():
                if proc.poll() is None:
                    proc.kill()
        yield root / "theirs", root / "ours"


def files(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not p.relative_to(folder).as_posix().startswith("_")
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_layout_as_img2dataset(outputs: tuple[Path, Path], case: str) -> None:
    theirs, ours = outputs[0] / case, outputs[1] / case
    paths = files(theirs)
    assert paths, "img2dataset wrote nothing"
    assert files(ours) == paths  # same paths and names, nothing more
    assert sorted(p.name for p in ours.iterdir() if p.is_dir()) == sorted(
        [p.name for p in theirs.iterdir() if p.is_dir()] + ["_segments"]
    )
    for path in paths:
        a, b = theirs / path, ours / path
        if path.endswith("_stats.json"):
            sa, sb = json.loads(a.read_text()), json.loads(b.read_text())
            assert list(sb) == list(sa), path
            for k in ("count", "successes", "failed_to_download", "failed_to_resize"):
                assert sb[k] == sa[k], (path, k)
            assert sb["status_dict"] == sa["status_dict"], path
        elif path.endswith((".json", ".txt")):
            assert b.read_text() == a.read_text(), path  # byte for byte
        elif path.endswith(".jpg"):
            assert Image.open(b).size == Image.open(a).size, path
        elif path.endswith(".parquet"):
            ta, tb = pq.read_table(a), pq.read_table(b)
            assert tb.schema.names == ta.schema.names, path
            assert tb.schema.types == ta.schema.types, path
            ra = sorted(ta.to_pylist(), key=lambda r: r["key"])
            rb = tb.to_pylist()  # ours are in key order already
            if "jpg" in ta.column_names:
                for x, y in zip(ra, rb, strict=True):
                    ia, ib = x.pop("jpg"), y.pop("jpg")
                    assert (ia is None) == (ib is None)
                    if ia is not None:
                        assert Image.open(io.BytesIO(ib)).size == Image.open(io.BytesIO(ia)).size
            assert rb == ra, path
        else:
            raise AssertionError(f"unexpected file {path}")
