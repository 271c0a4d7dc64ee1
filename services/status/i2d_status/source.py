"""Where the figures come from: the index (always), the store (open uploads) and the bus (lag).

Three modes: an output folder a download wrote (`embedded`: its index and segments, no bus), an
output folder with its durable bus (`service`: `img2dataset service` runs there, `enqueue` feeds
it; the lag and the rows enqueued come from that bus, as with Kafka), or the distributed
deployment (Kafka, the store and the index its settings name). The folder is resolved by
`OutputFolder.find`: its recorded index (`--index_name`), or the dataset a download in one of
img2dataset's layouts keeps in `_segments/`.

Rows sit in an open segment until it closes and the index learns of them only at its commit,
so the figures are the committed ones plus what the appenders publish about their open
segments about every second (`partition_progress`, one row per partition), read with them in
one snapshot of the index. A partition's live row counts only while it is fresh and of the
partition's current epoch, and its open rows only while its open segment starts at or past
the committed position (else it was committed since, and the committed figures hold it).
No figure counts rows: the counts by status and by error and the dataset's sizes are totals
the index keeps in each commit's transaction (a handful of rows, whatever the number of
samples), the segments are read newest first by index, a page at a time. The one read of sample
rows is the list of latest committed rows: the `recent_items` newest rows of each of a few newest
segments (by the segment index, with a LIMIT: at most one segment's rows are read for each, so
its cost depends on the segment size, never on the dataset's), read again only when a segment
was committed since.

Every method is blocking (the adapters are); the web app calls them from one worker thread.
A part that cannot be read (Kafka down) becomes an entry of `errors` with the rest still
answered: a dashboard that goes blank when one dependency hiccups helps nobody.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from i2d_segments import __version__
from i2d_segments.bus import Bus, BusError
from i2d_segments.index import (
    DownloadRun,
    Index,
    IndexAccessError,
    IndexTotals,
    PartitionProgress,
    PartitionRow,
    SampleRow,
    SegmentRow,
)
from i2d_segments.naming import parse_segment_name, sidecar_name
from i2d_segments.reader import SegmentRows
from i2d_segments.segment.format import SegmentFormatError
from i2d_segments.store import SegmentStore, StoreError
from i2d_status.schema import (
    Failure,
    IndexResponse,
    IndexTotalsModel,
    Lag,
    Mode,
    PartitionState,
    Progress,
    QueueResponse,
    Rates,
    RecentItem,
    Run,
    SegmentCounts,
    SegmentModel,
    SegmentsResponse,
    StatusResponse,
    TopicPartitionState,
)
from i2d_status.settings import StatusSettings

log = logging.getLogger(__name__)

TOP_FAILURES = 20
MIN_OBSERVED_SPAN = 1.0  # seconds between two observations before a measured rate counts
RECENT_SEGMENTS_SCANNED = 5


@dataclass(frozen=True, slots=True)
class Observation:
    at: float
    samples: int
    successes: int


class RateTracker:
    """Counts seen at each refresh; rates are the change over the window."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._seen: deque[Observation] = deque()

    def observe(self, obs: Observation) -> None:
        self._seen.append(obs)
        while self._seen and self._seen[0].at < obs.at - 2 * self.window:
            self._seen.popleft()

    def rates(self, now: Observation) -> tuple[float, float] | None:
        """(images/s, samples/s) over the window, or None while too little was observed."""
        oldest = next((o for o in self._seen if o.at >= now.at - self.window), None)
        if oldest is None or now.at - oldest.at < MIN_OBSERVED_SPAN:
            return None
        span = now.at - oldest.at
        return (
            max(0, now.successes - oldest.successes) / span,
            max(0, now.samples - oldest.samples) / span,
        )


@dataclass(frozen=True, slots=True)
class Committed:
    """What the committed rows say, kept until a segment is committed (`signature`)."""

    signature: tuple[Any, ...]
    counts: dict[str, int]
    errors: dict[str, int]
    recent: list[SampleRow]  # newest first


@dataclass(slots=True)
class Live:
    """The appenders' published figures that count now."""

    open_samples: int = 0
    open_successes: int = 0
    open_errors: dict[str, int] = field(default_factory=dict)
    open_partitions: set[int] = field(default_factory=set)
    positions: dict[int, int] = field(default_factory=dict)  # APPEND partition -> read to
    fresh: list[PartitionProgress] = field(default_factory=list)
    open_segments: set[str] = field(default_factory=set)


def _signature(totals: IndexTotals) -> tuple[Any, ...]:
    # Every commit adds a segment, and rows change only through commits.
    return (totals.segments, totals.samples, totals.bytes, totals.last_created_at)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class StatusSource:
    def __init__(
        self,
        settings: StatusSettings,
        index: Index,
        store: SegmentStore,
        bus: Bus | None,
        *,
        mode: Mode | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.index = index
        self.store = store
        # The latest committed rows: refs from the index, the rows from the manifests.
        self.rows = SegmentRows(store, index)
        self.bus = bus
        self.mode: Mode = mode or ("distributed" if bus is not None else "embedded")
        self.clock = clock
        self.rates = RateTracker(settings.rate_window_seconds)
        self._committed_cache: Committed | None = None
        # Readiness: did the last read of each dependency work?
        self.index_ok = False
        self.bus_ok = bus is None

    @classmethod
    def open(cls, settings: StatusSettings) -> StatusSource:
        """Open the adapters read-only: no migration, no topic creation. An output folder that
        holds no dataset raises FileNotFoundError."""
        from i2d_segments.connect import open_index, open_store

        if settings.output_folder is not None:
            return cls._open_folder(settings, settings.output_folder)
        from i2d_segments.bus.kafka import KafkaBus

        bus = KafkaBus(
            settings.kafka_bootstrap_servers,
            client_id=f"img2dataset-status-{settings.owner}",
            config=settings.kafka_config,
            timeout=settings.kafka_timeout_seconds,
        )
        store = open_store(
            settings.store_url,
            s3_endpoint_url=settings.s3_endpoint_url,
            s3_region=settings.s3_region,
        )
        return cls(settings, open_index(settings.index_url), store, bus)

    @classmethod
    def _open_folder(cls, settings: StatusSettings, path: str) -> StatusSource:
        from i2d_segments.folder import FolderError, OutputFolder
        from i2d_segments.index.sqlite import SqliteIndex

        try:
            folder = OutputFolder.find(path)
        except FolderError as e:
            raise FileNotFoundError(f"not an output folder: {e}") from e
        # The index as it is (no migration, no descriptor written): status only reads.
        index = SqliteIndex(folder.index_path)
        store: SegmentStore | None = None
        try:
            store = folder.open_store()
            bus = folder.open_bus() if folder.has_bus() else None
        except BaseException:
            index.close()
            if store is not None:
                store.close()
            raise
        return cls(settings, index, store, bus, mode="embedded" if bus is None else "service")

    def close(self) -> None:
        self.index.close()
        self.store.close()
        if self.bus is not None:
            self.bus.close()

    # -- parts ----------------------------------------------------------------------------------

    def _lag(self, errors: list[str]) -> list[Lag]:
        if self.bus is None:
            return []
        out: list[Lag] = []
        ok = True
        for group, topic in self.settings.consumer_groups():
            try:
                if self.mode == "service" and not self._has_topic(topic):
                    continue
                rows = self.bus.lag(group, topic)
            except BusError as e:
                errors.append(f"lag of {group} on {topic}: {e}")
                ok = False
                continue
            out += [
                Lag(
                    group=group,
                    topic=topic,
                    partition=p.partition,
                    committed=p.committed,
                    end=p.high_watermark,
                    lag=max(0, p.lag),
                )
                for p in rows
            ]
        self.bus_ok = ok
        return out

    def _has_topic(self, topic: str) -> bool:
        """A folder's bus has the topics its users created so far (`enqueue` creates `urls`
        only, `img2dataset service` the others): one not there yet has no lag to report."""
        assert self.bus is not None
        try:
            self.bus.partition_count(topic)
        except BusError:
            return False
        return True

    def _uploading_partitions(self, errors: list[str]) -> set[int]:
        partitions: set[int] = set()
        try:
            for upload in self.store.list_incomplete_uploads():
                try:
                    partitions.add(parse_segment_name(upload.name)[0])
                except ValueError:
                    continue  # not a segment (an export, a foreign upload)
        except (StoreError, OSError) as e:
            errors.append(f"uploads in progress: {e}")
        return partitions

    def _pending(self, lag: list[Lag]) -> dict[int, tuple[int, int]]:
        """APPEND partition -> (end offset, records past the index's committed position)."""
        ends = {
            x.partition: x.end
            for x in lag
            if x.topic == self.settings.append_topic and x.group == self.settings.appender_group
        }
        committed = {
            p.partition: p.next_offset
            for p in self.index.partitions()
            if p.topic == self.settings.append_topic
        }
        return {p: (end, max(0, end - committed.get(p, 0))) for p, end in ends.items()}

    def _done_of_enqueued(self, fetched: int | None, lag: list[Lag], live: Live) -> int | None:
        """Over a folder's bus, the enqueued rows with an outcome: those the fetchers handed on,
        less the APPEND records no appender took yet. Not the APPEND positions themselves, as
        over Kafka: a folder's APPEND offsets go on from its earlier downloads' rows, which
        were never enqueued."""
        if fetched is None:
            return None
        waiting = 0
        for x in lag:
            if x.topic == self.settings.append_topic and x.group == self.settings.appender_group:
                taken = live.positions.get(x.partition, x.committed)
                waiting += 0 if taken is None else max(0, x.end - taken)
        return max(0, fetched - waiting)

    def _committed(self, totals: IndexTotals) -> Committed:
        signature = _signature(totals)
        cached = self._committed_cache
        if cached is not None and cached.signature == signature:
            return cached
        want = self.settings.recent_items
        recent: list[SampleRow] = []
        if want:
            for segment in self.index.recent_segments(RECENT_SEGMENTS_SCANNED):
                try:
                    recent += self.rows.latest_samples_of_segment(segment.segment_id, want)
                except (SegmentFormatError, StoreError, OSError, IndexAccessError) as e:
                    # A segment whose manifest does not read (or an index older than 0007, read
                    # without migrating it) shows no rows; the figures still do.
                    log.warning("status: rows of %s unreadable: %s", segment.segment_id, e)
            recent.sort(key=lambda r: (r.updated_at, r.sample_id), reverse=True)
        self._committed_cache = Committed(
            signature=signature,
            counts=self.index.status_counts(),
            errors=self.index.error_counts(),
            recent=recent[:want],
        )
        return self._committed_cache

    def _live(
        self, partitions: list[PartitionRow], progress: list[PartitionProgress], now: float
    ) -> Live:
        topic = self.settings.append_topic
        rows = {p.partition: p for p in partitions if p.topic == topic}
        live = Live(positions={n: p.next_offset for n, p in rows.items()})
        for p in progress:
            row = rows.get(p.partition)
            if p.topic != topic or row is None or row.epoch != p.epoch:
                continue  # an earlier owner's, or of a partition the index does not know
            if now - p.updated_at > self.settings.progress_stale_seconds:
                continue  # its appender is gone: what its open segment held is lost
            live.fresh.append(p)
            live.positions[p.partition] = max(p.position, row.next_offset)
            if p.open_first_offset is not None and p.open_first_offset >= row.next_offset:
                live.open_samples += p.open_samples
                live.open_successes += p.open_successes
                for reason, n in p.open_errors.items():
                    live.open_errors[reason] = live.open_errors.get(reason, 0) + n
                live.open_partitions.add(p.partition)
                if p.open_segment_id:
                    live.open_segments.add(p.open_segment_id)
        return live

    def _recent(self, live: Live, committed: Committed) -> list[RecentItem]:
        want = self.settings.recent_items
        out: dict[str, RecentItem] = {}
        for p in live.fresh:
            for r in p.recent:
                item = self._live_item(r, live)
                if item is not None and item.sample_id not in out:
                    out[item.sample_id] = item
        for s in committed.recent:
            if s.sample_id in out:
                continue
            width, height = s.attrs.get("width"), s.attrs.get("height")
            out[s.sample_id] = RecentItem(
                item_id=s.item_id,
                sample_id=s.sample_id,
                url=s.url,
                caption=s.caption,
                status=s.status,
                error=s.error,
                width=_int_or_none(width),
                height=_int_or_none(height),
                segment_id=s.segment_id,
                committed=True,
                at=s.updated_at,
            )
        return sorted(out.values(), key=lambda r: (r.at, r.sample_id), reverse=True)[:want]

    @staticmethod
    def _live_item(r: dict[str, Any], live: Live) -> RecentItem | None:
        try:
            segment_id = str(r["segment_id"])
            return RecentItem(
                item_id=r.get("item_id"),
                sample_id=str(r["sample_id"]),
                url=str(r.get("url") or ""),
                caption=r.get("caption"),
                status=str(r["status"]),
                error=r.get("error"),
                width=_int_or_none(r.get("width")),
                height=_int_or_none(r.get("height")),
                segment_id=segment_id,
                committed=segment_id not in live.open_segments,
                at=float(r["at"]),
            )
        except (KeyError, TypeError, ValueError):
            return None  # not a row this version publishes

    def _rates(self, live: Live, obs: Observation) -> Rates:
        measured = self.rates.rates(obs)
        self.rates.observe(obs)
        window = self.settings.rate_window_seconds
        if live.fresh:
            images = sum(p.images_per_second for p in live.fresh)
            samples = sum(p.samples_per_second for p in live.fresh)
            window = max(p.window_seconds for p in live.fresh)
            source = "appenders"
        elif measured is not None:
            images, samples = measured
            source = "observed"
        else:
            images = samples = 0.0
            source = "none"
        return Rates(
            window_seconds=window,
            images_per_second=round(images, 3),
            samples_per_second=round(samples, 3),
            failures_per_second=round(max(0.0, samples - images), 3),
            source=source,
        )

    def _progress_of_run(
        self, run: DownloadRun | None, live: Live
    ) -> tuple[int | None, int | None]:
        """(total, done) of the latest download run."""
        if run is None or run.append_topic != self.settings.append_topic:
            return None, None
        position = live.positions.get(run.append_partition, run.start_offset)
        done = run.rows_skipped + max(0, position - run.start_offset)
        total = run.rows_total
        if total is None and run.finished_at is not None:
            total = run.rows_read
        return total, done

    # -- answers --------------------------------------------------------------------------------

    def status(self) -> StatusResponse:
        """The dashboard's figures; each call is also an observation for the rates."""
        errors: list[str] = []
        now = self.clock()
        try:
            # One state of the index: a segment committed between two reads would count its
            # rows twice (committed, and still in the open segment) or not at all.
            with self.index.snapshot():
                progress = self.index.progress()
                partitions = self.index.partitions()
                totals = self.index.totals()
                committed = self._committed(totals)
                run = self.index.latest_run() if self.bus is None else None
            self.index_ok = True
        except IndexAccessError:
            self.index_ok = False
            raise
        live = self._live(partitions, progress, now)
        lag = self._lag(errors)
        counts = committed.counts
        committed_rows = sum(counts.values())
        samples = committed_rows + live.open_samples
        successes = counts.get("success", 0) + live.open_successes
        rates = self._rates(live, Observation(now, samples, successes))
        if live.fresh:
            open_partitions = set(live.open_partitions)
        else:  # nobody publishes live figures: what the store and the bus say
            open_partitions = self._uploading_partitions(errors)
            open_partitions |= {p for p, (_, pending) in self._pending(lag).items() if pending}
        enqueued = fetched = None
        total: int | None
        done: int | None
        if self.bus is not None:
            urls = [x for x in lag if x.group == self.settings.fetcher_group]
            if urls:
                enqueued = sum(x.end for x in urls)
                fetched = sum(x.committed or 0 for x in urls)
            if self.mode == "service":
                total, done = enqueued, self._done_of_enqueued(fetched, lag, live)
            else:
                total, done = enqueued, sum(live.positions.values())
        else:
            total, done = self._progress_of_run(run, live)
        errors_by_reason = dict(committed.errors)
        for reason, n in live.open_errors.items():
            errors_by_reason[reason] = errors_by_reason.get(reason, 0) + n
        failures = sorted(errors_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
        return StatusResponse(
            version=__version__,
            mode=self.mode,
            generated_at=now,
            refresh_seconds=self.settings.refresh_seconds,
            progress=Progress(
                samples=samples,
                committed=committed_rows,
                in_open_segments=live.open_samples,
                successes=successes,
                failures=samples - successes,
                success_rate=successes / samples if samples else None,
                by_status=dict(sorted(counts.items())),
                enqueued=enqueued,
                fetched=fetched,
                total=total,
                done=done if total is not None else None,
                fraction=min(1.0, done / total) if total and done is not None else None,
                run=None
                if run is None
                else Run(
                    url_list=run.url_list,
                    started_at=run.started_at,
                    finished_at=run.finished_at,
                    rows_total=run.rows_total,
                    rows_read=run.rows_read,
                    rows_skipped=run.rows_skipped,
                ),
            ),
            rates=rates,
            failures=[Failure(reason=r, count=n) for r, n in failures[:TOP_FAILURES]],
            segments=SegmentCounts(
                closed=totals.segments,
                open=len(open_partitions),
                items=totals.items,
                bytes=totals.bytes,
                last_closed_at=totals.last_created_at,
            ),
            lag=lag,
            recent=self._recent(live, committed),
            errors=errors,
        )

    def index_view(self) -> IndexResponse:
        with self.index.snapshot():  # figures of one state: they add up
            totals = self.index.totals()
            by_error = self.index.error_counts()
            by_status = self.index.status_counts()
            partitions = self.index.partitions()
        errors = sorted(by_error.items(), key=lambda kv: (-kv[1], kv[0]))
        return IndexResponse(
            mode=self.mode,
            generated_at=self.clock(),
            totals=IndexTotalsModel(
                segments=totals.segments,
                items=totals.items,
                samples=totals.samples,
                bytes=totals.bytes,
                first_created_at=totals.first_created_at,
                last_created_at=totals.last_created_at,
            ),
            status_counts=dict(sorted(by_status.items())),
            error_counts=[Failure(reason=r, count=n) for r, n in errors],
            partitions=[
                PartitionState(
                    topic=p.topic,
                    partition=p.partition,
                    epoch=p.epoch,
                    next_offset=p.next_offset,
                    owner=p.owner,
                    updated_at=p.updated_at,
                )
                for p in partitions
            ],
            errors=[],
        )

    def queue(self) -> QueueResponse:
        errors: list[str] = []
        lag = self._lag(errors)
        index_rows = {(p.topic, p.partition): p for p in self.index.partitions()}
        ends: dict[tuple[str, int], int] = {}
        for x in lag:
            ends[(x.topic, x.partition)] = max(ends.get((x.topic, x.partition), 0), x.end)
        keys = sorted(set(ends) | set(index_rows))
        partitions = []
        for topic, partition in keys:
            row = index_rows.get((topic, partition))
            end = ends.get((topic, partition))
            is_append = topic == self.settings.append_topic
            next_offset = row.next_offset if row is not None and is_append else None
            pending = None
            if is_append and end is not None:
                pending = max(0, end - (next_offset or 0))
            partitions.append(
                TopicPartitionState(
                    topic=topic,
                    partition=partition,
                    end=end,
                    index_next_offset=next_offset,
                    pending=pending,
                    owner=None if row is None else row.owner,
                )
            )
        total: dict[str, int] = {}
        for x in lag:
            total[x.group] = total.get(x.group, 0) + x.lag
        return QueueResponse(
            mode=self.mode,
            generated_at=self.clock(),
            partitions=partitions,
            lag=lag,
            total_lag=total,
            errors=errors,
        )

    def segments_page(self, limit: int, offset: int) -> SegmentsResponse:
        limit = max(0, min(limit, 1000))
        offset = max(0, offset)
        with self.index.snapshot():
            rows = self.index.recent_segments(limit, offset)
            total = self.index.totals().segments
        return SegmentsResponse(
            total=total,
            limit=limit,
            offset=offset,
            segments=[self._segment_model(s) for s in rows],
        )

    def _segment_model(self, s: SegmentRow) -> SegmentModel:
        return SegmentModel(
            segment_id=s.segment_id,
            topic=s.topic,
            partition=s.partition,
            first_offset=s.first_offset,
            last_offset=s.last_offset,
            epoch=s.epoch,
            uri=s.uri,
            item_count=s.item_count,
            sample_count=s.sample_count,
            bytes=s.bytes,
            sha256=s.sha256,
            created_at=s.created_at,
            metadata_uri=self.store.uri(sidecar_name(s.segment_id, ".parquet")),
            stats_uri=self.store.uri(sidecar_name(s.segment_id, "_stats.json")),
        )
