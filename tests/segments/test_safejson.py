"""JSON from untrusted text: nesting is bounded before Python's json can recurse on it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from i2d_segments import safejson
from i2d_segments.records import (
    AppendMeta,
    AppendRecord,
    SampleStatus,
    UrlRow,
    decode_append,
    encode_append,
)

DEPTH = safejson.MAX_DEPTH


def nested(depth: int) -> Any:
    """A value of `depth` levels, lists and objects alternating (`depth` 0: a scalar)."""
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return value


def test_depth_is_counted_exactly_and_brackets_in_strings_do_not_count() -> None:
    for depth in (0, 1, DEPTH - 1, DEPTH, DEPTH + 1, 3 * DEPTH):
        text = json.dumps(nested(depth))
        assert safejson.text_too_deep(text) is (depth > DEPTH), depth
        assert safejson.value_too_deep(nested(depth)) is (depth > DEPTH), depth
    # A caption full of brackets, escaped quotes included, is one level.
    caption = '[{"\\"' * (3 * DEPTH)
    assert not safejson.text_too_deep(json.dumps({"caption": caption}))
    assert safejson.loads(json.dumps({"caption": caption})) == {"caption": caption}


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,  # the line: RecursionError in json.loads
        "[" * 100_000 + "]" * 100_000,
        '{"url": "http://127.0.0.1/a.jpg", "x": ' + "[" * 500 + "]" * 500 + "}",
        '{"a": ' * 100_000,
    ],
)
def test_deep_text_is_refused_as_a_value_error_never_recursion(text: str) -> None:
    with pytest.raises(safejson.JsonRejected, match=f"nested deeper than {DEPTH} levels"):
        safejson.loads(text)


def test_numbers_python_cannot_read_are_refused_as_value_errors() -> None:
    with pytest.raises(safejson.JsonRejected, match="unreadable value: Exceeds the limit"):
        safejson.loads('{"n": ' + "1" * 5000 + "}")
    with pytest.raises(json.JSONDecodeError):
        safejson.loads('{"n": ')


def test_array_items_split_a_list_without_parsing_its_items() -> None:
    text = ' [1, "a,]", {"b": [1, 2]}, ' + "[" * 100_000 + "]" * 100_000 + " ] "
    items = [item for _, item in safejson.array_items(text)]
    assert [json.loads(i) for i in items[:3]] == [1, "a,]", {"b": [1, 2]}]
    assert items[3].strip() == "[" * 100_000 + "]" * 100_000
    assert list(safejson.array_items("[]")) == []
    for bad, msg in (("{}", "Expecting '\\['"), ("[1] x", "Extra data"), ("[1, 2", "Unterminated")):
        with pytest.raises(json.JSONDecodeError, match=msg):
            list(safejson.array_items(bad))


def test_a_row_cannot_hold_a_value_the_pipeline_could_not_serialize() -> None:
    """At the bound a row's extra column goes through the APPEND record and back; past it the
    row itself is refused (pydantic's own limits are 200 levels to parse, 255 to write)."""
    deepest = nested(DEPTH - 1)  # in a row object: DEPTH levels
    row = UrlRow(url="http://127.0.0.1/a.jpg", extra={"x": deepest})
    meta = AppendMeta(sample_id="s", url=row.url, extra=row.extra, status=SampleStatus.SUCCESS)
    assert decode_append(encode_append(AppendRecord(meta=meta))).meta.extra == {"x": deepest}
    for too_deep in (nested(DEPTH), nested(5000)):
        with pytest.raises(ValueError, match=f"nested deeper than {DEPTH} levels"):
            UrlRow(url="http://127.0.0.1/a.jpg", extra={"x": too_deep})
