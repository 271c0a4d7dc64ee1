"""Url lists in every img2dataset input format become the same rows."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from i2d_cli.inputs import InputError, RowReader, carried_columns, count_rows
from i2d_fetcher.options import FetchOptions
from i2d_fetcher.outcome import Outcome, parse
from i2d_segments.records import (
    MalformedRecord,
    SampleStatus,
    UnparsedRow,
    UrlRow,
    decode_append,
    encode_url_row,
    parse_url_value,
    row_key_of,
)

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


def test_rows_carry_img2dataset_keys_numbered_across_the_files_of_a_folder(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.txt").write_text("".join(f"http://127.0.0.1/a{i}.jpg\n" for i in range(5)))
    (tmp_path / "b.txt").write_text("http://127.0.0.1/b0.jpg\n\nhttp://127.0.0.1/b1.jpg\n")
    rows = list(RowReader("txt", number_sample_per_shard=3).rows(tmp_path))
    # shards of 3 rows: shard x 10 + place, on 5 + 1 digits; b.txt starts a shard of its own
    assert [r.row_key for r in rows] == [
        "000000", "000001", "000002", "000010", "000011", "000020", "000021",
    ]  # fmt: skip
    assert all(isinstance(r, UrlRow) and r.key is None for r in rows)
    many = tmp_path / "many" / "urls.txt"
    many.parent.mkdir()
    many.write_text("".join(f"http://127.0.0.1/{i}.jpg\n" for i in range(10_006)))
    *_, last = RowReader("txt").rows(many)  # the defaults: 10000 rows per shard
    assert last.row_key == "000010005"  # row 5 of shard 1, as img2dataset numbers it


def test_a_key_column_is_the_rows_identity_and_its_metadata_key(tmp_path: Path) -> None:
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps({"url": "http://127.0.0.1/a.jpg", "key": "mine"}) + "\n")
    [row] = RowReader("jsonl").rows(path)
    assert isinstance(row, UrlRow)
    assert (row.sample_id, row.metadata_key, row.row_key) == ("mine", "mine", "000000000")
    assert parse_url_value(encode_url_row(row)) == row  # the row_key travels on the topic


def test_rows_without_a_url_are_kept_as_failed_samples(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("url,text\nhttp://127.0.0.1/a.jpg,a\n,empty\n  ,blank\n")
    good, empty, blank = RowReader("csv", caption_col="text").rows(path)
    assert isinstance(good, UrlRow) and good.row_key == "000000000"
    assert isinstance(empty, UnparsedRow) and isinstance(blank, UnparsedRow)
    assert empty.sample_id != blank.sample_id  # two bad rows are two failed samples
    for bad, row_key in ((empty, "000000001"), (blank, "000000002")):
        outcome = parse(encode_url_row(bad), "url", "caption")  # what the fetcher makes of it
        assert isinstance(outcome, Outcome)
        meta = decode_append(outcome.value).meta
        assert meta.status == SampleStatus.FAILED_TO_DOWNLOAD
        assert meta.error_message == "malformed row: no 'url' string in the row"
        assert (meta.sample_id, meta.key) == (bad.sample_id, row_key)

    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text('{"url": "http://127.0.0.1/a.jpg"}\n{"url": \n[1, 2]\n{"c": "\\ud800"}\n')
    _, broken, array, surrogate = RowReader("jsonl").rows(jsonl)
    reasons = []
    for bad in (broken, array, surrogate):
        assert isinstance(bad, UnparsedRow)
        with pytest.raises(MalformedRecord) as e:
            parse_url_value(encode_url_row(bad))
        reasons.append(str(e.value))
    assert reasons[0].startswith("invalid JSON row: Expecting value")
    assert reasons[1] == "the row is not an object"
    assert reasons[2] == "no 'url' string in the row"


def test_a_byte_order_mark_is_not_part_of_the_first_url_or_column(tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_bytes(b"\xef\xbb\xbfurl,text\r\nhttp://127.0.0.1/a.jpg,a\r\n")
    (tmp_path / "list.txt.gz").write_bytes(gzip.compress(b"\xef\xbb\xbfhttp://127.0.0.1/b.jpg\n"))
    [csv_row] = RowReader("csv", caption_col="text").rows(tmp_path / "list.csv")
    [txt_row] = RowReader("txt.gz").rows(tmp_path / "list.txt.gz")
    assert isinstance(csv_row, UrlRow) and (csv_row.url, csv_row.caption) == (
        "http://127.0.0.1/a.jpg",
        "a",
    )
    assert isinstance(txt_row, UrlRow) and txt_row.url == "http://127.0.0.1/b.jpg"


def test_bytes_that_are_not_utf8_fail_their_row_only(tmp_path: Path) -> None:
    latin1 = "http://127.0.0.1/café.jpg".encode("latin-1")
    (tmp_path / "list.txt").write_bytes(
        b"http://127.0.0.1/a.jpg\n" + latin1 + b"\nhttp://127.0.0.1/b.jpg\n"
    )
    (tmp_path / "list.csv").write_bytes(b"url,text\n" + latin1 + b",x\nhttp://127.0.0.1/b.jpg,y\n")
    for fmt in ("txt", "csv"):
        rows = list(RowReader(fmt).rows(tmp_path / f"list.{fmt}"))
        bad = [r for r in rows if isinstance(r, UnparsedRow)]
        assert len(bad) == 1 and len(rows) == (3 if fmt == "txt" else 2), fmt
        with pytest.raises(MalformedRecord, match="not UTF-8 text"):
            parse_url_value(encode_url_row(bad[0]))
        assert rows[-1].url == "http://127.0.0.1/b.jpg"  # type: ignore[union-attr]


def test_a_json_file_that_does_not_parse_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text('[{"url": "http://127.0.0.1/a.jpg"}, {url: 1}]')
    with pytest.raises(InputError, match=r"list.json: not a valid JSON file: Expecting property"):
        list(RowReader("json").rows(tmp_path / "list.json"))


def test_a_damaged_list_is_a_clear_error_after_the_rows_before_it(tmp_path: Path) -> None:
    urls = "".join(f"http://127.0.0.1/{i}.jpg\n" for i in range(3000)).encode()
    (tmp_path / "cut.txt.gz").write_bytes(gzip.compress(urls)[:-2000])
    (tmp_path / "plain.txt.gz").write_bytes(urls)  # named .gz, not gzip
    (tmp_path / "bad.parquet").write_text("hello")
    rows: list[UrlRow | UnparsedRow] = []
    with pytest.raises(InputError, match=r"cut\.txt\.gz: unreadable after \d+ rows: Compressed"):
        rows.extend(RowReader("txt.gz").rows(tmp_path / "cut.txt.gz"))
    assert len(rows) > 1000  # everything before the damage was read
    with pytest.raises(InputError, match=r"plain\.txt\.gz: unreadable after 0 rows: Not a gzip"):
        list(RowReader("txt.gz").rows(tmp_path / "plain.txt.gz"))
    with pytest.raises(InputError, match="not a readable parquet file"):
        count_rows(tmp_path / "bad.parquet", "parquet")
    with pytest.raises(InputError, match="is not a file or a folder"):
        count_rows("/dev/null", "txt")


def test_a_damaged_list_is_the_same_error_while_another_thread_imports_pyarrow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`download` imports pyarrow on its main thread while its pipeline runs; a module is in
    sys.modules, still empty, from the start of its import. A list read meanwhile by another
    thread (the Python API's caller) still fails with its own error, not pyarrow's half."""
    urls = "".join(f"http://127.0.0.1/{i}.jpg\n" for i in range(3000)).encode()
    (tmp_path / "cut.txt.gz").write_bytes(gzip.compress(urls)[:-2000])
    monkeypatch.setitem(sys.modules, "pyarrow", types.ModuleType("pyarrow"))
    with pytest.raises(InputError, match=r"cut\.txt\.gz: unreadable after \d+ rows: Compressed"):
        list(RowReader("txt.gz").rows(tmp_path / "cut.txt.gz"))


def test_a_long_caption_is_read(tmp_path: Path) -> None:
    caption = "x" * 300_000  # over the csv module's default field limit (128 KiB)
    (tmp_path / "list.csv").write_text(f"url,text\nhttp://127.0.0.1/a.jpg,{caption}\n")
    [row] = RowReader("csv", caption_col="text").rows(tmp_path / "list.csv")
    assert isinstance(row, UrlRow) and row.caption == caption


def test_a_rows_own_key_survives_a_missing_url_and_an_empty_key_is_no_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "list.jsonl"
    lines = [{"key": "mine", "url": None}, {"key": "", "url": "http://127.0.0.1/a.jpg"}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    bad, empty = RowReader("jsonl").rows(path)
    assert isinstance(bad, UnparsedRow) and isinstance(empty, UrlRow)
    outcome = parse(encode_url_row(bad), "url", "caption")
    assert isinstance(outcome, Outcome) and decode_append(outcome.value).meta.key == "mine"
    assert empty.key is None and empty.metadata_key == "000000001"
    on_the_topic = parse_url_value('{"url": "http://127.0.0.1/a.jpg", "key": ""}')
    assert on_the_topic is not None and on_the_topic.key is None  # the same on the urls topic


def nested(depth: int) -> object:
    """A value of `depth` levels, objects and lists alternating."""
    value: object = 1
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return value


TOO_DEEP = "malformed row: invalid JSON row: nested deeper than 32 levels"


def failed(row: UrlRow | UnparsedRow) -> tuple[str | None, str | None]:
    """What the fetcher records for a row it cannot fetch: (error_message, key)."""
    assert isinstance(row, UnparsedRow)
    outcome = parse(encode_url_row(row), "url", "caption")
    assert isinstance(outcome, Outcome)
    meta = decode_append(outcome.value).meta
    return meta.error_message, meta.key


def test_jsonl_lines_too_deep_or_unreadable_fail_alone(tmp_path: Path) -> None:
    """A line of `[` x 100000 raised RecursionError out of the reader (the whole download
    ended, 0 rows recorded); 40 levels parsed, then broke the metadata parquet downstream."""
    lines = [
        json.dumps({"url": "http://127.0.0.1/a.jpg"}),
        "[" * 100_000,
        json.dumps({"url": "http://127.0.0.1/b.jpg", "x": nested(40)}),
        '{"url": "http://127.0.0.1/c.jpg", "n": ' + "1" * 5000 + "}",
        json.dumps({"url": "http://127.0.0.1/d.jpg", "x": nested(31)}),  # 32 with the row
        '{"key": "own", "url": "http://127.0.0.1/e.jpg", "x": ' + "[" * 100_000,
    ]
    (tmp_path / "list.jsonl").write_text("\n".join(lines) + "\n")
    rows = list(RowReader("jsonl", save_additional_columns=["x"]).rows(tmp_path / "list.jsonl"))
    assert len(rows) == 6
    first, deep, deep40, huge, deepest, own = rows
    assert failed(own) == (TOO_DEEP, "own")  # its own key, read beside the deep value
    assert isinstance(first, UrlRow) and isinstance(deepest, UrlRow)
    assert deepest.extra == {"x": nested(31)}
    assert failed(deep) == (TOO_DEEP, "000000001")
    assert failed(deep40) == (TOO_DEEP, "000000002")
    message, key = failed(huge)
    assert key == "000000003"
    assert message == (
        "malformed row: invalid JSON row: unreadable value: Exceeds the limit (4300 digits)"
        " for integer string conversion"
    )


@pytest.mark.parametrize("deepest", [100_000, 40])  # past json's recursion; within it
def test_a_json_list_keeps_its_other_items_when_one_is_too_deep(
    tmp_path: Path, deepest: int
) -> None:
    deep_item = "[" * deepest + "]" * deepest
    items = [
        json.dumps({"url": "http://127.0.0.1/a.jpg"}),
        deep_item,
        json.dumps({"url": "http://127.0.0.1/b.jpg", "key": "mine", "x": nested(deepest)})
        if deepest < 900
        else '{"url": "http://127.0.0.1/b.jpg", "key": "mine", "x": ' + deep_item + "}",
        '{"url": "http://127.0.0.1/c.jpg", "n": ' + "1" * 5000 + "}",
        json.dumps({"url": "http://127.0.0.1/d.jpg"}),
    ]
    (tmp_path / "list.json").write_text("[" + ",\n".join(items) + "]")
    rows = list(RowReader("json").rows(tmp_path / "list.json"))
    assert [r.url for r in rows if isinstance(r, UrlRow)] == [
        "http://127.0.0.1/a.jpg",
        "http://127.0.0.1/d.jpg",
    ]
    assert failed(rows[1]) == (TOO_DEEP, "000000001")
    assert failed(rows[2]) == (TOO_DEEP, "mine")  # its own key, read beside the deep value
    message, key = failed(rows[3])
    assert key == "000000003" and message is not None and "4300 digits" in message


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000, '{"a": ' * 100_000, "[" * 100_000 + "]" * 100_000 + "]", '{"url": 1}'],
)
def test_a_json_file_that_is_not_one_array_is_one_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "list.json").write_text(text)
    with pytest.raises(InputError, match=r"list\.json: (not a valid JSON file|a json input)"):
        list(RowReader("json").rows(tmp_path / "list.json"))


def test_parquet_rows_nested_too_deep_fail_alone(tmp_path: Path) -> None:
    """Parquet opens structs nested up to 98 levels: such a row is refused like a JSON one."""
    path = tmp_path / "list.parquet"
    rows = [
        {"url": "http://127.0.0.1/a.jpg", "key": "a", "x": None},
        {"url": "http://127.0.0.1/b.jpg", "key": "b", "x": nested_struct(60)},
        {"url": "http://127.0.0.1/c.jpg", "key": "c", "x": nested_struct(10, leaf=None)},
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    first, deep, shallow = RowReader("parquet", save_additional_columns=["x"]).rows(path)
    assert isinstance(first, UrlRow) and isinstance(shallow, UrlRow)
    assert shallow.extra["x"]["a"]["a"] is not None
    message, key = failed(deep)
    assert (message, key) == ("malformed row: a column value nested deeper than 32 levels", "b")


def nested_struct(depth: int, leaf: object = 1) -> object:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


# ------------------------------------------------------------- json layouts pandas.read_json reads

U = "http://127.0.0.1/"
# name: (json text, url_col, caption_col, the rows as (key, url, caption) with 2 rows a shard).
# img2dataset reads json with pandas.read_json(file): the DataFrame constructor on the parsed
# JSON. Captions are words: pandas would also turn a caption "007" into the number 7.
JSON_LAYOUTS: dict[str, tuple[str, str, str, list[tuple[str, str | None, str | None]]]] = {
    "records": (
        json.dumps([{"url": U + "a", "caption": "x"}, {"url": U + "b", "caption": "y"}]),
        "url",
        "caption",
        [("000000", U + "a", "x"), ("000001", U + "b", "y")],
    ),
    # SBU's list: pandas' to_json() default (orient="columns"). Rows in the order their keys
    # come, not sorted ("10" before "2"): pandas keeps it.
    "columns (SBU)": (
        json.dumps(
            {
                "image_urls": {"0": U + "a", "1": U + "b", "10": U + "c", "2": U + "d"},
                "captions": {"0": "w", "1": "x", "10": "y", "2": "z"},
            }
        ),
        "image_urls",
        "captions",
        [
            ("000000", U + "a", "w"),
            ("000001", U + "b", "x"),
            ("000010", U + "c", "y"),
            ("000011", U + "d", "z"),
        ],
    ),
    # Cells matched by their row key whatever the order of each column; a key a column lacks
    # is a null cell; rows in the order the keys first appear, column after column.
    "columns, keys in other orders": (
        json.dumps(
            {
                "url": {"b": U + "b", "a": U + "a"},
                "caption": {"a": "for a", "c": "for c", "b": "for b"},
            }
        ),
        "url",
        "caption",
        [("000000", U + "b", "for b"), ("000001", U + "a", "for a"), ("000010", None, "for c")],
    ),
    "columns of arrays, a single value repeated": (
        json.dumps({"url": [U + "a", U + "b", U + "c"], "caption": "same"}),
        "url",
        "caption",
        [
            ("000000", U + "a", "same"),
            ("000001", U + "b", "same"),
            ("000010", U + "c", "same"),
        ],
    ),
    "values: an array of arrays, columns named by position": (
        json.dumps([[U + "a", "x"], [U + "b"]]),
        "0",
        "1",
        [("000000", U + "a", "x"), ("000001", U + "b", None)],
    ),
}


def json_rows(path: Path, url_col: str, caption_col: str) -> list[tuple[Any, ...]]:
    rows = []
    for row in RowReader(
        "json", url_col=url_col, caption_col=caption_col, number_sample_per_shard=2
    ).rows(path):
        if isinstance(row, UrlRow):
            rows.append((row.metadata_key, row.url, row.caption))
        else:  # no url: what the failed sample keeps of the row
            rows.append((row_key_of(row.value), None, json.loads(row.value).get(caption_col)))
    return rows


@pytest.mark.parametrize("name", list(JSON_LAYOUTS))
def test_json_is_read_in_every_layout_pandas_read_json_reads(tmp_path: Path, name: str) -> None:
    text, url_col, caption_col, expected = JSON_LAYOUTS[name]
    (tmp_path / "list.json").write_text(text)
    assert json_rows(tmp_path / "list.json", url_col, caption_col) == expected


BENCH_PYTHON = Path(__file__).resolve().parents[2] / ".venv-bench" / "bin" / "python"
# img2dataset's own reader and keys: its Reader shards the list (2 rows a shard), and each
# row's key is compute_key(position in its shard, shard id, ...), as its downloader does.
IMG2DATASET_ROWS = """
import json, sys, tempfile
import pyarrow as pa
from img2dataset.downloader import compute_key
from img2dataset.reader import Reader
out = []
for path, url_col, caption_col in json.loads(sys.argv[1]):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        reader = Reader(path, "json", url_col, caption_col, None, None, None, 2, set(), tmp)
        for shard_id, arrow_file in reader:
            with pa.memory_map(arrow_file) as f:
                table = pa.ipc.open_file(f).read_all()
            for i, row in enumerate(table.to_pylist()):
                rows.append((compute_key(i, shard_id, 1, 5), row["url"], row["caption"]))
    out.append(rows)
print(json.dumps(out))
"""


@pytest.mark.differential  # img2dataset 1.47 itself: `make diff`
def test_json_rows_and_keys_are_img2datasets_row_for_row(tmp_path: Path) -> None:
    """img2dataset 1.47's own reader on the same files: the same rows, in the same order,
    with the same keys."""
    lists = []
    for i, (text, url_col, caption_col, _) in enumerate(JSON_LAYOUTS.values()):
        path = tmp_path / f"list{i}.json"
        path.write_text(text)
        lists.append((str(path), url_col, caption_col))
    run = subprocess.run(
        [str(BENCH_PYTHON), "-c", IMG2DATASET_ROWS, json.dumps(lists)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    theirs = json.loads(run.stdout.strip().splitlines()[-1])
    for name, (path, url_col, caption_col), rows in zip(JSON_LAYOUTS, lists, theirs, strict=True):
        ours = json_rows(Path(path), url_col, caption_col)
        assert ours == [tuple(row) for row in rows], name
        assert ours == JSON_LAYOUTS[name][3], name


def test_json_shapes_pandas_refuses_are_one_error(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    for text, why in [
        ('{"url": {"0": "http://127.0.0.1/a"}, "caption": ["x"]}', "mix objects and arrays"),
        ('{"url": ["http://127.0.0.1/a"], "caption": ["x", "y"]}', r"differ in length \[1, 2\]"),
        ('{"url": "http://127.0.0.1/a"}', "are single values"),
        ('"http://127.0.0.1/a"', "it holds a string"),
        ("null", "it holds null"),
    ]:
        path.write_text(text)
        with pytest.raises(InputError, match=r"list\.json: a json input must hold .*; .*" + why):
            list(RowReader("json").rows(path))
    # An object of rows (orient="index") is read column-wise, as pandas does: no url column.
    path.write_text(json.dumps({"0": {"url": "http://127.0.0.1/a"}}))
    with pytest.raises(InputError, match=r"missing column\(s\) \['url'\]; columns are \['0'\]"):
        list(RowReader("json").rows(path))
    # An array of single values is one column "0" (img2dataset: --url_col '"0"').
    path.write_text(json.dumps(["http://127.0.0.1/a", "http://127.0.0.1/b"]))
    assert [r.url for r in RowReader("json", url_col="0").rows(path)] == [  # type: ignore[union-attr]
        "http://127.0.0.1/a",
        "http://127.0.0.1/b",
    ]
    for empty in ("[]", "{}", '{"url": {}}', '{"url": []}'):
        path.write_text(empty)
        assert list(RowReader("json").rows(path)) == [], empty


@pytest.mark.parametrize("deepest", [100_000, 40])  # past json's recursion; within it
def test_a_json_column_cell_too_deep_fails_its_row_only(tmp_path: Path, deepest: int) -> None:
    deep = "[" * deepest + "]" * deepest
    for layout in ("objects", "arrays"):
        urls = [f"http://127.0.0.1/{c}.jpg" for c in "abc"]
        cells = ['"x"', deep, '"z"']
        keys = ['"k0"', '"mine"', '"k2"']
        if layout == "objects":
            text = (
                "{"
                + ", ".join(
                    f'"{name}": {{' + ", ".join(f'"{i}": {v}' for i, v in enumerate(values)) + "}"
                    for name, values in [
                        ("url", [json.dumps(u) for u in urls]),
                        ("x", cells),
                        ("key", keys),
                    ]
                )
                + "}"
            )
        else:
            text = (
                f'{{"url": {json.dumps(urls)}, "x": [{", ".join(cells)}], '
                f'"key": [{", ".join(keys)}]}}'
            )
        (tmp_path / "list.json").write_text(text)
        first, bad, last = RowReader("json", save_additional_columns=["x"]).rows(
            tmp_path / "list.json"
        )
        assert isinstance(first, UrlRow) and isinstance(last, UrlRow), layout
        assert (first.url, first.extra, last.url) == (urls[0], {"x": "x"}, urls[2])
        message, key = failed(bad)
        assert key == "mine" and message is not None, layout
        assert message.startswith("malformed row: invalid JSON row: nested deeper than 32")
