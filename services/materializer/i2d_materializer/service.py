"""The materializer loop: SEGMENT_CLOSED -> metadata parquet and stats next to the segment.

Idempotent: outputs are a pure function of the index rows of the segment, written with
overwrite, so an event handled twice (at-least-once delivery) yields the same files. Offsets are
committed after the outputs are written.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from i2d_materializer import metrics
from i2d_materializer.metadata import metadata_table, parquet_bytes, stats
from i2d_materializer.settings import MaterializerSettings
from i2d_segments.bus import Bus, Message, TopicPartition
from i2d_segments.index import Index, IndexError_
from i2d_segments.naming import sidecar_name
from i2d_segments.records import MalformedRecord, SegmentClosed
from i2d_segments.runtime import Health, retry_call
from i2d_segments.store import SegmentStore, StoreError

log = logging.getLogger(__name__)

METADATA_SUFFIX = ".parquet"
STATS_SUFFIX = "_stats.json"


class MaterializerService:
    def __init__(
        self,
        bus: Bus,
        store: SegmentStore,
        index: Index,
        settings: MaterializerSettings,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.index = index
        self.health = health or Health()
        self.consumer = bus.consumer(settings.group_id)

    def run(self, stop: threading.Event) -> None:
        if self.settings.reconcile_on_start:
            self.reconcile()
        self.consumer.subscribe([self.settings.closed_topic])
        try:
            while not stop.is_set():
                self.step()
        finally:
            self.consumer.close()

    def step(self) -> None:
        messages = self.consumer.poll_batch(100, self.settings.poll_timeout_seconds)
        self.health.beat()
        if not messages:
            return
        offsets: dict[TopicPartition, int] = {}
        for m in messages:
            self._handle(m)
            offsets[m.tp] = m.offset + 1
        self.consumer.commit(offsets)

    def _handle(self, m: Message) -> None:
        try:
            event = SegmentClosed.decode(m.value)
        except MalformedRecord as e:
            log.error("skipping malformed SEGMENT_CLOSED %s@%d: %s", m.tp, m.offset, e)
            return
        self.materialize(event.segment_id)
        metrics.LAG_SECONDS.set(max(0.0, time.time() - event.created_at))

    def materialize(self, segment_id: str) -> bool:
        """Write the segment's metadata parquet and stats; False if the index has no such
        segment (an event from a commit that never happened cannot exist, so this is a bug
        or a foreign event; logged, not fatal)."""
        started = time.monotonic()
        segment = retry_call(
            lambda: self.index.segment(segment_id), what="segment lookup", retry_on=(IndexError_,)
        )
        if segment is None:
            log.error("SEGMENT_CLOSED for %s, which the index does not hold", segment_id)
            return False
        samples = retry_call(
            lambda: self.index.samples_for_segment(segment_id),
            what="samples lookup",
            retry_on=(IndexError_,),
        )
        table = metadata_table(samples)
        retry_call(
            lambda: self.store.put(sidecar_name(segment_id, METADATA_SUFFIX), parquet_bytes(table)),
            what="write metadata",
            retry_on=(StoreError,),
        )
        body = json.dumps(stats(segment, samples), indent=2, sort_keys=True).encode()
        retry_call(
            lambda: self.store.put(sidecar_name(segment_id, STATS_SUFFIX), body),
            what="write stats",
            retry_on=(StoreError,),
        )
        metrics.SEGMENTS.inc()
        metrics.SECONDS.observe(time.monotonic() - started)
        return True

    def reconcile(self) -> int:
        """Materialize every committed segment whose stats are missing; returns how many."""
        done = 0
        for segment in self.index.segments():
            if not self.store.exists(sidecar_name(segment.segment_id, STATS_SUFFIX)):
                done += int(self.materialize(segment.segment_id))
        if done:
            log.info("reconciled %d segments without metadata", done)
        return done
