"""Where the figures come from: the index (always), the store (open uploads) and the bus (lag).

Every method is blocking (the adapters are); the web app calls them from one worker thread.
A part that cannot be read (Kafka down) becomes an entry of `errors` with the rest still
answered: a dashboard that goes blank when one dependency hiccups helps nobody.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from i2d_segments import __version__
from i2d_segments.bus import Bus, BusError
from i2d_segments.index import Index, IndexError_, SegmentRow
from i2d_segments.naming import parse_segment_name, sidecar_name
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


class StatusSource:
    def __init__(
        self,
        settings: StatusSettings,
        index: Index,
        store: SegmentStore,
        bus: Bus | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.index = index
        self.store = store
        self.bus = bus
        self.mode: Mode = "distributed" if bus is not None else "embedded"
        self.clock = clock
        self.rates = RateTracker(settings.rate_window_seconds)
        # Readiness: did the last read of each dependency work?
        self.index_ok = False
        self.bus_ok = bus is None

    @classmethod
    def open(cls, settings: StatusSettings) -> StatusSource:
        """Open the adapters read-only: no migration, no topic creation."""
        from i2d_segments.connect import open_index, open_store

        if settings.output_folder is not None:
            folder = Path(settings.output_folder)
            if not (folder / "index.sqlite").is_file():
                raise FileNotFoundError(f"{folder} has no index.sqlite: not an output folder")
            return cls(
                settings, open_index(str(folder / "index.sqlite")), open_store(str(folder)), None
            )
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

    def _recent(self) -> list[RecentItem]:
        want = self.settings.recent_items
        out: list[RecentItem] = []
        if want == 0:
            return out
        for segment in self.index.recent_segments(RECENT_SEGMENTS_SCANNED):
            for s in self.index.samples_for_segment(segment.segment_id):
                width, height = s.attrs.get("width"), s.attrs.get("height")
                out.append(
                    RecentItem(
                        item_id=s.item_id,
                        sample_id=s.sample_id,
                        url=s.url,
                        caption=s.caption,
                        status=s.status,
                        error=s.error,
                        width=width if isinstance(width, int) else None,
                        height=height if isinstance(height, int) else None,
                        segment_id=s.segment_id,
                    )
                )
                if len(out) >= want:
                    return out
        return out

    def _segment_rates(self, now: float) -> tuple[float, float]:
        window = self.settings.rate_window_seconds
        items = samples = 0
        offset = 0
        while True:
            page = self.index.recent_segments(100, offset)
            fresh = [s for s in page if s.created_at >= now - window]
            items += sum(s.item_count for s in fresh)
            samples += sum(s.sample_count for s in fresh)
            if len(fresh) < len(page) or len(page) < 100:
                return items / window, samples / window
            offset += len(page)

    # -- answers --------------------------------------------------------------------------------

    def status(self) -> StatusResponse:
        """The dashboard's figures; each call is also an observation for the rates."""
        errors: list[str] = []
        now = self.clock()
        try:
            counts = self.index.status_counts()
            failures = sorted(self.index.error_counts().items(), key=lambda kv: (-kv[1], kv[0]))
            totals = self.index.totals()
            recent = self._recent()
            self.index_ok = True
        except IndexError_:
            self.index_ok = False
            raise
        lag = self._lag(errors)
        samples = sum(counts.values())
        successes = counts.get("success", 0)
        obs = Observation(now, samples, successes)
        measured = self.rates.rates(obs)
        self.rates.observe(obs)
        if measured is not None:
            images_ps, samples_ps = measured
            source = "observed"
        else:
            images_ps, samples_ps = self._segment_rates(now)
            source = "segments"
        open_partitions = self._uploading_partitions(errors)
        open_partitions |= {p for p, (_, pending) in self._pending(lag).items() if pending > 0}
        enqueued = fetched = None
        if self.bus is not None:
            urls = [x for x in lag if x.group == self.settings.fetcher_group]
            if urls:
                enqueued = sum(x.end for x in urls)
                fetched = sum(x.committed or 0 for x in urls)
        return StatusResponse(
            version=__version__,
            mode=self.mode,
            generated_at=now,
            refresh_seconds=self.settings.refresh_seconds,
            progress=Progress(
                samples=samples,
                successes=successes,
                failures=samples - successes,
                success_rate=successes / samples if samples else None,
                by_status=dict(sorted(counts.items())),
                enqueued=enqueued,
                fetched=fetched,
                fraction=fetched / enqueued if enqueued and fetched is not None else None,
            ),
            rates=Rates(
                window_seconds=self.settings.rate_window_seconds,
                images_per_second=round(images_ps, 3),
                samples_per_second=round(samples_ps, 3),
                source=source,
            ),
            failures=[Failure(reason=r, count=n) for r, n in failures[:TOP_FAILURES]],
            segments=SegmentCounts(
                closed=totals.segments,
                open=len(open_partitions),
                items=totals.items,
                bytes=totals.bytes,
                last_closed_at=totals.last_created_at,
            ),
            lag=lag,
            recent=recent,
            errors=errors,
        )

    def index_view(self) -> IndexResponse:
        totals = self.index.totals()
        errors = sorted(self.index.error_counts().items(), key=lambda kv: (-kv[1], kv[0]))
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
            status_counts=dict(sorted(self.index.status_counts().items())),
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
                for p in self.index.partitions()
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
        rows = self.index.recent_segments(limit, offset)
        return SegmentsResponse(
            total=self.index.totals().segments,
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
