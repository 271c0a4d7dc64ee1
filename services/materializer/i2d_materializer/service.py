"""The materializer: SEGMENT_CLOSED -> metadata parquet and stats next to each segment, and the
dataset manifests (`manifests/`) kept current.

It is a `SegmentConsumer` run by the same `ConsumerRunner` users' consumers run on. Idempotent:
every output is a pure function of the index rows, written with overwrite, so an event handled
twice (at-least-once delivery) yields the same files.

A row delivered again with a different outcome moves to the newer segment (latest wins), and
the index records which older segments lost rows to it (`Index.moves_into`). Handling a
segment therefore first writes those older segments' parquet and stats again, from the index,
so that each row is in exactly one segment's metadata; its own stats come last, the mark that
it is done (`is_done`), so a crash anywhere in between redoes all of it. A segment's rows only
ever leave it through a recorded move: if one was recorded while its files were being written
(another materializer handling the newer segment, in the distributed mode), they are written
again.

Offsets are committed after the outputs are written. Manifests cover the whole dataset, so
they are rewritten at most every `manifest_interval_seconds` while events flow, and always
when the stream goes idle, after a catch-up and at shutdown.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from i2d_materializer import metrics
from i2d_materializer.dataset_manifests import write_manifests
from i2d_materializer.metadata import metadata_table, parquet_bytes, stats
from i2d_materializer.settings import MaterializerSettings
from i2d_segments import stagecpu
from i2d_segments.bus import Bus
from i2d_segments.consumer import ConsumerContext, ConsumerRunner, SegmentConsumer
from i2d_segments.index import Index, SegmentRow
from i2d_segments.naming import sidecar_name
from i2d_segments.runtime import Health
from i2d_segments.store import SegmentStore

log = logging.getLogger(__name__)

METADATA_SUFFIX = ".parquet"
STATS_SUFFIX = "_stats.json"


class Materializer(SegmentConsumer):
    # Each segment is read once (its own, or an older one that lost rows to it): no parsed
    # manifest is worth keeping past its segment, and each kept holds ~7 MB per 10,000 rows
    # in the process of `download` and `service`.
    manifest_cache_rows = 0

    def __init__(self, group_id: str = "materializer", manifest_interval: float = 10.0) -> None:
        self.group_id = group_id
        self.manifest_interval = manifest_interval
        # Dirty from the start: a restart rewrites the manifests once even if nothing is new
        # (the previous run may have died between a segment's sidecars and the manifests).
        self._manifests_dirty = True
        self._manifests_at = float("-inf")

    def handle(self, segment: SegmentRow, ctx: ConsumerContext) -> None:
        cpu_started = time.thread_time()
        try:
            self._handle(segment, ctx)
        finally:
            stagecpu.add("materialize", time.thread_time() - cpu_started)

    def _handle(self, segment: SegmentRow, ctx: ConsumerContext) -> None:
        started = time.monotonic()
        for move in ctx.index.moves_into(segment.segment_id):
            older = ctx.index.segment(move.from_segment_id)
            if older is not None:
                self.write_sidecars(older, ctx)
        self.write_sidecars(segment, ctx)
        self._manifests_dirty = True
        metrics.SEGMENTS.inc()
        metrics.SECONDS.observe(time.monotonic() - started)
        metrics.LAG_SECONDS.set(max(0.0, time.time() - segment.created_at))

    def write_sidecars(self, segment: SegmentRow, ctx: ConsumerContext) -> None:
        """The segment's metadata parquet, then its stats, from the rows it holds now."""
        sid = segment.segment_id
        while True:
            moves = ctx.index.moves_out_of(sid)
            samples = ctx.rows.samples_for_segment(sid)
            items = ctx.rows.items_for_segment(sid)
            table = metadata_table(samples)
            ctx.store.put(sidecar_name(sid, METADATA_SUFFIX), parquet_bytes(table))
            body = json.dumps(stats(segment, samples, items), indent=2, sort_keys=True).encode()
            ctx.store.put(sidecar_name(sid, STATS_SUFFIX), body)
            if ctx.index.moves_out_of(sid) == moves:
                return
            log.info("%s lost rows to a newer segment while written: writing it again", sid)

    def is_done(self, segment: SegmentRow, ctx: ConsumerContext) -> bool:
        return ctx.store.exists(sidecar_name(segment.segment_id, STATS_SUFFIX))

    def flush(self, ctx: ConsumerContext, *, final: bool) -> None:
        if not self._manifests_dirty:
            return
        if not final and time.monotonic() - self._manifests_at < self.manifest_interval:
            return
        started = time.monotonic()
        cpu_started = time.thread_time()
        write_manifests(ctx.store, ctx.index)
        stagecpu.add("materialize", time.thread_time() - cpu_started)
        self._manifests_dirty = False
        self._manifests_at = time.monotonic()
        metrics.MANIFEST_SECONDS.observe(self._manifests_at - started)


class MaterializerService:
    def __init__(
        self,
        bus: Bus | None,
        store: SegmentStore,
        index: Index,
        settings: MaterializerSettings,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.index = index
        self.health = health or Health()
        self.materializer = Materializer(settings.group_id, settings.manifest_interval_seconds)
        self.runner = ConsumerRunner(
            self.materializer,
            bus,
            store,
            index,
            topic=settings.closed_topic,
            health=self.health,
            poll_timeout=settings.poll_timeout_seconds,
        )

    def run(self, stop: threading.Event) -> None:
        self.runner.run(stop, catch_up=self.settings.reconcile_on_start)

    def step(self) -> int:
        return self.runner.step()

    def materialize(self, segment_id: str) -> bool:
        """Write the segment's metadata parquet and stats (manifests follow at the next flush);
        False if the index has no such segment."""
        return self.runner.handle_segment_id(segment_id)

    def reconcile(self) -> int:
        """Materialize every committed segment whose stats are missing, then rewrite the
        manifests; returns how many segments were materialized."""
        return self.runner.catch_up()

    def write_manifests(self) -> None:
        self.materializer.flush(self.runner.ctx, final=True)
