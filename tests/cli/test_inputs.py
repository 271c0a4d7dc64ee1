"""Url lists in every img2dataset input format become the same rows."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from i2d_cli.inputs import InputError, RowReader, carried_columns, count_rows
from i2d_fetcher.options import FetchOptions

ROWS = [
    {"url": "http://127.0.0.1/a.jpg", "text": "a cat", "license": "cc-by"},
    {"url": "http://127.0.0.1/b.jpg", "text": "ünïcode, with comma", "license": "cc0"},
]


def write(fmt: str, path: Path) -> None:
    base = fmt.removesuffix(".gz")
    if base in ("csv", "tsv"):
        with path.open("w", newline="") as f:
            w = csv.DictWriter(
                f, fieldnames=list(ROWS[0]), delimiter="," if base == "csv" else "\t"
            )
            w.writeheader()
            w.writerows(ROWS)
    elif base == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif base == "json":
        path.write_text(json.dumps(ROWS))
    elif base == "parquet":
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    if fmt.endswith(".gz"):
        data = path.read_bytes()
        path.write_bytes(gzip.compress(data))


@pytest.mark.parametrize(
    "fmt", ["csv", "csv.gz", "tsv", "tsv.gz", "json", "json.gz", "jsonl", "jsonl.gz", "parquet"]
)
def test_columns_map_to_rows(fmt: str, tmp_path: Path) -> None:
    path = tmp_path / f"list.{fmt}"
    write(fmt, path)
    reader = RowReader(fmt, url_col="url", caption_col="text", save_additional_columns=["license"])
    rows = list(reader.rows(path))
    assert [(r.url, r.caption, r.extra) for r in rows] == [
        (r["url"], r["text"], {"license": r["license"]}) for r in ROWS
    ]


def test_txt_skips_blank_lines_and_reads_folders(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("http://127.0.0.1/1.jpg\n\n  http://127.0.0.1/2.jpg  \n")
    (tmp_path / "b.txt").write_text("http://127.0.0.1/3.jpg\n")
    (tmp_path / "ignored.csv").write_text("url\nhttp://127.0.0.1/x.jpg\n")
    urls = [r.url for r in RowReader("txt").rows(tmp_path)]
    assert urls == [f"http://127.0.0.1/{i}.jpg" for i in (1, 2, 3)]
    assert count_rows(tmp_path / "b.txt", "txt") == 1


def test_missing_column_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    write("csv", path)
    with pytest.raises(InputError, match="missing column"):
        list(RowReader("csv", url_col="URL").rows(path))
    with pytest.raises(InputError, match="does not exist"):
        list(RowReader("txt").rows(tmp_path / "nope.txt"))
    with pytest.raises(InputError, match="unknown input_format"):
        RowReader("xml")


def test_columns_the_fetch_options_read_travel_with_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "list.parquet"
    rows = [{"url": "http://127.0.0.1/a.jpg", "faces": [[0.1, 0.1, 0.2, 0.2]], "h": "ab"}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    opts = FetchOptions(bbox_col="faces", verify_hash=("h", "sha256"))
    cols = carried_columns(["h"], opts)
    assert cols == ["h", "faces"]
    [row] = RowReader("parquet", save_additional_columns=cols).rows(path)
    assert row.extra == {"h": "ab", "faces": [[0.1, 0.1, 0.2, 0.2]]}
    with pytest.raises(InputError, match="missing column"):
        list(RowReader("parquet", save_additional_columns=["nope"]).rows(path))
