"""Row <-> column values, shared by both adapters so they store and return the same thing.

Text is made storable before it reaches either engine: PostgreSQL rejects NUL characters in TEXT
and JSONB, and neither driver can encode a lone surrogate. One bad caption must not make a
segment's commit fail forever (the appender would retry it endlessly), so such characters are
replaced (NUL -> U+FFFD, unencodable -> "?") identically for both engines.

`attrs` (the rest of img2dataset's columns) is stored as JSON. Values JSON cannot carry are
converted: NaN and infinities become null (PostgreSQL's JSONB refuses them), numpy scalars and
arrays their Python values, dates their ISO form, bytes their UTF-8 text, anything else `str()`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from i2d_segments.index.base import (
    DownloadRun,
    PartitionProgress,
    PartitionRow,
    SegmentRow,
)

T = TypeVar("T")

# Column lists in dataclass field order; the `to_*` functions below read rows in this order.
PARTITION_COLUMNS = ("topic", '"partition"', "epoch", "next_offset", "owner", "updated_at")
SEGMENT_COLUMNS = (
    "segment_id",
    "topic",
    '"partition"',
    "first_offset",
    "last_offset",
    "epoch",
    "uri",
    "item_count",
    "sample_count",
    "bytes",
    "sha256",
    "created_at",
    "manifest_offset",
    "manifest_length",
)
PROGRESS_COLUMNS = (
    "topic",
    '"partition"',
    "epoch",
    "owner",
    "position",
    "open_segment_id",
    "open_first_offset",
    "open_samples",
    "open_successes",
    "open_errors",
    "open_bytes",
    "samples_per_second",
    "images_per_second",
    "window_seconds",
    "recent",
    "updated_at",
)
RUN_COLUMNS = (
    "run_id",
    "url_list",
    "append_topic",
    "append_partition",
    "start_offset",
    "rows_total",
    "rows_read",
    "rows_skipped",
    "started_at",
    "updated_at",
    "finished_at",
)

# Statuses that are not failures; error_counts ignores them.
SUCCESS_STATUS = "success"


def cols(columns: Iterable[str]) -> str:
    return ", ".join(columns)


def clean_text(value: str) -> str:
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def clean_opt(value: str | None) -> str | None:
    return None if value is None else clean_text(value)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {clean_text(str(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return clean_text(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    # numpy / pyarrow scalars and arrays (from parquet inputs) without importing either.
    for method in ("tolist", "item", "as_py"):
        fn = getattr(value, method, None)
        if callable(fn):
            try:
                converted = fn()
            except (TypeError, ValueError):
                continue
            if converted is not value:
                return _jsonable(converted)
    return clean_text(str(value))


_PLAIN = (str, int, float, bool, type(None))


def encode_attrs(attrs: Mapping[str, Any]) -> str:
    # The usual row (img2dataset's columns: text, numbers, nulls) is JSON as it is: encoding it
    # directly gives the same text as converting it first, 4x faster (10k rows per commit).
    # Anything else, or a value that needs cleaning (NaN, NUL, a lone surrogate), takes the
    # converting path.
    if all(type(k) is str and type(v) in _PLAIN for k, v in attrs.items()):
        try:
            text = json.dumps(attrs, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            text.encode("utf-8")
        except (ValueError, UnicodeEncodeError):
            pass
        else:
            if "\\u0000" not in text:
                return text
    return json.dumps(_jsonable(attrs), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def decode_attrs(value: Any) -> dict[str, Any]:
    """SQLite hands back JSON text; psycopg has already parsed JSONB into a dict."""
    if value is None:
        return {}
    if isinstance(value, str | bytes):
        loaded = json.loads(value)
        return loaded if isinstance(loaded, dict) else {"value": loaded}
    return dict(value)


def segment_values(s: SegmentRow) -> tuple[Any, ...]:
    return (
        clean_text(s.segment_id),
        clean_text(s.topic),
        s.partition,
        s.first_offset,
        s.last_offset,
        s.epoch,
        clean_text(s.uri),
        s.item_count,
        s.sample_count,
        s.bytes,
        s.sha256,
        s.created_at,
        s.manifest_offset,
        s.manifest_length,
    )


def to_partition(row: Sequence[Any]) -> PartitionRow:
    return PartitionRow(str(row[0]), int(row[1]), int(row[2]), int(row[3]), row[4], float(row[5]))


def to_segment(row: Sequence[Any]) -> SegmentRow:
    return SegmentRow(
        segment_id=row[0],
        topic=row[1],
        partition=int(row[2]),
        first_offset=int(row[3]),
        last_offset=int(row[4]),
        epoch=int(row[5]),
        uri=row[6],
        item_count=int(row[7]),
        sample_count=int(row[8]),
        bytes=int(row[9]),
        sha256=row[10],
        created_at=float(row[11]),
        manifest_offset=None if row[12] is None else int(row[12]),
        manifest_length=None if row[13] is None else int(row[13]),
    )


def progress_values(p: PartitionProgress) -> tuple[Any, ...]:
    recent = json.dumps(
        _jsonable(p.recent), ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )
    return (
        clean_text(p.topic),
        p.partition,
        p.epoch,
        clean_opt(p.owner),
        p.position,
        clean_opt(p.open_segment_id),
        p.open_first_offset,
        p.open_samples,
        p.open_successes,
        encode_attrs(p.open_errors),
        p.open_bytes,
        _finite(p.samples_per_second),
        _finite(p.images_per_second),
        _finite(p.window_seconds),
        recent,
        p.updated_at,
    )


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else 0.0


def to_progress(row: Sequence[Any]) -> PartitionProgress:
    recent = json.loads(row[14]) if isinstance(row[14], str | bytes) else row[14]
    errors = decode_attrs(row[9])
    return PartitionProgress(
        topic=row[0],
        partition=int(row[1]),
        epoch=int(row[2]),
        owner=row[3],
        position=int(row[4]),
        open_segment_id=row[5],
        open_first_offset=None if row[6] is None else int(row[6]),
        open_samples=int(row[7]),
        open_successes=int(row[8]),
        open_errors={str(k): int(v) for k, v in errors.items() if isinstance(v, int)},
        open_bytes=int(row[10]),
        samples_per_second=float(row[11]),
        images_per_second=float(row[12]),
        window_seconds=float(row[13]),
        recent=[r for r in (recent or []) if isinstance(r, dict)],
        updated_at=float(row[15]),
    )


def run_values(r: DownloadRun) -> tuple[Any, ...]:
    return (
        clean_text(r.run_id),
        clean_text(r.url_list),
        clean_text(r.append_topic),
        r.append_partition,
        r.start_offset,
        r.rows_total,
        r.rows_read,
        r.rows_skipped,
        r.started_at,
        r.updated_at,
        r.finished_at,
    )


def to_run(row: Sequence[Any]) -> DownloadRun:
    return DownloadRun(
        run_id=row[0],
        url_list=row[1],
        append_topic=row[2],
        append_partition=int(row[3]),
        start_offset=int(row[4]),
        rows_total=None if row[5] is None else int(row[5]),
        rows_read=int(row[6]),
        rows_skipped=int(row[7]),
        started_at=float(row[8]),
        updated_at=float(row[9]),
        finished_at=None if row[10] is None else float(row[10]),
    )


def chunked(values: Iterable[T], size: int) -> Iterator[list[T]]:
    """Bound the number of bind parameters per query (SQLite caps them; so should we)."""
    batch: list[T] = []
    for v in values:
        batch.append(v)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
