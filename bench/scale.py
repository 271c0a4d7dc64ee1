"""`make scale`: the index and the status service at millions of samples.

    python -m bench.scale [--samples 5000000] [--engine postgres|sqlite] [--writers 2]
                          [--pg-setting shared_buffers=2GB] [--dsn postgresql://...] [--keep]

Loads N synthetic samples through the project's own write path (`Index.commit_segment` with
its row classes, 10,000 rows per segment, a few writers on their own partitions as appenders
do): ~70% successes with their items, failures over 20 reasons, urls of ~90 characters,
captions on most rows, img2dataset's columns in attrs; and, in every segment, 20 earlier
failures fetched again with success (moved to the newer segment) and 20 redelivered unchanged.
Then prints, against the goals (PASS/FAIL):

- bytes per sample of the index, with its indexes (goal: at most 150), and of each table and
  each index (PostgreSQL: pg_total_relation_size, pg_relation_size, pg_indexes_size; SQLite:
  the dbstat table, else the file size);
- the answer time of `StatusSource.status()` (a refresh right after a commit, then a steady
  one) and of every endpoint of the status app, called in-process; the plan (EXPLAIN ANALYZE)
  of every index query they ran whose plan reads more rows than it returns;
- a segment commit (10k rows) at the end of the load, `known_samples` of 10k ids, point
  lookups of the index (item, sample, url: what the index holds; a full row adds one read of
  the segment's manifest, kept parsed by `SegmentRows`);
- whether the totals equal a full recount of the rows.

The segments of the load have no objects but the last few of each writer, whose manifest (no
images) is written to a local store, so the status service's latest rows read as they do in a
dataset.

PostgreSQL is started as the tests start it (tests/servers/postgres.py: a throwaway cluster,
fsync=off, synchronous_commit=off, full_page_writes=off, default shared_buffers: 128 MB, far
less than the indexes of 5 M samples), plus any `--pg-setting`, unless `--dsn` names a server
(a new database is created in it). Its data folder is removed at the end unless `--keep`.
Timings are wall-clock: the machine's load average is printed beside them. Exit status 1 when
a goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import multiprocessing as mp
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from i2d_segments.index import (
    Index,
    ItemRow,
    PostgresIndex,
    SampleRow,
    SegmentCommit,
    SegmentRow,
    SqliteIndex,
)
from i2d_segments.index.commit import CARRIER_STATUS
from i2d_segments.naming import segment_id_of, segment_object_name

if TYPE_CHECKING:
    from tests.servers.postgres import PostgresServer

T = TypeVar("T")

TOPIC = "APPEND"
SEGMENT_ROWS = 10_000
RETRIED = 20  # earlier failures fetched again with success, per segment: moved rows
REDELIVERED = 20  # earlier failures delivered again unchanged, per segment: rows that stay
FRESH = SEGMENT_ROWS - RETRIED - REDELIVERED

# Goals (seconds).
GOAL_ANSWER = 0.5
GOAL_COMMIT = 1.0
GOAL_KNOWN = 0.2
GOAL_LOOKUP = 0.005
GOAL_BYTES_PER_SAMPLE = 150  # the index, its indexes included
# The last segments of each writer written as objects (their manifests): what status reads.
MANIFESTS_WRITTEN = 5

# (status, error, weight in % of the failures): 20 reasons.
FAILURES: tuple[tuple[str, str, int], ...] = (
    ("failed_to_download", "HTTP Error 404: Not Found", 25),
    ("failed_to_download", "timed out after 10s", 15),
    ("failed_to_download", "HTTP Error 403: Forbidden", 12),
    ("failed_to_download", "DNS resolution failed: Name or service not known", 8),
    ("failed_to_download", "cannot connect: Connection refused", 6),
    ("failed_to_resize", "Image decoding error: cannot identify image file", 5),
    ("failed_to_download", "HTTP Error 500: Internal Server Error", 4),
    ("failed_to_download", "HTTP Error 503: Service Unavailable", 3),
    ("failed_to_download", "HTTP Error 410: Gone", 3),
    ("failed_to_download", "TLS error: certificate verify failed", 3),
    ("failed_to_download", "connection error: Connection reset by peer", 3),
    ("failed_to_download", "HTTP Error 429: Too Many Requests", 2),
    ("failed_to_download", "Use of image disallowed by X-Robots-Tag", 2),
    ("failed_to_download", "HTTP Error 401: Unauthorized", 2),
    ("failed_to_resize", "image too small", 2),
    ("failed_to_download", "too many redirects", 1),
    ("failed_to_download", "body larger than max_body_bytes (20000000 bytes)", 1),
    ("failed_to_download", "invalid url", 1),
    ("failed_to_resize", "not an image: text/html", 1),
    ("failed_to_resize", "image area too large", 1),
)
_FAILURE_TABLE = [f for f in FAILURES for _ in range(f[2])]
_TEXT = (
    "photo of a red vintage car parked on the street at sunset with people walking by "
    "beautiful mountain landscape lake reflection morning fog cat sitting window "
    "wooden table coffee cup book modern kitchen interior design white wall plant "
    "logo vector illustration icon set stock image portrait woman smiling outdoor"
)
_WORDS = _TEXT.split()


# ---------------------------------------------------------------------------- the synthetic rows


def outcome(n: int) -> tuple[str, str | None]:
    """Row n's first outcome: 70% success, the rest over FAILURES by weight."""
    h = (n * 2654435761) % 2**32
    if h % 1000 < 700:
        return "success", None
    status, error, _ = _FAILURE_TABLE[(h // 1000) % len(_FAILURE_TABLE)]
    return status, error


def url_of(n: int) -> str:
    h = hashlib.blake2b(n.to_bytes(8, "big"), digest_size=12).hexdigest()
    # ~90 characters, as LAION's urls are on average.
    host = f"images{n % 97:02d}.cdn-example.com"
    return f"https://{host}/media/uploads/2023/{n % 12 + 1:02d}/{h}-{n}-1.jpg"


def caption_of(n: int) -> str | None:
    rng = random.Random(n)
    if rng.random() < 0.15:
        return None
    return " ".join(rng.choices(_WORDS, k=rng.randrange(3, 22)))


def sample_of(
    n: int, segment_id: str, at: float, status_error: tuple[str, str | None]
) -> SampleRow:
    status, error = status_error
    ok = status == "success"
    url = url_of(n)
    item_id = hashlib.sha256(b"item %d" % n).hexdigest() if ok else None
    attrs: dict[str, Any] = {
        "key": f"{n:09d}",
        "width": 256 if ok else None,
        "height": 256 if ok else None,
        "original_width": 640 + n % 1000 if ok else None,
        "original_height": 480 + n % 700 if ok else None,
        "exif": "{}" if ok else None,
        "sha256": hashlib.sha256(b"bytes %d" % n).hexdigest() if ok else None,
    }
    return SampleRow(
        sample_id=hashlib.sha256(url.encode()).hexdigest(),
        url=url,
        caption=caption_of(n),
        status=status,
        error=error,
        item_id=item_id,
        segment_id=segment_id,
        attrs=attrs,
        updated_at=at + (n % SEGMENT_ROWS) * 1e-4,
    )


def item_of(sample: SampleRow, place: int) -> ItemRow:
    assert sample.item_id is not None
    return ItemRow(
        item_id=sample.item_id,
        segment_id=sample.segment_id,
        data_offset=1536 + place * 20_480,
        data_length=18_000 + place % 4000,
        ext="jpg",
        mime="image/jpeg",
        width=256,
        height=256,
        original_width=sample.attrs["original_width"],
        original_height=sample.attrs["original_height"],
        data_sha256=hashlib.sha256(b"stored %s" % sample.item_id.encode()).hexdigest(),
    )


def build_commit(partition: int, k: int, epoch: int, first_row: int, at: float) -> SegmentCommit:
    """Segment k of a partition: FRESH new rows from `first_row`, and rows of its previous
    segment (segment k-1) delivered again: RETRIED failures now successes (they move to this
    segment), REDELIVERED failures unchanged (they stay where they are)."""
    rows = [(n, outcome(n)) for n in range(first_row, first_row + FRESH)]
    if k > 0:
        failed = [n for n in range(first_row - FRESH, first_row) if outcome(n)[0] != "success"]
        retried = [n for n in failed if outcome(n)[1] == TIMEOUT][:RETRIED]
        rows += [(n, SUCCESS) for n in retried]
        rows += [(n, outcome(n)) for n in failed if n not in retried][:REDELIVERED]
    return segment_commit(partition, k * SEGMENT_ROWS, epoch, rows, at)


TIMEOUT = "timed out after 10s"
SUCCESS: tuple[str, str | None] = ("success", None)


def segment_commit(
    partition: int,
    first_offset: int,
    epoch: int,
    rows: Sequence[tuple[int, tuple[str, str | None]]],
    at: float,
) -> SegmentCommit:
    segment_id = segment_id_of(segment_object_name(partition, first_offset, epoch))
    samples = [sample_of(n, segment_id, at, status_error) for n, status_error in rows]
    items = [item_of(s, i) for i, s in enumerate(samples) if s.item_id is not None]
    segment = SegmentRow(
        segment_id=segment_id,
        topic=TOPIC,
        partition=partition,
        first_offset=first_offset,
        last_offset=first_offset + len(samples) - 1,
        epoch=epoch,
        uri=f"file:///scale/segments/{segment_id}.tar",
        item_count=len(items),
        sample_count=len(samples),
        bytes=sum(i.data_length + 2048 for i in items),
        sha256=hashlib.sha256(segment_id.encode()).hexdigest(),
        created_at=at,
    )
    return SegmentCommit(epoch, segment, items, samples, segment.last_offset + 1)


# ---------------------------------------------------------------------------- the load


@dataclass(frozen=True)
class Target:
    engine: str
    where: str  # DSN or file path
    store: str  # the folder the manifests of the last segments go to

    def open(self) -> Index:
        if self.engine == "postgres":
            return PostgresIndex(self.where)
        return SqliteIndex(self.where)


def first_row_of(partition: int, k: int, writers: int) -> int:
    """Fresh rows are numbered segment by segment, round-robin over the partitions."""
    return (k * writers + partition) * FRESH


def segments_per_writer(samples: int, writers: int) -> int:
    return max(1, -(-samples // (FRESH * writers)))


def with_manifest(target: Target, commit: SegmentCommit) -> SegmentCommit:
    """The segment written as an object holding its manifest only (no images)."""
    from i2d_segments.store.local import LocalStore
    from tests.segment_files import store_segment

    return store_segment(LocalStore(Path(target.store)), commit, images=False)


def _writer(target: Target, partition: int, writers: int, segments: int, out: Any) -> None:
    index = target.open()
    try:
        lease = index.acquire_partition(TOPIC, partition, f"scale-{partition}")
        for k in range(segments):
            commit = build_commit(
                partition, k, lease.epoch, first_row_of(partition, k, writers), time.time()
            )
            if k >= segments - MANIFESTS_WRITTEN:
                commit = with_manifest(target, commit)
            started = time.perf_counter()
            index.commit_segment(commit)
            out.put((partition, k, time.perf_counter() - started))
    except BaseException as e:
        out.put(("error", partition, repr(e)))
        raise
    finally:
        index.close()


def load(target: Target, samples: int, writers: int) -> list[float]:
    """Commit the segments from `writers` processes; returns each commit's seconds in order."""
    segments = segments_per_writer(samples, writers)
    total = segments * writers
    print(
        f"loading {total * FRESH:,} samples: {total} segments of {SEGMENT_ROWS:,} rows "
        f"({FRESH:,} new, {RETRIED} moved, {REDELIVERED} redelivered) from {writers} writers"
    )
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(target, p, writers, segments, out))
        for p in range(writers)
    ]
    started = time.perf_counter()
    for p in procs:
        p.start()
    times: list[float] = []
    last_print = started
    while len(times) < total:
        got = out.get(timeout=600)
        if got[0] == "error":
            raise SystemExit(f"writer {got[1]} failed: {got[2]}")
        times.append(got[2])
        now = time.perf_counter()
        if now - last_print > 15 or len(times) == total:
            last_print = now
            done = len(times) * FRESH
            print(
                f"  {done:>11,} samples  {now - started:7.1f} s  {done / (now - started):8,.0f}/s"
                f"  last commit {got[2]:.2f} s",
                flush=True,
            )
    for p in procs:
        p.join(60)
    elapsed = time.perf_counter() - started
    print(f"loaded in {elapsed:.0f} s ({total * FRESH / elapsed:,.0f} samples/s)\n")
    return times


# ---------------------------------------------------------------------------- measuring


class Report:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def goal(self, what: str, seconds: float, limit: float, extra: str = "") -> None:
        ok = seconds < limit
        if not ok:
            self.failed.append(what)
        tail = f"  {extra}" if extra else ""
        print(
            f"  {'PASS' if ok else 'FAIL'}  {what:<44} {seconds * 1000:9.1f} ms"
            f"  (goal < {limit * 1000:.0f} ms){tail}"
        )

    def check(self, what: str, ok: bool, detail: str = "") -> None:
        if not ok:
            self.failed.append(what)
        print(f"  {'PASS' if ok else 'FAIL'}  {what}{f'  {detail}' if detail else ''}")


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


class Recorder:
    """Every read the index runs (its `_fetch`), to explain them afterwards."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.queries: dict[str, Sequence[Any]] = {}
        self._fetch = index._fetch  # type: ignore[attr-defined]
        setattr(index, "_fetch", self._record)  # noqa: B010  (instance attribute on purpose)

    def _record(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.queries.setdefault(sql, tuple(params))
        return self._fetch(sql, params)

    @contextlib.contextmanager
    def only(self) -> Iterator[dict[str, Sequence[Any]]]:
        self.queries = {}
        yield self.queries


def sizes_postgres(dsn: str, samples: int) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid), "
            "pg_indexes_size(c.oid), "
            "COALESCE(pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 2 DESC"
        ).fetchall()
        indexes = conn.execute(
            "SELECT i.relname, i.indexrelname, pg_relation_size(i.indexrelid), x.indexdef "
            "FROM pg_stat_user_indexes i JOIN pg_indexes x "
            "ON x.indexname = i.indexrelname AND x.schemaname = i.schemaname "
            "ORDER BY 3 DESC"
        ).fetchall()
        shared_buffers = conn.execute("SHOW shared_buffers").fetchone()
    total = sum(int(t[1]) for t in tables)
    index_bytes = sum(int(i[2]) for i in indexes)
    print(f"size of the index: {total / 2**20:,.0f} MiB, {total / samples:,.0f} bytes per sample")
    print(
        f"  its indexes: {index_bytes / 2**20:,.0f} MiB; the server's shared_buffers: "
        f"{shared_buffers[0] if shared_buffers else '?'} (inserts and lookups by random keys "
        "touch pages all over the indexes)"
    )
    print(f"  {'table':<20} {'total B/sample':>15} {'heap':>9} {'toast':>9} {'indexes':>9}")
    for name, t, heap, idx, toast in tables:
        if int(t) < 64 * 1024:
            continue
        print(
            f"  {name:<20} {int(t) / samples:>15.1f} {int(heap) / samples:>9.1f} "
            f"{int(toast) / samples:>9.1f} {int(idx) / samples:>9.1f}"
        )
    print(f"  {'index':<36} {'B/sample':>9}  definition")
    for _, name, size, definition in indexes:
        if int(size) < 64 * 1024:
            continue
        using = definition.split(" USING ", 1)[-1]
        print(f"  {name:<36} {int(size) / samples:>9.1f}  {using}")
    return total


def sizes_sqlite(path: str, samples: int) -> int:
    import sqlite3

    total = os.path.getsize(path)
    print(f"size of the index: {total / 2**20:,.0f} MiB, {total / samples:,.0f} bytes per sample")
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT d.name, m.type, m.tbl_name, SUM(d.pgsize) FROM dbstat d "
            "LEFT JOIN sqlite_master m ON m.name = d.name GROUP BY d.name ORDER BY 4 DESC"
        ).fetchall()
    except sqlite3.Error:
        print("  (no dbstat table in this SQLite: the file size only)")
        return total
    finally:
        conn.close()
    print(f"  {'table or index':<36} {'B/sample':>9}  of")
    for name, kind, table, size in rows:
        if int(size) < 64 * 1024:
            continue
        print(f"  {name:<36} {int(size) / samples:>9.1f}  {kind or 'table'} of {table or name}")
    return total


def explain_postgres(dsn: str, queries: dict[str, Sequence[Any]]) -> None:
    """EXPLAIN ANALYZE each query: one line each (rows its scans read, rows it returns), then
    the plans of those that read more rows than they return."""
    import psycopg

    plans = []
    with psycopg.connect(dsn) as conn:
        for sql, params in queries.items():
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            query = sql.replace("?", "%s")
            plan = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", params).fetchone()
            assert plan is not None
            root = plan[0][0]["Plan"]
            returned = int(root.get("Actual Rows", 0)) * int(root.get("Actual Loops", 1))
            read = _rows_read(root)
            ms = float(plan[0][0].get("Execution Time", 0.0))
            print(f"  reads {read:>7,} returns {returned:>5,} {ms:7.2f} ms  {_short(sql, 72)}")
            if read > max(returned, 1):
                text = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {query}", params).fetchall()
                plans.append((sql, read, returned, [line for (line,) in text]))
    for sql, read, returned, lines in plans:
        print(f"\n  reads {read:,} rows, returns {returned:,}: {_short(sql, 90)}")
        for line in lines:
            print(f"    {line}")


def _rows_read(node: dict[str, Any]) -> int:
    """Rows the scans under `node` read: returned by the scan, plus those its filters removed."""
    read = 0
    if "Relation Name" in node or node.get("Node Type", "").endswith("Scan"):
        loops = int(node.get("Actual Loops", 1))
        read += int(node.get("Actual Rows", 0)) * loops
        read += int(node.get("Rows Removed by Filter", 0)) * loops
        read += int(node.get("Rows Removed by Index Recheck", 0)) * loops
        if node.get("Node Type") == "Bitmap Index Scan":
            read = 0  # its rows are counted by the Bitmap Heap Scan above it
    for child in node.get("Plans", []):
        read += _rows_read(child)
    return read


def explain_sqlite(path: str, queries: dict[str, Sequence[Any]], report: Report) -> None:
    """SQLite's EXPLAIN QUERY PLAN has no row counts: the plans of the queries that read sample
    rows, and a FAIL for any that scans that table whole."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        for sql, params in queries.items():
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            plan = [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            touched = [p for p in plan if p.split()[1:2] == ["sample_index"]]
            if not touched:
                continue
            whole = [p for p in touched if p.startswith("SCAN")]
            report.check(f"no full scan: {_short(sql, 80)}", not whole, "; ".join(plan))
    finally:
        conn.close()


def _short(sql: str, width: int = 110) -> str:
    return sql if len(sql) <= width else sql[: width - 3] + "..."


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def status_answers(target: Target, report: Report, workdir: Path, writers: int) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from i2d_segments.store.local import LocalStore
    from i2d_status.app import StatusApp
    from i2d_status.settings import StatusSettings
    from i2d_status.source import StatusSource

    index = target.open()
    recorder = Recorder(index)
    settings = StatusSettings(refresh_seconds=3600.0)
    source = StatusSource(settings, index, LocalStore(Path(target.store)), None)
    print(f"status answers ({load_average()}):")
    with recorder.only() as refresh_queries:
        seconds, _ = timed(source.status)
    report.goal("StatusSource.status(), first refresh", seconds, GOAL_ANSWER)
    commit_one(target, writers, extra=1)  # a commit: the next refresh reads the new one
    seconds, _ = timed(source.status)
    report.goal("StatusSource.status() after a commit", seconds, GOAL_ANSWER)
    steady = [timed(source.status)[0] for _ in range(5)]
    report.goal("StatusSource.status(), steady (max of 5)", max(steady), GOAL_ANSWER)
    queries = dict(refresh_queries)

    async def endpoints() -> None:
        app = StatusApp(source)
        async with TestClient(TestServer(app.build())) as client:
            # The app refreshes once at startup; time each answer after that one.
            while app.latest is None:
                await asyncio.sleep(0.05)
            started = time.perf_counter()
            await app.refresh()
            report.goal(
                "app refresh (the dashboard's figures)", time.perf_counter() - started, GOAL_ANSWER
            )
            total = source.index.totals().segments
            paths = [
                "/",
                "/api/status",
                "/api/history",
                "/api/index",
                "/api/queue",
                "/api/segments",
                f"/api/segments?limit=50&offset={max(0, total - 50)}",
                "/api/schema",
                "/metrics",
                "/healthz",
                "/readyz",
            ]
            for path in paths:
                with recorder.only() as seen:
                    best = []
                    for _ in range(3):
                        started = time.perf_counter()
                        resp = await client.get(path)
                        await resp.read()
                        best.append(time.perf_counter() - started)
                        if resp.status != 200:
                            report.check(f"GET {path}", False, f"HTTP {resp.status}")
                queries.update(seen)
                report.goal(f"GET {path}", max(best), GOAL_ANSWER, "(max of 3)")

    asyncio.run(endpoints())
    print(
        "\nplans of the status queries (EXPLAIN ANALYZE; SQLite: EXPLAIN QUERY PLAN of those "
        "reading sample rows):"
    )
    if target.engine == "postgres":
        explain_postgres(target.where, queries)
    else:
        explain_sqlite(target.where, queries, report)
    index.close()


def commit_one(target: Target, writers: int, extra: int) -> tuple[float, int]:
    """One more segment of 10k rows on a partition of its own, 20 of them failures of the
    first segment fetched again with success (moved rows); its seconds and rows moved."""
    index = target.open()
    try:
        partition = writers + extra
        lease = index.acquire_partition(TOPIC, partition, "scale-extra")
        first = 10**12 + extra * SEGMENT_ROWS  # new rows, numbered past the loaded ones
        rows = [(n, outcome(n)) for n in range(first, first + SEGMENT_ROWS - RETRIED)]
        timeouts = [n for n in range(FRESH) if outcome(n)[1] == TIMEOUT]
        # Past the first RETRIED: those moved already, in the load.
        rows += [(n, SUCCESS) for n in timeouts[RETRIED * (extra + 1) : RETRIED * (extra + 2)]]
        commit = with_manifest(target, segment_commit(partition, 0, lease.epoch, rows, time.time()))
        seconds, moves = timed(lambda: index.commit_segment(commit))
        return seconds, sum(m.samples for m in moves)
    finally:
        index.close()


def lookups(target: Target, report: Report, loaded_rows: int) -> None:
    index = target.open()
    try:
        rng = random.Random(7)
        existing = [rng.randrange(loaded_rows) for _ in range(5000)]
        ids = [sample_of(n, "", 0.0, SUCCESS).sample_id for n in existing]
        ids += [hashlib.sha256(b"unknown %d" % n).hexdigest() for n in range(5000)]
        rng.shuffle(ids)
        index.known_samples(ids[:100])  # a connection and a plan, as a running appender has
        seconds, found = timed(lambda: index.known_samples(ids))
        report.goal("known_samples(10k ids, half known)", seconds, GOAL_KNOWN)
        report.check("known_samples found the known half", len(found) == len(set(existing)))

        picks = [rng.randrange(loaded_rows) for _ in range(300)]
        oks = [n for n in picks if outcome(n)[0] == "success"]
        calls: dict[str, Callable[[int], object]] = {
            "item_ref(item_id)": lambda n: index.item_ref(
                hashlib.sha256(b"item %d" % n).hexdigest()
            ),
            "sample_ref(sample_id)": lambda n: index.sample_ref(
                hashlib.sha256(url_of(n).encode()).hexdigest()
            ),
            "sample_refs_by_url(url)": lambda n: index.sample_refs_by_url(url_of(n)),
        }
        for name, call in calls.items():
            rows = oks if name.startswith("item") else picks
            times = []
            for n in rows:
                started = time.perf_counter()
                got = call(n)
                seconds = time.perf_counter() - started
                if not got:
                    report.check(f"{name} of row {n}", False, "not found")
                    break
                times.append(seconds)
            times.sort()
            p50 = statistics.median(times)
            p99 = times[int(len(times) * 0.99) - 1]
            report.goal(
                f"{name}, p99 of {len(times)}", p99, GOAL_LOOKUP, f"p50 {p50 * 1000:.2f} ms"
            )
    finally:
        index.close()


# Every sample row by outcome (carrier rows, which only keep an item's location, left out).
RECOUNT_SQL = (
    "SELECT o.status, o.error, COUNT(*) FROM sample_index si "
    "JOIN outcomes o ON o.outcome = si.outcome "
    f"WHERE o.status <> '{CARRIER_STATUS}' GROUP BY 1, 2"
)


def recount_matches(target: Target, report: Report) -> None:
    """The totals against a full recount of the rows (the one scan of this report)."""
    index = target.open()
    try:
        if target.engine == "postgres":
            import psycopg

            with psycopg.connect(target.where) as conn:
                counted = conn.execute(RECOUNT_SQL).fetchall()
                segs = conn.execute("SELECT COUNT(*), SUM(item_count) FROM segments").fetchone()
        else:
            import sqlite3

            conn2 = sqlite3.connect(target.where)
            try:
                counted = conn2.execute(RECOUNT_SQL).fetchall()
                segs = conn2.execute("SELECT COUNT(*), SUM(item_count) FROM segments").fetchone()
            finally:
                conn2.close()
        assert segs is not None
        status: dict[str, int] = {}
        errors: dict[str, int] = {}
        for st, error, n in counted:
            status[st] = status.get(st, 0) + int(n)
            if st != "success" and error is not None:
                errors[error] = errors.get(error, 0) + int(n)
        t = index.totals()
        same = (
            index.status_counts() == status
            and index.error_counts() == errors
            and t.samples == sum(status.values())
            and (t.segments, t.items) == (int(segs[0]), int(segs[1]))
        )
        report.check(
            "totals equal a full recount of the rows",
            same,
            f"{t.samples:,} samples, {t.segments} segments, {status.get('success', 0):,} "
            f"successes, {len(errors)} failure reasons",
        )
    finally:
        index.close()


# ---------------------------------------------------------------------------- PostgreSQL


@contextlib.contextmanager
def postgres_server(keep: bool, settings: Sequence[str] = ()) -> Iterator[str]:
    """A throwaway cluster started as the tests start theirs (plus `settings`, NAME=VALUE);
    yields the admin DSN."""
    with postgres_cluster(keep, settings) as server:
        yield server.dsn()


@contextlib.contextmanager
def postgres_cluster(keep: bool, settings: Sequence[str] = ()) -> Iterator[PostgresServer]:
    """`postgres_server`'s cluster itself (`make bench` samples its processes' CPU)."""
    from tests.servers.postgres import PostgresServer, _init_cluster, find_pg_bin, postgres_argv
    from tests.servers.proc import ServerProcess, free_port

    bin_dir = find_pg_bin()
    root = Path(tempfile.mkdtemp(prefix="i2d-scale-pg-"))
    server: PostgresServer | None = None
    try:
        _init_cluster(bin_dir, root)
        port = free_port()
        argv = postgres_argv(bin_dir, root, port, settings)
        process = ServerProcess(argv, log_path=root / "postgres.log", cwd=root)
        server = PostgresServer("127.0.0.1", port, "postgres", root, bin_dir, process)
        server.start()
        extra = f"; and {', '.join(settings)}" if settings else ", default shared_buffers"
        print(
            f"PostgreSQL {bin_dir.parent.name} in {root} (as the tests start it: fsync=off, "
            f"synchronous_commit=off, full_page_writes=off{extra})"
        )
        yield server
    finally:
        if server is not None:
            server.stop()
            server.kill()
        if keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def fresh_database(admin_dsn: str) -> str:
    import psycopg

    name = f"scale_{int(time.time())}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_dsn.rsplit("/", 1)[0] + f"/{name}"


# ---------------------------------------------------------------------------- main


def run(target: Target, samples: int, writers: int, workdir: Path) -> int:
    index = target.open()
    index.migrate()
    index.close()
    times = load(target, samples, writers)
    report = Report()
    loaded = segments_per_writer(samples, writers) * writers * FRESH
    if target.engine == "postgres":
        import psycopg

        with psycopg.connect(target.where, autocommit=True) as conn:
            conn.execute("ANALYZE")  # what autovacuum does by itself over a long load
        size = sizes_postgres(target.where, loaded)
    else:
        size = sizes_sqlite(target.where, loaded)
    report.check(
        f"the index is at most {GOAL_BYTES_PER_SAMPLE} bytes per sample, indexes included",
        size / loaded <= GOAL_BYTES_PER_SAMPLE,
        f"{size / loaded:,.1f} bytes per sample",
    )
    print()
    print(f"writes at {loaded:,} samples ({load_average()}):")
    tail = times[-max(1, len(times) // 20) :]
    report.goal(
        f"segment commit (10k), last 5% of load, {writers} writer{'s' if writers > 1 else ''}",
        statistics.median(tail),
        GOAL_COMMIT,
        f"median of {len(tail)}, max {max(tail) * 1000:.0f} ms",
    )
    seconds, moved = commit_one(target, writers, extra=0)
    report.goal("segment commit (10k) after the load", seconds, GOAL_COMMIT, f"{moved} rows moved")
    print("\nlookups:")
    lookups(target, report, loaded)
    print()
    status_answers(target, report, workdir, writers)
    print()
    recount_matches(target, report)
    print()
    if report.failed:
        print(f"FAIL: {len(report.failed)} goal(s) missed: {', '.join(report.failed)}")
        return 1
    print("PASS: every goal met")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=5_000_000)
    p.add_argument("--engine", choices=("postgres", "sqlite"), default="postgres")
    p.add_argument("--writers", type=int, default=2, help="committing processes (partitions)")
    p.add_argument("--dsn", help="an existing PostgreSQL server (a new database is created)")
    p.add_argument("--keep", action="store_true", help="keep the data folder")
    p.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="one more setting of the started server (e.g. shared_buffers=2GB)",
    )
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="i2d-scale-"))
    started = time.perf_counter()
    shown = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    print(f"python -m bench.scale {shown}".rstrip())
    print(f"{load_average()}\n")
    try:
        if args.engine == "sqlite":
            target = Target("sqlite", str(workdir / "index.sqlite"), str(workdir / "store"))
            code = run(target, args.samples, 1, workdir)  # SQLite: one writer at a time anyway
        elif args.dsn:
            code = run(
                Target("postgres", fresh_database(args.dsn), str(workdir / "store")),
                args.samples,
                args.writers,
                workdir,
            )
        else:
            with postgres_server(args.keep, args.pg_setting) as admin:
                target = Target("postgres", fresh_database(admin), str(workdir / "store"))
                code = run(target, args.samples, args.writers, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n(the whole run took {time.perf_counter() - started:.0f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
