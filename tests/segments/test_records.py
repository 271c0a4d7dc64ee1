"""The records on the bus: what a `urls` record may carry, and the metadata it turns into."""

from __future__ import annotations

import json

from i2d_segments.records import (
    AppendMeta,
    AppendRecord,
    SampleStatus,
    UrlRow,
    decode_append,
    encode_append,
    encode_url_row,
    failure_value,
    parse_url_value,
    row_content,
    row_identity,
)


def test_extra_fields_of_a_urls_record_never_replace_the_rows_own_metadata() -> None:
    # kafka-console-producer may send any JSON: its fields travel as extra columns
    row = parse_url_value(
        json.dumps(
            {
                "url": "http://127.0.0.1/a.jpg",
                "status": "ok",
                "width": 1,
                "sample_id": "x",
                "sha256": "f00",
                "license": "cc0",
            }
        )
    )
    assert row is not None and row.extra["status"] == "ok"
    meta = AppendMeta(
        sample_id=row.sample_id,
        url=row.url,
        extra=row.extra,
        status=SampleStatus.SUCCESS,
        width=256,
        hashes={"sha256": "abc"},
    )
    out = meta.sample_json()
    assert (out["status"], out["width"], out["sha256"]) == ("success", 256, "abc")
    # "sample_id" is the one field that is not an extra column: the row's identity, as
    # `enqueue` writes it (its place in its list).
    assert out["sample_id"] == row.sample_id == "x" and "sample_id" not in row.extra
    assert out["license"] == "cc0"  # the other extra columns are kept


def test_a_failure_record_is_made_one_way_from_whatever_is_known_of_the_row() -> None:
    from i2d_segments.records import AppendMeta, AppendRecord, SampleStatus, UrlRow

    row = UrlRow(url="http://h/a.jpg", caption="a cat", row_key="000000001", extra={"l": 1})
    from_row = AppendRecord.failure(row, "HTTP Error 404: Not Found")
    assert from_row.payload is None
    assert (from_row.meta.sample_id, from_row.meta.url, from_row.meta.caption) == (
        row.sample_id,
        row.url,
        "a cat",
    )
    assert from_row.meta.key == "000000001" and from_row.meta.extra == {"l": 1}
    assert from_row.meta.status is SampleStatus.FAILED_TO_DOWNLOAD
    assert from_row.key == row.sample_id.encode()  # failures are keyed by sample

    # A success that fails late keeps its row's columns and claim check, loses its item.
    stored = AppendMeta(
        sample_id="s1", url="http://h/b.jpg", status=SampleStatus.SUCCESS, item_id="ab" * 32,
        width=10, staged="staging/ab", extra={"l": 2},
    )  # fmt: skip
    late = AppendRecord.failure(stored, "could not publish record: too big")
    assert late.meta.item_id is None and late.meta.staged == "staging/ab"
    assert (late.meta.sample_id, late.meta.extra) == ("s1", {"l": 2})
    assert late.meta.error_message == "could not publish record: too big"
    assert late.key == b"s1"

    # A value that is no row at all: its text stands as its url, its hash as its identity.
    raw = AppendRecord.failure(b'{"url": 3, "row_key": "000000002"}', "malformed row: url")
    assert raw.meta.url == '{"url": 3, "row_key": "000000002"}'
    assert raw.meta.key == "000000002"
    again = AppendRecord.failure(b'{"url": 3, "row_key": "000000002"}', "malformed row: url")
    assert raw.meta.sample_id == again.meta.sample_id

    resize = AppendRecord.failure(row, "cannot identify image", SampleStatus.FAILED_TO_RESIZE)
    assert resize.meta.status is SampleStatus.FAILED_TO_RESIZE


def test_a_failure_written_without_the_models_is_the_models_record_byte_for_byte() -> None:
    # failure_value (what a fetch worker writes for a failed row) against the one way the
    # models write it: the same APPEND bytes, or None where the shortcut does not apply.
    rows = [
        UrlRow(url="http://127.0.0.1:8/fault/missing/7.jpg", row_key="000010007", row_id="a" * 64),
        UrlRow(url="http://h/x.jpg?a=1&b=%20", caption="a cat", key="k1"),
        UrlRow(url="http://h/x.jpg", key="k" * 300),  # a long key: its hash is the sample id
        UrlRow(url="http://h/é.jpg"),  # non-ASCII: the models' way
        UrlRow(url='http://h/"q".jpg'),  # a quote: the models' way
        UrlRow(url="http://h/x.jpg", caption="tab\there"),
        UrlRow(url="http://h/x.jpg", caption="back\\slash"),
        UrlRow(url="http://h/x.jpg", extra={"license": "cc0"}),  # extra columns: the models'
        UrlRow(url="http://h/x.jpg", caption="ünïcode"),
    ]
    errors = ["HTTP Error 404: Not Found", "timed out after 10s", 'bad "quoted"', "émoji 😀"]
    times = [1796577826.061122, 1.0e9, 1700000000.0, 1796577826.1, 0.5, 1e-5]
    written = 0
    for row in rows:
        for error in errors:
            for status in (SampleStatus.FAILED_TO_DOWNLOAD, SampleStatus.FAILED_TO_RESIZE):
                for at in times:
                    fast = failure_value(row, error, status, fetched_at=at)
                    meta = AppendMeta(
                        **row_identity(row), status=status, error_message=error, fetched_at=at
                    )
                    expected = encode_append(AppendRecord(meta=meta))
                    assert fast is None or fast == expected, (row, error, at)
                    written += fast is not None
                    assert decode_append(expected).meta == meta
    assert written == 3 * 2 * 2 * 4  # the plain rows, errors and times took the shortcut
    # Now, not at a given time: still the models' record, bar the time it was written.
    row = rows[0]
    value = failure_value(row, errors[0])
    assert value is not None
    decoded = decode_append(value).meta
    expected_meta = AppendRecord.failure(row, errors[0]).meta
    assert decoded.model_copy(update={"fetched_at": 0.0}) == expected_meta.model_copy(
        update={"fetched_at": 0.0}
    )


def test_a_lists_plain_row_travels_as_the_json_of_its_fields() -> None:
    # encode_url_row writes a list's plain url row itself: row_content's bytes exactly.
    for url in [
        "http://a/b",
        'http://a/"q"\\x',
        "http://é/ü",
        "http://a/\t\n",
        "http://a/\x7f\u2028",
    ]:
        row = UrlRow(url=url, row_key="000010007", row_id="f" * 64)
        written = encode_url_row(row)
        assert written == row_content(url, None, None, {}, "000010007", "f" * 64)
        back = parse_url_value(written)  # the fetcher's reading (it strips the url)
        assert back is not None and (back.url, back.row_id) == (url.strip(), row.row_id)


def test_a_plain_row_reads_as_its_json_whichever_path_reads_it() -> None:
    # The shape encode_url_row writes is read without json.loads when its strings need no
    # escape: the same row as the general path (here made to take it by the spaces
    # json.dumps puts after separators), down to a blank url's error and an empty sample_id.
    cases = [
        ("http://a/b.jpg", "000010007", "f" * 64),
        ("  http://a/b.jpg  ", "000010007", "f" * 64),  # the url is stripped either way
        ("  http://a/b.jpg\t", "000010007", "f" * 64),
        ("http://é/ü", "1", "x"),
        ('http://a/"q"\\x', "1", "x"),  # escapes: the general path
        ("http://a/\x01", "1", "x"),  # a control character: escaped, the general path
        ("http://a/b.jpg", "000010007", ""),  # an empty sample_id is no sample_id
        ("   ", "1", "x"),  # a blank url is a malformed row
    ]
    for url, row_key, sample_id in cases:
        fields = {"url": url, "row_key": row_key, "sample_id": sample_id}
        compact = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
        spaced = json.dumps(fields, ensure_ascii=False)

        # Other column names too: a url read from another column, a caption from row_key.
        for url_col, caption_col in [
            ("url", "caption"),
            ("url", None),
            ("url", "text"),
            ("link", "caption"),
            ("url", "row_key"),
            ("url", "sample_id"),
        ]:

            def read(
                text: str, url_col: str = url_col, caption: str | None = caption_col
            ) -> object:
                try:
                    return parse_url_value(text.encode(), url_col, caption)
                except ValueError as e:
                    return f"{type(e).__name__}: {e}"

            assert read(compact) == read(spaced), (url, row_key, sample_id, url_col, caption_col)
    fast = parse_url_value(b'{"url":" http://a/b.jpg ","row_key":"7","sample_id":""}')
    assert fast == UrlRow(url="http://a/b.jpg", row_key="7")
