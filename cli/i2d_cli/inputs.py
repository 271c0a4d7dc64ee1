"""Read url lists as img2dataset does (a file or a folder of files; txt, csv, tsv, json, jsonl,
parquet; the text formats also gzipped), streaming: rows are yielded as they are read, so a
100M-row list costs no more memory than a small one (parquet is read one row group at a time).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pyarrow.parquet as pq

from i2d_cli.errors import InputError
from i2d_fetcher.options import FetchOptions
from i2d_segments.records import UrlRow

INPUT_FORMATS = (
    "txt",
    "txt.gz",
    "csv",
    "csv.gz",
    "tsv",
    "tsv.gz",
    "json",
    "json.gz",
    "jsonl",
    "jsonl.gz",
    "parquet",
)


def input_files(url_list: str | Path, input_format: str) -> list[Path]:
    path = Path(url_list)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(input_format))
        if not files:
            raise InputError(f"no *.{input_format} file in folder {path}")
        return files
    if not path.is_file():
        raise InputError(f"url_list {path} does not exist")
    return [path]


def _open_text(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


class RowReader:
    """Turns input records into `UrlRow`s with img2dataset's column options."""

    def __init__(
        self,
        input_format: str = "txt",
        url_col: str = "url",
        caption_col: str | None = None,
        save_additional_columns: Sequence[str] | None = None,
    ) -> None:
        if input_format not in INPUT_FORMATS:
            raise InputError(f"unknown input_format {input_format!r}; one of {INPUT_FORMATS}")
        self.input_format = input_format
        self.url_col = url_col
        self.caption_col = caption_col
        self.extra_cols = list(save_additional_columns or [])

    def rows(self, url_list: str | Path) -> Iterator[UrlRow]:
        for path in input_files(url_list, self.input_format):
            yield from self._file_rows(path)

    def _file_rows(self, path: Path) -> Iterator[UrlRow]:
        fmt = self.input_format.removesuffix(".gz")
        if fmt == "txt":
            with _open_text(path) as f:
                for line in f:
                    url = line.strip()
                    if url:
                        yield UrlRow(url=url)
        elif fmt in ("csv", "tsv"):
            with _open_text(path) as f:
                reader = csv.DictReader(f, delimiter="," if fmt == "csv" else "\t")
                self._check_columns(path, reader.fieldnames or [])
                for rec in reader:
                    row = self._row(rec)
                    if row is not None:
                        yield row
        elif fmt == "jsonl":
            with _open_text(path) as f:
                for line in f:
                    if line.strip():
                        row = self._row(json.loads(line))
                        if row is not None:
                            yield row
        elif fmt == "json":
            # A JSON array has no streaming boundary short of a full parser; img2dataset loads
            # it whole too. Use jsonl for large lists.
            with _open_text(path) as f:
                records = json.load(f)
            if not isinstance(records, list):
                raise InputError(f"{path}: a json input must hold an array of objects")
            for rec in records:
                row = self._row(rec)
                if row is not None:
                    yield row
        else:  # parquet
            pf = pq.ParquetFile(path)
            self._check_columns(path, pf.schema_arrow.names)
            columns = [c for c in self._wanted() if c in pf.schema_arrow.names]
            for batch in pf.iter_batches(batch_size=10_000, columns=columns):
                for rec in batch.to_pylist():
                    row = self._row(rec)
                    if row is not None:
                        yield row

    def _wanted(self) -> list[str]:
        cols = [self.url_col, *self.extra_cols]
        if self.caption_col:
            cols.append(self.caption_col)
        cols.append("key")
        return cols

    def _check_columns(self, path: Path, names: Sequence[str]) -> None:
        missing = [c for c in (self.url_col, self.caption_col, *self.extra_cols) if c]
        missing = [c for c in missing if c not in names]
        if missing:
            raise InputError(f"{path}: missing column(s) {missing}; columns are {list(names)}")

    def _row(self, rec: Any) -> UrlRow | None:
        if not isinstance(rec, dict):
            return None
        url = rec.get(self.url_col)
        if not isinstance(url, str) or not url.strip():
            return None
        caption = rec.get(self.caption_col) if self.caption_col else None
        key = rec.get("key")
        extra = {c: rec.get(c) for c in self.extra_cols}
        return UrlRow(
            url=url.strip(),
            caption=None if caption is None else str(caption),
            key=None if key is None else str(key),
            extra=extra,
        )


def carried_columns(save_additional_columns: Sequence[str] | None, opts: FetchOptions) -> list[str]:
    """The input columns each row carries to the fetcher: the user's additional columns, and
    those the fetch options read (bbox_col, verify_hash's column), which img2dataset also
    keeps in the metadata."""
    cols = list(save_additional_columns or [])
    if opts.bbox_col:
        cols.append(opts.bbox_col)
    if opts.verify_hash is not None:
        cols.append(opts.verify_hash[0])
    return list(dict.fromkeys(cols))


def count_rows(url_list: str | Path, input_format: str) -> int | None:
    """A cheap total for the progress bar: lines of txt lists, rows of parquet; else None."""
    files = input_files(url_list, input_format)
    if input_format == "parquet":
        return sum(pq.ParquetFile(p).metadata.num_rows for p in files)
    if input_format != "txt":
        return None
    total = 0
    for p in files:
        with p.open("rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):  # type: ignore[misc]
                total += chunk.count(b"\n")
    return total
