"""Find store objects no committed segment accounts for.

A segment object becomes part of the dataset only through its index commit; a crash between
`complete()` and the commit, or a fenced zombie, leaves an object nobody will ever read. Such
objects, their side files, stale claim-check payloads and abandoned uploads are garbage once
older than a grace period (a live writer may be about to commit them).

The grace period must outlast what a live writer may still do with an object: an upload
lives at most the appender's `segment_max_age_seconds` (1 h by default) plus its close, and a
completed object waits for its commit at most `commit_attempts` backoffs (about a minute)
before the appender gives it up. `img2dataset gc` defaults to 24 h, far past both and past
any clock skew between the store and the machine running gc. A claim check whose item is
not stored waits for an APPEND record that may sit in Kafka as long as its retention, so
the CLI keeps those 7 days (Kafka's default retention) unless told otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from i2d_segments.index import Index, IndexAccessError
from i2d_segments.naming import SEGMENTS_PREFIX, STAGING_PREFIX
from i2d_segments.store import IncompleteUpload, ObjectInfo, SegmentStore, StoreError

UNCOMMITTED = "uncommitted segment"
STORED_CLAIM_CHECK = "claim check of a stored item"
STALE_CLAIM_CHECK = "stale claim check"


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


def _unreferenced(store: SegmentStore, index: Index) -> Iterator[tuple[ObjectInfo, str]]:
    """Every object under `segments/` and `staging/` no committed segment accounts for, with
    the reason, whatever its age. Claim checks are looked up in the index in batches."""
    committed = {s.segment_id for s in index.segments()}
    for info in store.list(SEGMENTS_PREFIX):
        segment_id = _segment_id_of_any(info.name)
        if segment_id is not None and segment_id not in committed:
            yield info, UNCOMMITTED
    batch: list[ObjectInfo] = []

    def flush() -> Iterator[tuple[ObjectInfo, str]]:
        stored = index.existing_items(i.name[len(STAGING_PREFIX) :] for i in batch)
        for i in batch:
            item_id = i.name[len(STAGING_PREFIX) :]
            yield i, STORED_CLAIM_CHECK if item_id in stored else STALE_CLAIM_CHECK
        batch.clear()

    for info in store.list(STAGING_PREFIX):
        batch.append(info)
        if len(batch) >= 1000:
            yield from flush()
    yield from flush()


def find_garbage(
    store: SegmentStore,
    index: Index,
    grace_seconds: float,
    *,
    staging_grace_seconds: float | None = None,
) -> Iterator[Garbage]:
    """Objects no committed segment names, last written more than `grace_seconds` ago.

    A claim check whose item is stored is garbage after `grace_seconds` too (a record still
    carrying it finds the item stored and never reads it); one whose item is not stored may
    still be waiting for its APPEND record to be consumed, so it is garbage only after
    `staging_grace_seconds` (default: `grace_seconds`)."""
    due = _due(grace_seconds, staging_grace_seconds)
    for info, reason in _unreferenced(store, index):
        if due(info, reason):
            yield Garbage(info.name, info.size, info.last_modified, reason)


def _due(
    grace_seconds: float, staging_grace_seconds: float | None
) -> Callable[[ObjectInfo, str], bool]:
    now = time.time()
    cutoff = now - grace_seconds
    staging = grace_seconds if staging_grace_seconds is None else staging_grace_seconds

    def due(info: ObjectInfo, reason: str) -> bool:
        limit = now - staging if reason == STALE_CLAIM_CHECK else cutoff
        return info.last_modified <= limit

    return due


def find_abandoned_uploads(store: SegmentStore, grace_seconds: float) -> list[IncompleteUpload]:
    """Uploads begun and never completed nor aborted (a writer died mid-segment)."""
    cutoff = time.time() - grace_seconds
    return [u for u in store.list_incomplete_uploads() if u.started <= cutoff]


@dataclass(slots=True)
class GcReport:
    """What `collect_garbage` found, or with `delete` removed (`objects`, `uploads`)."""

    objects: list[Garbage] = field(default_factory=list)
    uploads: list[IncompleteUpload] = field(default_factory=list)
    deleted: bool = False
    # Unreferenced but younger than their grace period: possibly a live writer's, kept.
    young_objects: int = 0
    young_uploads: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(g.size for g in self.objects)


def collect_garbage(
    store: SegmentStore,
    index: Index,
    *,
    grace_seconds: float,
    staging_grace_seconds: float | None = None,
    delete: bool = False,
) -> GcReport:
    """List garbage (the rules of `find_garbage` and `find_abandoned_uploads`); with `delete`,
    remove it.

    Before a segment object is deleted the index is asked again whether it is committed, so
    a commit that landed while gc ran keeps its object. Failures to delete are collected in
    `errors`, not raised."""
    report = GcReport(deleted=delete)
    due = _due(grace_seconds, staging_grace_seconds)
    for info, reason in _unreferenced(store, index):
        if due(info, reason):
            report.objects.append(Garbage(info.name, info.size, info.last_modified, reason))
        else:
            report.young_objects += 1
    cutoff = time.time() - grace_seconds
    uploads = list(store.list_incomplete_uploads())
    report.uploads = [u for u in uploads if u.started <= cutoff]
    report.young_uploads = len(uploads) - len(report.uploads)
    if not delete:
        return report
    for upload in report.uploads:
        try:
            store.abort_incomplete_upload(upload)
        except StoreError as e:
            report.errors.append(f"cannot abort the upload of {upload.name}: {e}")
    deleted: list[Garbage] = []
    for garbage in report.objects:
        segment_id = _segment_id_of_any(garbage.name)
        try:
            if segment_id is not None and index.segment(segment_id) is not None:
                continue  # committed since it was listed
            store.delete(garbage.name)
            deleted.append(garbage)
        except (StoreError, IndexAccessError) as e:
            report.errors.append(f"cannot delete {garbage.name}: {e}")
    report.objects = deleted
    return report
