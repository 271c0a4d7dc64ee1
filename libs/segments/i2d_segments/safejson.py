"""JSON from untrusted text (url lists, `urls` records), with a bound on nesting.

Python's `json` has no depth limit of its own: it recurses, so a line of `[` x 100000 raises
RecursionError from `json.loads`, and a value a few hundred levels deep later breaks
`json.dumps`, `repr`, pydantic's serializer (255 levels) and parser (200), and a parquet column
nested past ~49 lists is written but no longer opens (pyarrow's 100 schema levels). So a row
may nest at most `MAX_DEPTH` levels, the row object itself counting as one: deeper is a
malformed row, refused where text and values enter (input files, the `urls` topic), and
nothing deeper ever reaches a record, a segment member, the index or a parquet. Other values
Python's json cannot take (an integer of more than 4300 digits) are refused the same way, as
`ValueError`s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

MAX_DEPTH = 32  # far past real metadata (a list of boxes is 2)
TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"

# A JSON string (its escapes included) or a bracket: brackets inside strings are not nesting.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_PIECE_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]', re.DOTALL)
_NAME = re.compile(r'\s*("[^"\\]*(?:\\.[^"\\]*)*")\s*:', re.DOTALL)


class JsonRejected(ValueError):
    """Text or a value refused before Python's json could fail on it (too deep, too long)."""


def text_too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON `text` opens more than `limit` arrays/objects inside one another. Linear,
    never recursive; exact for valid JSON (an unterminated string may count its brackets)."""
    if text.count("[") + text.count("{") <= limit:  # the common case, at C speed
        return False
    depth = 0
    for m in _TOKEN.finditer(text):
        token = m.group()
        if token == "[" or token == "{":
            depth += 1
            if depth > limit:
                return True
        elif token == "]" or token == "}":
            depth -= 1
    return False


def value_too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` nests dicts/lists/tuples more than `limit` levels (a scalar is 0, `[1]`
    is 1). Iterative: safe on values of any depth."""
    if not isinstance(value, dict | list | tuple):
        return False
    if limit < 1:
        return True
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        for child in v.values() if isinstance(v, dict) else v:
            if isinstance(child, dict | list | tuple):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def loads(text: str) -> Any:
    """`json.loads` of untrusted text. Raises `json.JSONDecodeError` for bad syntax and
    `JsonRejected` for text nested deeper than `MAX_DEPTH` or a value Python cannot hold;
    never RecursionError."""
    if text_too_deep(text):
        raise JsonRejected(TOO_DEEP)
    try:
        return json.loads(text)
    except RecursionError:  # only if the caller's own stack is already deep
        raise JsonRejected(TOO_DEEP) from None
    except json.JSONDecodeError:
        raise
    except ValueError as e:
        # int(): "Exceeds the limit (4300 digits) for integer string conversion: value has
        # 5000 digits; use sys.set_int_max_str_digits()...": the first clause is the reason.
        raise JsonRejected(f"unreadable value: {str(e).split(':')[0]}") from None


def array_items(text: str) -> Iterator[tuple[int, str]]:
    """The items of the JSON array `text` as (offset, text), split without parsing them, so
    one item too deep for `json` does not stop the others. Linear, never recursive. Raises
    `json.JSONDecodeError` when `text` is not one array; the items are left to `loads`."""
    return _top_level(text, "[")


def object_members(text: str) -> Iterator[tuple[int, str, str]]:
    """The members of the JSON object `text` as (offset of the value, name, value text), split
    without parsing the values, like `array_items`. Raises `json.JSONDecodeError` when `text`
    is not one object or a member has no name."""
    for offset, member in _top_level(text, "{"):
        name = _NAME.match(member)
        if name is None:
            skipped = len(member) - len(member.lstrip())
            raise json.JSONDecodeError(
                "Expecting property name enclosed in double quotes", text, offset + skipped
            )
        yield offset + name.end(), json.loads(name.group(1)), member[name.end() :]


def scalar_members(text: str) -> dict[str, Any]:
    """The members of the JSON object `text` whose values are strings, numbers, booleans or
    null, read without parsing the others: what can still be read of a row too deep to parse
    (its key, its url). Best effort: what was found before anything unreadable."""
    found: dict[str, Any] = {}
    try:
        for _, member in _top_level(text, "{"):
            name = _NAME.match(member)
            value = member[name.end() :].strip() if name is not None else ""
            if name is None or not value or value[0] in "[{":
                continue
            try:
                found[json.loads(name.group(1))] = json.loads(value)
            except ValueError:
                continue
    except json.JSONDecodeError:
        pass
    return found


def _top_level(text: str, opener: str) -> Iterator[tuple[int, str]]:
    """The comma-separated pieces of the array or object `text` opens with `opener`."""
    start = len(text) - len(text.lstrip())
    if not text.startswith(opener, start):
        raise json.JSONDecodeError(f"Expecting '{opener}'", text, start)
    depth = 0
    piece_start = start + 1
    for m in _PIECE_TOKEN.finditer(text, start):
        token = m.group()
        if token == "[" or token == "{":
            depth += 1
        elif token == "]" or token == "}":
            depth -= 1
            if depth == 0:
                last = text[piece_start : m.start()]
                if last.strip() or piece_start > start + 1:  # `[1,]` leaves an empty item
                    yield piece_start, last
                rest = text[m.end() :]
                if rest.strip():
                    extra = m.end() + len(rest) - len(rest.lstrip())
                    raise json.JSONDecodeError("Extra data", text, extra)
                return
        elif token == "," and depth == 1:
            yield piece_start, text[piece_start : m.start()]
            piece_start = m.end()
    raise json.JSONDecodeError("Unterminated array or object", text, len(text))
