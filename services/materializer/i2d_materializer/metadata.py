"""img2dataset's per-shard outputs, built from the index rows of one segment.

- metadata parquet: one row per input row (successes and failures) with img2dataset's column
  names; then `sample_id` and `item_id`, which join back to the index and the TAR keys;
- stats JSON: img2dataset's `{shard}_stats.json` fields, plus segment bytes, item count and the
  stored images' sizes (bytes, width, height: min, max, mean).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from i2d_segments.index import ItemRow, SampleRow, SegmentRow

if TYPE_CHECKING:
    import pyarrow as pa

# pyarrow (and the numpy it loads) is imported by the functions that build tables, not with
# this module: `download` imports the materializer at start-up, and pyarrow's ~0.2 s of CPU
# would otherwise delay the first request by that much. `download` and `service` load it once
# their fetch workers are starting (`load_table_libraries`), not when the first segment closes.

_STRING_COLUMNS = ("url", "caption", "key", "status", "error_message")
_INT_COLUMNS = ("width", "height", "original_width", "original_height")
_FIXED = (*_STRING_COLUMNS, *_INT_COLUMNS, "exif")
_TAIL = ("sample_id", "item_id")
# img2dataset's hash column (named after `compute_hash`) follows exif, before the extra columns.
_HASH_COLUMNS = ("sha256", "md5", "sha512")


def load_table_libraries() -> None:
    """Import what building and writing a table takes (pyarrow, its parquet writer, numpy):
    ~0.25 s of CPU, better spent before segments close than by the first one."""
    import pyarrow.parquet  # noqa: F401


def metadata_rows(samples: Sequence[SampleRow]) -> list[dict[str, Any]]:
    rows = []
    for s in samples:
        row: dict[str, Any] = {
            "url": s.url,
            "caption": s.caption,
            "status": s.status,
            "error_message": s.error,
        }
        row.update(s.attrs)
        row["sample_id"] = s.sample_id
        row["item_id"] = s.item_id
        rows.append(row)
    return rows


def metadata_table(samples: Sequence[SampleRow]) -> pa.Table:
    import pyarrow as pa

    rows = metadata_rows(samples)
    extra = sorted(
        {k for r in rows for k in r} - set(_FIXED) - set(_TAIL),
        key=lambda c: (c not in _HASH_COLUMNS, c),
    )
    fields = [pa.field(c, pa.string()) for c in _STRING_COLUMNS]
    fields += [pa.field(c, pa.int64()) for c in _INT_COLUMNS]
    fields.append(pa.field("exif", pa.string()))
    columns: dict[str, list[Any]] = {c: [r.get(c) for r in rows] for c in _FIXED}
    arrays = [pa.array(columns[f.name], type=f.type) for f in fields]
    for name in [*extra, *_TAIL]:
        values = [r.get(name) for r in rows]
        arr = _array(values)
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _array(values: list[Any]) -> pa.Array:
    """Extra columns keep their type when it is consistent; mixed types become JSON text."""
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array(
            [None if v is None else json.dumps(v, ensure_ascii=False) for v in values],
            type=pa.string(),
        )


def parquet_bytes(table: pa.Table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _spread(values: Sequence[int]) -> dict[str, float | int | None]:
    if not values:
        return {"min": None, "max": None, "mean": None}
    return {"min": min(values), "max": max(values), "mean": round(sum(values) / len(values), 3)}


def sizes(items: Sequence[ItemRow]) -> dict[str, Any]:
    """The stored images of a segment: total bytes, and the spread of bytes, width, height."""
    lengths = [i.data_length for i in items]
    return {
        "image_bytes": sum(lengths),
        "bytes": _spread(lengths),
        "width": _spread([i.width for i in items if i.width is not None]),
        "height": _spread([i.height for i in items if i.height is not None]),
    }


def stats(
    segment: SegmentRow, samples: Sequence[SampleRow], items: Sequence[ItemRow] = ()
) -> dict[str, Any]:
    by_status = Counter(s.status for s in samples)
    status_dict = Counter(s.error if s.error else s.status for s in samples)
    times = [s.updated_at for s in samples] or [segment.created_at]
    return {
        "count": len(samples),
        "successes": by_status.get("success", 0),
        "failed_to_download": by_status.get("failed_to_download", 0),
        "failed_to_resize": by_status.get("failed_to_resize", 0),
        "duration": max(times) - segment.created_at if samples else 0.0,
        "start_time": segment.created_at,
        "end_time": max(times),
        "status_dict": dict(sorted(status_dict.items())),
        "segment_id": segment.segment_id,
        "item_count": segment.item_count,
        "bytes": segment.bytes,
        "sha256": segment.sha256,
        "sizes": sizes(items),
    }
