"""The segment manifest: the last member of every segment the appender writes, `__segment__`.

It makes "the segments alone hold everything needed to rebuild the index" true for every
column, not only for stored images: the index rows of a segment include samples that have no
member of their own (failures, and successes whose item was already stored elsewhere), and
numbers no member carries (the offset range, the epoch, the fetch times). The manifest holds
them as JSON lines, written at close, inside the object whose sha256 the index records:

    {"kind": "segment", "v": 1, "segment_id": ..., "topic": ..., "partition": ..., ...}
    {"kind": "item", "item_id": ..., "data_offset": ..., ...}       one per item written
    {"kind": "sample", "sample_id": ..., "url": ..., ...}           one per input row

WebDataset readers skip it (a `__name__` member is metadata to them) and `iter_samples` does
too (it has no extension), so training code never sees it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from i2d_segments.index.base import ItemRow, SampleRow
from i2d_segments.segment.format import SegmentFormatError

MANIFEST_NAME = "__segment__"
MANIFEST_VERSION = 1

_ITEM_FIELDS = tuple(f.name for f in fields(ItemRow) if f.name != "segment_id")
_SAMPLE_FIELDS = tuple(f.name for f in fields(SampleRow) if f.name != "segment_id")


@dataclass(frozen=True, slots=True)
class SegmentManifest:
    segment_id: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    epoch: int
    created_at: float
    items: list[ItemRow]
    samples: list[SampleRow]


# One encoder for every line (a line per sample): `json.dumps` with options builds a new
# JSONEncoder at each call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# And one decoder: `json.loads` looks for a byte order mark and checks its argument at each
# call (a manifest is UTF-8, written by encode_manifest).
_decode = json.JSONDecoder().decode


def _line(obj: dict[str, Any]) -> bytes:
    return _ENCODER.encode(obj).encode("utf-8") + b"\n"


def encode_manifest(manifest: SegmentManifest) -> bytes:
    head = {
        "kind": "segment",
        "v": MANIFEST_VERSION,
        "segment_id": manifest.segment_id,
        "topic": manifest.topic,
        "partition": manifest.partition,
        "first_offset": manifest.first_offset,
        "last_offset": manifest.last_offset,
        "epoch": manifest.epoch,
        "created_at": manifest.created_at,
        "items": len(manifest.items),
        "samples": len(manifest.samples),
    }
    out = [_line(head)]
    for item in manifest.items:
        out.append(_line({"kind": "item", **{k: getattr(item, k) for k in _ITEM_FIELDS}}))
    # A line per input row: its dict written out field by field (the order of _SAMPLE_FIELDS,
    # checked below), not gathered with getattr (about a third of the encoding's time).
    encode = _ENCODER.encode
    out += [
        (
            encode(
                {
                    "kind": "sample",
                    "sample_id": s.sample_id,
                    "url": s.url,
                    "caption": s.caption,
                    "status": s.status,
                    "error": s.error,
                    "item_id": s.item_id,
                    "attrs": s.attrs,
                    "updated_at": s.updated_at,
                }
            )
            + "\n"
        ).encode("utf-8")
        for s in manifest.samples
    ]
    return b"".join(out)


assert _SAMPLE_FIELDS == (
    "sample_id",
    "url",
    "caption",
    "status",
    "error",
    "item_id",
    "attrs",
    "updated_at",
), "encode_manifest and _sample write and read a sample line's fields by name"


def decode_manifest(data: bytes) -> SegmentManifest:
    """Parse a manifest; SegmentFormatError if it is not one this version understands.

    Line by line: each line's dict is dropped as soon as its row is built, so parsing a
    manifest never holds all of its lines decoded besides its rows (which doubled the
    peak), and the strings rows repeat are shared (`_Shared`). Readers keep parsed
    manifests (`reader.SegmentRows`), and a process that materializes segment after segment
    parses one per segment: what a parsed row costs, and what parsing peaks at, is memory
    per row of the segment size.

    Lines are split on b"\\n" only: JSON escapes that one inside strings, not U+2028,
    U+2029 or U+0085, which `str.splitlines` also splits on (a caption holding one made the
    whole manifest unreadable)."""
    lines = _lines(data)
    try:
        head = json.loads(next(lines, b"null"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SegmentFormatError(f"manifest is not JSON lines: {e}") from e
    if not isinstance(head, dict) or head.get("kind") != "segment":
        raise SegmentFormatError("manifest does not start with its segment line")
    if head.get("v") != MANIFEST_VERSION:
        raise SegmentFormatError(f"manifest version {head.get('v')!r} is not supported")
    items: list[ItemRow] = []
    samples: list[SampleRow] = []
    shared = _Shared()
    try:
        segment_id = str(head["segment_id"])
        for line in lines:
            try:
                obj = _decode(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise SegmentFormatError(f"manifest is not JSON lines: {e}") from e
            kind = obj.get("kind")
            if kind == "sample":
                samples.append(_sample(obj, segment_id, shared))
            elif kind == "item":
                items.append(ItemRow(segment_id=segment_id, **{k: obj[k] for k in _ITEM_FIELDS}))
        manifest = SegmentManifest(
            segment_id=segment_id,
            topic=str(head["topic"]),
            partition=int(head["partition"]),
            first_offset=int(head["first_offset"]),
            last_offset=int(head["last_offset"]),
            epoch=int(head["epoch"]),
            created_at=float(head["created_at"]),
            items=items,
            samples=samples,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SegmentFormatError(f"manifest row is incomplete: {e!r}") from e
    if len(items) != head.get("items") or len(samples) != head.get("samples"):
        raise SegmentFormatError("manifest row counts differ from its segment line")
    return manifest


def _lines(data: bytes) -> Iterator[bytes]:
    """The non-empty lines of `data`, one at a time (not a list of them all: a second copy of
    the manifest)."""
    start, size = 0, len(data)
    while start < size:
        end = data.find(b"\n", start)
        if end < 0:
            end = size
        if end > start:
            yield data[start:end]
        start = end + 1


class _Shared:
    """One string object for each value rows repeat: img2dataset's column names (every row's
    `attrs` keys: json.loads makes new ones for each line), statuses, error messages (10,000
    rows of a dead site carry one message) and item ids (rows deduplicated to one image).
    About half of what a parsed failed row held."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}
        # attrs' keys, as a tuple -> the same tuple of shared strings: rows of one list have
        # the same columns, so a row's keys are one lookup, not one per key.
        self._keys: dict[tuple[str, ...], tuple[str, ...]] = {}

    def __call__(self, value: Any) -> Any:
        return self._seen.setdefault(value, value) if isinstance(value, str) else value

    def attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        keys = tuple(attrs)
        shared = self._keys.get(keys)
        if shared is None:
            shared = self._keys.setdefault(keys, tuple(self(k) for k in keys))
        return dict(zip(shared, attrs.values(), strict=True))


def _sample(obj: dict[str, Any], segment_id: str, shared: _Shared | None = None) -> SampleRow:
    # Every field is required: a missing one is a KeyError (the manifest is incomplete).
    status, error, item_id, attrs = obj["status"], obj["error"], obj["item_id"], obj["attrs"]
    if shared is not None:
        status, error, item_id = shared(status), shared(error), shared(item_id)
        if isinstance(attrs, dict):
            attrs = shared.attrs(attrs)
    return SampleRow(
        sample_id=obj["sample_id"],
        url=obj["url"],
        caption=obj["caption"],
        status=status,
        error=error,
        item_id=item_id,
        segment_id=segment_id,
        attrs=attrs,
        updated_at=obj["updated_at"],
    )


def decode_sample_tail(data: bytes, segment_id: str, *, partial: bool) -> list[SampleRow]:
    """The sample rows of the end of a manifest (`partial`: `data` starts inside a line, which
    is skipped), in manifest order: the rows appended last, without reading the whole
    manifest (status shows a segment's latest rows). Lines split as `decode_manifest` does."""
    if partial:
        data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
    try:
        lines = [json.loads(line) for line in _lines(data)]
        return [_sample(obj, segment_id) for obj in lines if obj.get("kind") == "sample"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise SegmentFormatError(f"manifest tail is not sample lines: {e!r}") from e
