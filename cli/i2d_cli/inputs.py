"""Read url lists as img2dataset does (a file or a folder of files; txt, csv, tsv, json, jsonl,
parquet; the text formats also gzipped), streaming: rows are yielded as they are read, so a
100M-row list costs no more memory than a small one (parquet is read one row group at a time).
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from i2d_cli.errors import InputError
from i2d_fetcher.options import FetchOptions
from i2d_segments import safejson
from i2d_segments.ids import list_id_for, row_id
from i2d_segments.records import UnparsedRow, UrlRow, row_content

if TYPE_CHECKING:
    import pyarrow as pa

# Dataset-wide shard numbers of a list's shards (Index.allocate_shard): (list id, local shard)
# -> shard. Without one, shard ids run on across the files of one url_list, as in img2dataset.
ShardAllocator = Callable[[str, int], int]

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
    if not path.exists():
        raise InputError(f"url_list {path} does not exist")
    if not path.is_file():
        raise InputError(f"url_list {path} is not a file or a folder")
    return [path]


# What reading a damaged list raises: not gzip, truncated gzip, corrupt deflate data, a csv
# field over the limit, a parquet file that does not parse.
_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, csv.Error)


def _read_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean "this list cannot be read". pyarrow (a third of a second to import)
    is loaded by parquet lists only, so its errors count once it is loaded: `enqueue` and
    `download` of a txt, csv or json list start without it."""
    # Not yet there while another thread imports pyarrow (a module is in sys.modules from
    # the start of its import): nothing of it can be reading the list then.
    arrow_error = getattr(sys.modules.get("pyarrow"), "ArrowException", None)
    return _READ_ERRORS if arrow_error is None else (*_READ_ERRORS, arrow_error)


# A caption may be long, but a missing closing quote must not swallow the rest of the file
# into one field: 16 MiB, well past any caption, far under the memory of a worker.
csv.field_size_limit(16 << 20)


def _open_text(path: Path) -> IO[str]:
    # utf-8-sig: a byte order mark (spreadsheet exports write one) is not part of the first
    # url or column name. surrogateescape: bytes that are not UTF-8 fail their own row
    # (`_utf8`), not the whole list.
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="")
    return path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="")


NOT_UTF8 = "not UTF-8 text"
# JSON rows nested too deep for the rest of the pipeline (safejson), or that Python's json
# cannot read (an integer of 5000 digits), are failed samples of their own, like bad syntax.
INVALID_JSON = "invalid JSON row"
TOO_DEEP_JSON = f"{INVALID_JSON}: {safejson.TOO_DEEP}"
TOO_DEEP_VALUE = f"a column value {safejson.TOO_DEEP}"
# What a failed row keeps of its text (its sample's `url` shows as much): enough to find it.
HELD_TEXT = 4096


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Img2datasetKeys:
    """img2dataset's `key` of each input row. Each file is cut into shards of
    `number_sample_per_shard` rows, shard ids running on across the files of a folder; the key
    is shard id x 10^ceil(log10(per shard)) + the row's place in its shard, zero-padded to
    `oom_shard_count` more digits (row 5 of shard 1 with the defaults: `000010005`)."""

    def __init__(
        self,
        number_sample_per_shard: int,
        oom_shard_count: int = 5,
        shards: ShardAllocator | None = None,
    ) -> None:
        if number_sample_per_shard < 1:
            raise InputError("number_sample_per_shard must be at least 1")
        self.per_shard = number_sample_per_shard
        self.row_digits = math.ceil(math.log10(number_sample_per_shard))
        self.width = oom_shard_count + self.row_digits
        self.first_shard = 0  # of the file being read
        # With an allocator each file's shards are numbered dataset-wide (the index keeps
        # them), so keys stay unique across lists, enqueues and downloads into one dataset.
        self.shards = shards
        self.list_key = ""
        self._allocated: dict[int, int] = {}

    def start_file(self, file_id: str) -> None:
        self.list_key = f"{file_id}/{self.per_shard}"
        self._allocated = {}

    def key(self, position: int) -> str:
        """The key of the row at `position` (0-based) in the current file."""
        shard, row = divmod(position, self.per_shard)
        if self.shards is None:
            shard += self.first_shard
        else:
            if shard not in self._allocated:
                self._allocated[shard] = self.shards(self.list_key, shard)
            shard = self._allocated[shard]
        value = shard * 10**self.row_digits + row
        return f"{value:0{self.width}d}"

    def end_file(self, rows: int) -> None:
        self.first_shard += math.ceil(rows / self.per_shard)


class RowReader:
    """Turns input records into `UrlRow`s with img2dataset's column options, each with its
    img2dataset key. A record without a usable url becomes an `UnparsedRow`, which the fetcher
    records as a failed sample."""

    def __init__(
        self,
        input_format: str = "txt",
        url_col: str = "url",
        caption_col: str | None = None,
        save_additional_columns: Sequence[str] | None = None,
        number_sample_per_shard: int = 10_000,
        oom_shard_count: int = 5,
    ) -> None:
        if input_format not in INPUT_FORMATS:
            raise InputError(f"unknown input_format {input_format!r}; one of {INPUT_FORMATS}")
        self.input_format = input_format
        self.url_col = url_col
        self.caption_col = caption_col
        self.extra_cols = list(save_additional_columns or [])
        self.number_sample_per_shard = number_sample_per_shard
        self.oom_shard_count = oom_shard_count

    def rows(
        self, url_list: str | Path, shards: ShardAllocator | None = None
    ) -> Iterator[UrlRow | UnparsedRow]:
        """The rows of every file of `url_list`, each identified by its place in its file
        (ids.row_id: the file's identity, the row's number, its content) unless it carries its
        own `key`; `shards` numbers the files' shards dataset-wide (img2dataset's `key`)."""
        keys = Img2datasetKeys(self.number_sample_per_shard, self.oom_shard_count, shards)
        for path in input_files(url_list, self.input_format):
            list_id = list_id_for(path)
            # Keys: the file as it is now (a changed file numbers its new rows in new shards;
            # the rows it kept are recorded with their keys and skipped).
            stat = path.stat()
            keys.start_file(f"{list_id}/{stat.st_size}/{stat.st_mtime_ns}")
            position = 0
            try:
                for position, rec in enumerate(self._records(path), start=1):
                    if type(rec) is str:
                        # A txt line (checked UTF-8, so the row holds it as it is): its
                        # identity is known before the row is made, made once.
                        rid = row_id(list_id, position - 1, rec.encode("utf-8"))
                        yield UrlRow(url=rec, row_key=keys.key(position - 1), row_id=rid)
                        continue
                    row = self._row(rec, keys.key(position - 1))
                    yield _placed(row, list_id, position - 1)
            except _read_errors() as e:
                raise InputError(f"{path}: unreadable after {position} rows: {e}") from e
            keys.end_file(position)

    def _records(self, path: Path) -> Iterator[Any]:
        """The file's records in order: a url string per non-blank txt line, else objects."""
        fmt = self.input_format.removesuffix(".gz")
        if fmt == "txt":
            with _open_text(path) as f:
                for line in f:
                    if line.strip():
                        text = line.strip()
                        yield text if _utf8(text) else _Invalid(text, NOT_UTF8)
        elif fmt in ("csv", "tsv"):
            with _open_text(path) as f:
                reader = csv.DictReader(f, delimiter="," if fmt == "csv" else "\t")
                self._check_columns(path, reader.fieldnames or [])
                yield from reader
        elif fmt == "jsonl":
            with _open_text(path) as f:
                for line in f:
                    if not line.strip():
                        continue
                    if not _utf8(line):
                        yield _Invalid(line.strip(), NOT_UTF8)
                        continue
                    try:
                        yield safejson.loads(line.strip())
                    except safejson.JsonRejected as e:  # too deep, a number Python cannot read
                        yield _TooDeep(line.strip(), f"{INVALID_JSON}: {e}")
                    except json.JSONDecodeError as e:
                        yield _Invalid(line.strip(), f"{INVALID_JSON}: {e}")
        elif fmt == "json":
            # A JSON document has no streaming boundary short of a full parser; img2dataset
            # loads it whole too. Use jsonl for large lists.
            with _open_text(path) as f:
                text = f.read()
            columns, records = _json_frame(path, text)
            if columns:  # an object of columns: they are known before any row
                self._check_columns(path, columns)
            yield from records
        else:  # parquet
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            self._check_columns(path, pf.schema_arrow.names)
            columns = [c for c in self._wanted() if c in pf.schema_arrow.names]
            # Nested columns (structs of structs...) may hold rows deeper than the pipeline
            # takes; only a schema that deep needs each row checked.
            deep = 1 + max((_type_depth(pf.schema_arrow.field(c).type) for c in columns), default=0)
            for batch in pf.iter_batches(batch_size=10_000, columns=columns):
                if deep <= safejson.MAX_DEPTH:
                    yield from batch.to_pylist()
                    continue
                for rec in batch.to_pylist():
                    too_deep = safejson.value_too_deep(rec)
                    yield _TooDeep(rec, TOO_DEEP_VALUE) if too_deep else rec

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

    def _row(self, rec: Any, row_key: str) -> UrlRow | UnparsedRow:
        if isinstance(rec, str):
            return UrlRow(url=rec, row_key=row_key)
        if isinstance(rec, _Invalid):
            return UnparsedRow.of(rec.error, row_key, {"line": rec.text})
        if isinstance(rec, _TooDeep):
            return self._too_deep(rec, row_key)
        if not isinstance(rec, dict):
            return UnparsedRow.of("the row is not an object", row_key, {"record": rec})
        url = rec.get(self.url_col)
        key = _key(rec.get("key"))
        bad = None
        if not isinstance(url, str) or not url.strip():
            bad = f"no {self.url_col!r} string in the row"
        elif not _utf8(url):
            bad = NOT_UTF8
        if bad is not None:
            # The row's own key, when it has one, stays its metadata key: users find it by it.
            held = {k: v for k, v in rec.items() if k not in ("url", self.url_col)}
            return UnparsedRow.of(bad, key or row_key, {**held, "not_a_url": url})
        assert isinstance(url, str)  # for mypy: `bad` covers every other case
        caption = rec.get(self.caption_col) if self.caption_col else None
        extra = {c: rec.get(c) for c in self.extra_cols}
        return UrlRow(
            url=url.strip(),
            caption=None if caption is None else str(caption),
            key=key,
            row_key=row_key,
            extra=extra,
        )

    def _too_deep(self, rec: _TooDeep, row_key: str) -> UnparsedRow:
        """A row holding a value nested too deep (or a number Python cannot read): a failed
        sample with its own key when it has a plain one, and its url or text to find it by;
        none of its nested values."""
        held: dict[str, Any] = {}
        if isinstance(rec.record, str):  # JSON text: what can be read of it without parsing
            fields = safejson.scalar_members(rec.record)
            held["line"] = rec.record[:HELD_TEXT]
        else:
            fields = rec.record if isinstance(rec.record, dict) else {}
        own = fields.get("key")
        key = None if isinstance(own, dict | list | tuple) else _key(own)
        url = fields.get(self.url_col)
        if isinstance(url, str) and not held:
            held["row_url"] = url[:HELD_TEXT]
        return UnparsedRow.of(rec.error, key or row_key, held)


# What pandas.read_json(file) (img2dataset's call) turns into a table, and so what a json list
# may hold.
JSON_SHAPES = (
    "a json input must hold an array of objects (or of arrays), or an object of columns"
    " (each an object keyed by row or an array), as pandas.read_json reads it"
)


def _json_frame(path: Path, text: str) -> tuple[list[str] | None, Iterator[Any]]:
    """The column names (None for an array of rows) and the records of a json list, in
    img2dataset's row order: the table pandas.read_json(file) makes of it (its default
    orient, "columns", is the DataFrame constructor on the parsed JSON):

    - an array of objects: a row per object (records); an array of arrays: a row per array,
      its columns named "0", "1"... (values); an array of single values: one column "0";
    - an object of objects, {"url": {"0": "http://...", "1": ...}, "caption": {...}}, as
      pandas writes with orient="columns" (SBU's list): a row per inner key, in the order the
      keys first appear (column by column; pandas does not sort them), each cell matched by
      its key, a cell a column lacks is null;
    - an object of arrays, {"url": [...], "caption": [...]}: a row per position (the arrays
      have one length);
    and in both, a column holding a single value repeats it in every row.

    An object of rows ({"0": {"url": ...}}, orient="index") or pandas' "split" layout is
    read column-wise as pandas reads it, so its url column is missing, as in img2dataset.
    Parsed whole at C speed; only if that fails on a value too deep for Python's json (or
    a number it cannot read) are the rows (or the cells of each column) split and parsed
    one by one, so such a row is a failed row and the others are read. Bad syntax or
    another shape is one error for the file, before any row."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not a valid JSON file: {e}") from None
    except (RecursionError, ValueError):
        try:
            value = _split_json(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not a valid JSON file: {e}") from None
    if isinstance(value, list):
        return None, _array_rows(value)
    if isinstance(value, dict):
        return list(value), _column_rows(path, value)
    raise InputError(f"{path}: {JSON_SHAPES}; it holds {_JSON_TYPES[type(value)]}")


_JSON_TYPES = {str: "a string", int: "a number", float: "a number", bool: "a boolean"}
_JSON_TYPES[type(None)] = "null"


def _array_rows(items: list[Any]) -> Iterator[Any]:
    records = any(isinstance(item, dict) for item in items)
    for item in items:
        if isinstance(item, _Rejected):
            yield _TooDeep(item.text, item.error)
            continue
        if isinstance(item, list):
            item = {str(i): v for i, v in enumerate(item)}
        elif not records and not isinstance(item, dict):
            item = {"0": item}  # pandas: an array of single values is one column "0"
        yield _checked(item)


def _column_rows(path: Path, columns: dict[str, Any]) -> Iterator[Any]:
    keyed = [c for c in columns.values() if isinstance(c, dict)]
    arrays = [c for c in columns.values() if isinstance(c, list)]
    labels: list[Any]
    if keyed and arrays:
        raise InputError(f"{path}: {JSON_SHAPES}; its columns mix objects and arrays")
    if keyed:
        labels = list(dict.fromkeys(label for column in keyed for label in column))
    elif arrays:
        lengths = sorted({len(column) for column in arrays})
        if len(lengths) > 1:
            raise InputError(f"{path}: {JSON_SHAPES}; its arrays differ in length {lengths}")
        labels = list(range(lengths[0]))
    elif columns:
        raise InputError(f"{path}: {JSON_SHAPES}; its columns are single values")
    else:
        labels = []
    return _assembled(columns, labels)


def _assembled(columns: dict[str, Any], labels: list[Any]) -> Iterator[Any]:
    for label in labels:
        rec: dict[str, Any] = {}
        rejected: _Rejected | None = None
        for name, column in columns.items():
            if isinstance(column, dict):
                cell = column.get(label)
            elif isinstance(column, list):
                cell = column[label]
            else:
                cell = column
            if isinstance(cell, _Rejected):
                rejected = rejected or cell
            else:
                rec[name] = cell
        # A row with a cell too deep keeps its other cells to be found by (its key, url).
        yield _checked(rec) if rejected is None else _TooDeep(rec, rejected.error)


def _checked(rec: Any) -> Any:
    deep = isinstance(rec, dict | list) and safejson.value_too_deep(rec)
    return _TooDeep(rec, TOO_DEEP_JSON) if deep else rec


def _split_json(text: str) -> Any:
    """`text` parsed as json.loads would, when that fails on a value too deep for Python's json
    or a number it cannot read: the rows of an array, or the cells of an object's columns,
    are parsed one by one, and one that cannot be is a `_Rejected` in its place."""
    start = len(text) - len(text.lstrip())
    if text.startswith("[", start):
        return [_split_value(text, offset, item) for offset, item in safejson.array_items(text)]
    if text.startswith("{", start):
        columns: dict[str, Any] = {}
        for offset, name, value in safejson.object_members(text):
            lead = offset + len(value) - len(value.lstrip())
            if value.lstrip().startswith("{"):
                columns[name] = {
                    label: _split_value(text, lead + at, cell)
                    for at, label, cell in _within(text, lead, safejson.object_members, value)
                }
            elif value.lstrip().startswith("["):
                columns[name] = [
                    _split_value(text, lead + at, cell)
                    for at, cell in _within(text, lead, safejson.array_items, value)
                ]
            else:
                columns[name] = _split_value(text, offset, value)
        return columns
    raise json.JSONDecodeError("Expecting '[' or '{'", text, start)


def _within(text: str, lead: int, split: Any, value: str) -> list[Any]:
    """`split(value)` of a value found at `lead` in `text`, its errors placed in `text`."""
    try:
        return list(split(value.strip()))
    except json.JSONDecodeError as e:
        raise json.JSONDecodeError(e.msg, text, lead + e.pos) from None


def _split_value(text: str, offset: int, value: str) -> Any:
    try:
        return safejson.loads(value)
    except safejson.JsonRejected as e:
        return _Rejected(value.strip(), f"{INVALID_JSON}: {e}")
    except json.JSONDecodeError as e:
        raise json.JSONDecodeError(e.msg, text, offset + e.pos) from None


def _type_depth(t: pa.DataType) -> int:
    """How many levels of lists/structs/maps an arrow type nests (0: a scalar)."""
    depth, level = 0, [t]
    while level:
        depth += 1
        level = [n.field(i).type for n in level for i in range(n.num_fields)]
    return depth - 1


def _placed(row: UrlRow | UnparsedRow, list_id: str, place: int) -> UrlRow | UnparsedRow:
    """`row` identified by its place in its list and what it is (its url and caption, not the
    columns a run chooses to carry, so a rerun with other options is the same rows); a row
    with its own key keeps it. A row that could not be read is identified by its place only."""
    if isinstance(row, UnparsedRow):
        rid = row_id(list_id, place, b"")
        return UnparsedRow(value=row.value[:-1] + b',"sample_id":"%s"}' % rid.encode())
    if row.key is not None:
        return row
    content = row_content(row.url, row.caption, None, {})
    return row.model_copy(update={"row_id": row_id(list_id, place, content)})


def _key(value: Any) -> str | None:
    """A `key` cell as the row's key: an empty cell is no key (the row keeps its generated
    one and its url identity), not a key "" every such row would share."""
    return None if value is None or value == "" else str(value)


class _Invalid:
    """A jsonl line that is not JSON: kept, so it is reported as a failed sample."""

    def __init__(self, text: str, error: str) -> None:
        self.text, self.error = text[:HELD_TEXT], error


class _Rejected:
    """A json value that Python's json cannot read (too deep, a 5000-digit number), in place of
    the row or cell it is."""

    def __init__(self, text: str, error: str) -> None:
        self.text, self.error = text, error


class _TooDeep:
    """A record holding a value nested deeper than the pipeline takes, or the text of one
    Python's json cannot read (too deep, a 5000-digit number): reported as a failed sample."""

    def __init__(self, record: Any, error: str) -> None:
        self.record, self.error = record, error


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
        import pyarrow.parquet as pq

        try:
            return sum(pq.ParquetFile(p).metadata.num_rows for p in files)
        except _read_errors() as e:
            raise InputError(f"not a readable parquet file: {e}") from e
    if input_format != "txt":
        return None
    total = 0
    for p in files:
        with p.open("rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):  # type: ignore[misc]
                total += chunk.count(b"\n")
    return total
