"""Rebuild the index from the segments alone (`img2dataset reindex`).

Every segment the appender writes ends with its `__segment__` manifest: the segment's offset
range, epoch and times, and the exact item and sample rows its index commit inserted
(failures included). Rebuilding is reading every segment object and committing those rows
again, through the ordinary `Index.commit_segment`, into a new or empty index.

Which objects count. The store also holds objects no commit names: a crash between
`complete()` and the index commit, or a fenced zombie, leaves a complete object that was
never part of the dataset. Without the original index, the appender's fencing tells them
apart. An owner takes a partition by bumping its epoch and then writes only from the
committed `next_offset` on, and a commit succeeds only while its epoch is still current. So
if an object X of epoch e was committed, that happened before any epoch above e was taken,
and every object of a higher epoch starts after X's last offset. Hence the rule:

    an object X is garbage if some object Y of the same partition has a higher epoch and
    starts at or before X's last offset (Y.epoch > X.epoch and Y.first_offset <= X.last_offset).

It never drops a committed segment, whether Y itself was committed or not, and it drops
every leftover that a later owner overwrote: a zombie's object (the new owner resumed at or
before its first offset), and the object of a crash after `complete()` (the next owner
rewrote those offsets under a new epoch). What it cannot catch is an uncommitted object
that nothing came after: the last object of a partition whose writer died before its commit,
with no owner writing since. Nothing in the segments tells that one apart from a committed
one, so it is indexed (`gc`, which has the index, removes such objects once their grace
period is over; run it before you lose the index if you can). An object that does not read
back (truncated, corrupt, inconsistent manifest) is reported and not indexed, but still
counts as written: it supersedes older objects, and its epoch counts. Its rows are missing
from the rebuilt index (`report.ok` is False); if it was its partition's last object, the
partition's `next_offset` stops before it, so an appender reads those records again.
Object names carry no topic, so a store holds one APPEND topic's segments.

The rebuilt index equals the original: segments (sha256 and size recomputed from the
bytes), items, samples, and each partition's `next_offset` (the last segment's last offset
+ 1). A partition's epoch is the highest epoch any of its objects carries, which is the
original's unless an owner took the partition after that and wrote nothing; the next owner
takes a higher one anyway. Samples recorded twice (a row fetched again) keep the latest
outcome, as commits do: segments are committed in partition order, partitions interleaved by
the time of their segments' last appended row. Run it with the appenders stopped.

A segment without a manifest is not one this project writes: it is reported and left out.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from i2d_segments.index import Index, ItemRow, SampleRow, SegmentCommit, SegmentRow
from i2d_segments.naming import SEGMENTS_PREFIX, parse_segment_name, segment_id_of
from i2d_segments.segment.format import MemberLocation, SegmentFormatError
from i2d_segments.segment.manifest import MANIFEST_NAME, SegmentManifest, decode_manifest
from i2d_segments.segment.scan import scan_segment
from i2d_segments.store import ObjectInfo, SegmentStore, StoreError

log = logging.getLogger(__name__)

REINDEX_OWNER = "reindex"
DEFAULT_TOPIC = "APPEND"
# The columns a sample row carries itself; the rest of a `.json` member goes to `attrs`
# (as the appender splits them).
_SAMPLE_JSON_COLUMNS = ("url", "caption", "status", "error_message", "sample_id")


class ReindexError(RuntimeError):
    """The rebuild cannot start (the target index is not empty) or a commit failed."""


@dataclass(frozen=True, slots=True)
class Skipped:
    name: str
    reason: str


@dataclass(slots=True)
class SegmentObject:
    """One readable segment object and what its index commit holds."""

    name: str
    segment: SegmentRow
    manifest_location: MemberLocation | None
    last_appended: float = 0.0  # the newest sample row's time: when the segment closed, about

    @property
    def key(self) -> tuple[str, int]:
        return self.segment.topic, self.segment.partition


@dataclass(slots=True)
class ReindexPlan:
    """What `rebuild_index` commits, in order, and what it leaves out."""

    segments: list[SegmentObject] = field(default_factory=list)
    superseded: list[Skipped] = field(default_factory=list)  # garbage by the epoch rule
    invalid: list[Skipped] = field(default_factory=list)  # unreadable or inconsistent objects
    epochs: dict[tuple[str, int], int] = field(default_factory=dict)


@dataclass(slots=True)
class ReindexReport:
    segments: int = 0
    items: int = 0
    samples: int = 0
    partitions: int = 0
    superseded: list[Skipped] = field(default_factory=list)
    invalid: list[Skipped] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every segment object was readable and consistent (garbage left out is fine)."""
        return not self.invalid


# ----------------------------------------------------------------------------- reading


def _read_object(store: SegmentStore, info: ObjectInfo) -> SegmentObject | Skipped:
    name = info.name
    partition, first_offset, epoch = parse_segment_name(name)
    segment_id = segment_id_of(name)
    try:
        with store.open_stream(name) as stream:
            scan = scan_segment(stream)
    except FileNotFoundError:
        return Skipped(name, "deleted while reindexing")
    except (StoreError, OSError) as e:
        return Skipped(name, f"cannot read: {e}")
    if scan.error is not None:
        return Skipped(name, f"not a complete segment: {scan.error}")
    location = scan.locations.get(MANIFEST_NAME)
    if location is None or scan.manifest is None:
        return Skipped(name, "has no __segment__ manifest")
    try:
        manifest = decode_manifest(scan.manifest)
    except SegmentFormatError as e:
        return Skipped(name, f"unreadable manifest: {e}")
    problem = _manifest_problem(manifest, segment_id, partition, first_offset, epoch)
    if problem is None:
        problem = _location_problem(manifest.items, scan.locations)
    if problem is not None:
        return Skipped(name, problem)
    row = SegmentRow(
        segment_id=segment_id,
        topic=manifest.topic,
        partition=partition,
        first_offset=first_offset,
        last_offset=manifest.last_offset,
        epoch=epoch,
        uri=store.uri(name),
        item_count=len(manifest.items),
        sample_count=len(manifest.samples),
        bytes=scan.size,
        sha256=scan.sha256,
        created_at=manifest.created_at,
        manifest_offset=location.data_offset,
        manifest_length=location.data_length,
    )
    last = max((s.updated_at for s in manifest.samples), default=manifest.created_at)
    return SegmentObject(name, row, location, last_appended=max(last, manifest.created_at))


def _manifest_problem(
    m: SegmentManifest, segment_id: str, partition: int, first_offset: int, epoch: int
) -> str | None:
    if (m.segment_id, m.partition, m.first_offset, m.epoch) != (
        segment_id,
        partition,
        first_offset,
        epoch,
    ):
        return (
            f"manifest names {m.segment_id} (partition {m.partition}, offset {m.first_offset}, "
            f"epoch {m.epoch}), not the object's own name"
        )
    if m.last_offset < m.first_offset:
        return f"manifest's last offset {m.last_offset} is below its first {m.first_offset}"
    return None


def _location_problem(items: Iterable[ItemRow], locations: dict[str, MemberLocation]) -> str | None:
    for item in items:
        loc = locations.get(f"{item.item_id}.{item.ext}")
        if loc is None:
            return f"manifest lists item {item.item_id}.{item.ext}, the tar has no such member"
        if (loc.data_offset, loc.data_length) != (item.data_offset, item.data_length):
            return (
                f"manifest puts {item.item_id} at {item.data_offset}+{item.data_length}, "
                f"its member is at {loc.data_offset}+{loc.data_length}"
            )
    return None


# ----------------------------------------------------------------------------- choosing


@dataclass(frozen=True, slots=True)
class _Claim:
    """What an object's name says was written: an owner of `epoch` wrote from `first_offset`
    (true even of an object that no longer reads back, which therefore still supersedes)."""

    name: str
    partition: int
    epoch: int
    first_offset: int
    obj: SegmentObject | None  # None: unreadable, never indexed


def choose(
    objects: Iterable[SegmentObject], unreadable: Iterable[str] = ()
) -> tuple[list[SegmentObject], list[Skipped]]:
    """Apply the epoch rule (module docstring): the chain of every partition in offset order,
    and the objects left out with the reason. `unreadable` names take part as the later
    writers they were, though they are never indexed themselves."""
    claims = [
        _Claim(o.name, o.segment.partition, o.segment.epoch, o.segment.first_offset, o)
        for o in objects
    ]
    for name in unreadable:
        partition, first_offset, epoch = parse_segment_name(name)
        claims.append(_Claim(name, partition, epoch, first_offset, None))
    by_partition: dict[int, list[_Claim]] = {}
    for claim in claims:
        by_partition.setdefault(claim.partition, []).append(claim)
    chosen: list[SegmentObject] = []
    skipped: list[Skipped] = []
    for group in by_partition.values():
        kept: list[SegmentObject] = []
        # Walk epochs downwards; `lowest` is the claim starting first among higher epochs.
        group.sort(key=lambda c: (-c.epoch, c.first_offset))
        lowest: _Claim | None = None
        i = 0
        while i < len(group):
            same = [c for c in group[i:] if c.epoch == group[i].epoch]
            for claim in same:
                obj = claim.obj
                if obj is None:
                    continue
                if lowest is not None and lowest.first_offset <= obj.segment.last_offset:
                    skipped.append(
                        Skipped(
                            obj.name,
                            f"superseded: {lowest.name} (epoch {lowest.epoch}) rewrote offsets "
                            f"from {lowest.first_offset}, within this object's "
                            f"{obj.segment.first_offset}..{obj.segment.last_offset}",
                        )
                    )
                else:
                    kept.append(obj)
            for claim in same:
                if lowest is None or claim.first_offset < lowest.first_offset:
                    lowest = claim
            i += len(same)
        kept.sort(key=lambda o: o.segment.first_offset)
        previous: SegmentObject | None = None
        for obj in kept:
            if previous is not None and obj.segment.first_offset <= previous.segment.last_offset:
                # Equal epochs overlapping: one owner never writes that, so nothing decides.
                skipped.append(
                    Skipped(
                        obj.name,
                        f"overlaps {previous.name} under the same epoch: ambiguous, left out",
                    )
                )
                continue
            chosen.append(obj)
            previous = obj
    return chosen, skipped


def _commit_order(chains: list[SegmentObject]) -> list[SegmentObject]:
    """Each partition's chain in offset order, partitions interleaved by segment close time
    (the newest row a segment holds), so that "latest outcome wins" picks as commits did."""
    per: dict[tuple[str, int], list[SegmentObject]] = {}
    for obj in sorted(chains, key=lambda o: o.segment.first_offset):
        per.setdefault(obj.key, []).append(obj)
    heap: list[tuple[float, str, int, int, tuple[str, int]]] = []
    for key, chain in per.items():
        head = chain[0]
        heapq.heappush(heap, (head.last_appended, key[0], key[1], 0, key))
    out: list[SegmentObject] = []
    while heap:
        _, _, _, pos, key = heapq.heappop(heap)
        chain = per[key]
        out.append(chain[pos])
        if pos + 1 < len(chain):
            nxt = chain[pos + 1]
            heapq.heappush(heap, (nxt.last_appended, key[0], key[1], pos + 1, key))
    return out


def plan_reindex(
    store: SegmentStore,
    *,
    workers: int = 4,
    topic: str = DEFAULT_TOPIC,
) -> ReindexPlan:
    """Read every segment object of `store` and decide what a rebuilt index holds.

    `topic` names the partitions of objects whose topic nothing records (unreadable ones)."""
    infos: list[ObjectInfo] = []
    for info in store.list(SEGMENTS_PREFIX):
        try:
            parse_segment_name(info.name)
        except ValueError:
            continue  # a side file (metadata parquet, stats) or anything else
        infos.append(info)
    plan = ReindexPlan()
    objects: list[SegmentObject] = []
    topics: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda i: _read_object(store, i), infos)
        for result in results:
            if isinstance(result, Skipped):
                log.warning("reindex: %s left out: %s", result.name, result.reason)
                plan.invalid.append(result)
                continue
            objects.append(result)
            topics.setdefault(result.segment.partition, result.segment.topic)
    # A partition's epoch: the highest any of its objects carries, readable or not (each was
    # taken from the index by an owner).
    for info in infos:
        partition, _, epoch = parse_segment_name(info.name)
        key = (topics.get(partition, topic), partition)
        plan.epochs[key] = max(plan.epochs.get(key, 0), epoch)
    chosen, superseded = choose(objects, [s.name for s in plan.invalid])
    plan.superseded = superseded
    plan.segments = _commit_order(chosen)
    return plan


# ----------------------------------------------------------------------------- writing


def _rows(store: SegmentStore, obj: SegmentObject) -> tuple[list[ItemRow], list[SampleRow]]:
    loc = obj.manifest_location
    assert loc is not None
    manifest = decode_manifest(store.read_range(obj.name, loc.data_offset, loc.data_length))
    return manifest.items, manifest.samples


def _check_empty(index: Index) -> None:
    if index.partitions() or index.totals().segments:
        raise ReindexError(
            "the target index is not empty: reindex builds a new index (give an empty one)"
        )


def rebuild_index(
    store: SegmentStore,
    index: Index,
    *,
    workers: int = 4,
    topic: str = DEFAULT_TOPIC,
    owner: str = REINDEX_OWNER,
    on_segment: Callable[[SegmentRow], None] | None = None,
) -> ReindexReport:
    """Rebuild `index` (migrated, empty) from the segment objects of `store`.

    Raises ReindexError if the index is not empty; store and index errors propagate. The
    report lists what was left out: `superseded` objects are garbage by the epoch rule,
    `invalid` ones could not be read or contradict themselves (`report.ok` is False).
    """
    _check_empty(index)
    plan = plan_reindex(store, workers=workers, topic=topic)
    report = ReindexReport(superseded=plan.superseded, invalid=plan.invalid)
    epochs: dict[tuple[str, int], int] = {}

    def reach(key: tuple[str, int], epoch: int) -> None:
        # Epochs are only ever taken one at a time, as owners took them.
        current = epochs.get(key, 0)
        while current < epoch:
            current = index.acquire_partition(key[0], key[1], owner).epoch
        epochs[key] = current

    for obj in plan.segments:
        seg = obj.segment
        try:
            items, samples = _rows(store, obj)
        except (StoreError, OSError, SegmentFormatError) as e:
            raise ReindexError(f"cannot read the manifest of {obj.name} again: {e}") from e
        reach(obj.key, seg.epoch)
        index.commit_segment(
            SegmentCommit(
                epoch=seg.epoch,
                segment=seg,
                items=items,
                samples=samples,
                next_offset=seg.last_offset + 1,
            )
        )
        report.segments += 1
        report.items += len(items)
        report.samples += len(samples)
        if on_segment is not None:
            on_segment(seg)
    for key, epoch in plan.epochs.items():
        reach(key, epoch)
    report.partitions = len(epochs)
    return report
