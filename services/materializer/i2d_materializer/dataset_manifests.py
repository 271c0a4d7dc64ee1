"""Dataset manifests (`manifests/` in the store), rewritten from the index.

Each file is a function of the committed segments and the sample counts alone (no clock), so
rewriting them after a duplicate event yields the same bytes. Formats: see
`i2d_segments.reader.dataset_manifest`; the shard lists (`shards.txt`, `shards_brace.txt`,
`wids.json`) name the segments that hold images only, so every listed shard loads in any
WebDataset reader. The summary:

    {"segments", "items", "samples", "bytes", "status_counts", "failures" (top reasons),
     "success_rate", "first_segment_at", "last_segment_at", "shards", "wids",
     "shard_count" (segments listed: `segments` minus those without an image)}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from i2d_segments.index import Index
from i2d_segments.naming import object_name_of
from i2d_segments.reader.dataset_manifest import (
    BRACE_NAME,
    SHARDS_NAME,
    SUMMARY_NAME,
    WIDS_NAME,
    brace_expression,
    shard_segments,
    wids_description,
)
from i2d_segments.store import SegmentStore

TOP_FAILURES = 50


@dataclass(frozen=True, slots=True)
class ManifestFiles:
    shards: bytes
    brace: bytes
    wids: bytes
    summary: bytes

    def by_name(self) -> dict[str, bytes]:
        return {
            SHARDS_NAME: self.shards,
            BRACE_NAME: self.brace,
            WIDS_NAME: self.wids,
            SUMMARY_NAME: self.summary,
        }


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def dataset_summary(index: Index, shard_count: int | None = None) -> dict[str, Any]:
    """The summary; `shard_count` is how many segments the shard lists name (default: counted
    from the index)."""
    totals = index.totals()
    if shard_count is None:
        shard_count = len(shard_segments(index.segments()))
    counts = index.status_counts()
    samples = sum(counts.values())
    failures = sorted(index.error_counts().items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "segments": totals.segments,
        "items": totals.items,
        "samples": samples,
        "bytes": totals.bytes,
        "status_counts": dict(sorted(counts.items())),
        "success_rate": round(counts.get("success", 0) / samples, 6) if samples else None,
        "failures": [{"reason": r, "count": n} for r, n in failures[:TOP_FAILURES]],
        "first_segment_at": totals.first_created_at,
        "last_segment_at": totals.last_created_at,
        "shards": SHARDS_NAME,
        "wids": WIDS_NAME,
        "shard_count": shard_count,
    }


def build_manifests(store: SegmentStore, index: Index) -> ManifestFiles:
    listed = shard_segments(index.segments())
    urls = [store.uri(object_name_of(s.segment_id)) for s in listed]
    return ManifestFiles(
        shards="".join(f"{u}\n" for u in urls).encode("utf-8"),
        brace=(brace_expression(urls) + "\n").encode("utf-8") if urls else b"",
        wids=_json(wids_description(listed)),
        summary=_json(dataset_summary(index, len(listed))),
    )


def write_manifests(store: SegmentStore, index: Index) -> ManifestFiles:
    files = build_manifests(store, index)
    for name, body in files.by_name().items():
        store.put(name, body)
    return files
