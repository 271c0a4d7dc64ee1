"""Find store objects no committed segment accounts for.

A segment object becomes part of the dataset only through its index commit; a crash between
`complete()` and the commit, or a fenced zombie, leaves an object nobody will ever read. Such
objects, their side files, stale claim-check payloads and abandoned uploads are garbage once
older than a grace period (a live writer may be about to commit them).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from i2d_segments.index import Index
from i2d_segments.naming import SEGMENTS_PREFIX, STAGING_PREFIX
from i2d_segments.store import IncompleteUpload, SegmentStore


@dataclass(frozen=True, slots=True)
class Garbage:
    name: str
    size: int
    last_modified: float
    reason: str


def _segment_id_of_any(name: str) -> str | None:
    """`segments/p00000/<first>-e<epoch>` + any suffix (.tar, .parquet, _stats.json)."""
    if not name.startswith(SEGMENTS_PREFIX):
        return None
    rest = name[len(SEGMENTS_PREFIX) :]
    head, sep, tail = rest.partition("/")
    if not sep:
        return None
    stem = tail
    for suffix in (".tar", ".parquet", "_stats.json"):
        if tail.endswith(suffix):
            stem = tail[: -len(suffix)]
            break
    else:
        return None
    return f"{head}/{stem}"


def find_garbage(store: SegmentStore, index: Index, grace_seconds: float) -> Iterator[Garbage]:
    committed = {s.segment_id for s in index.segments()}
    cutoff = time.time() - grace_seconds
    for info in store.list(SEGMENTS_PREFIX):
        if info.last_modified > cutoff:
            continue
        segment_id = _segment_id_of_any(info.name)
        if segment_id is not None and segment_id not in committed:
            yield Garbage(info.name, info.size, info.last_modified, "uncommitted segment")
    for info in store.list(STAGING_PREFIX):
        if info.last_modified <= cutoff:
            yield Garbage(info.name, info.size, info.last_modified, "stale claim check")


def find_abandoned_uploads(store: SegmentStore, grace_seconds: float) -> list[IncompleteUpload]:
    """Uploads begun and never completed nor aborted (a writer died mid-segment)."""
    cutoff = time.time() - grace_seconds
    return [u for u in store.list_incomplete_uploads() if u.started <= cutoff]
