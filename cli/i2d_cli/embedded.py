"""`img2dataset download`: the same fetcher, appender and materializer loops as the services,
wired in one process over the embedded adapters (in-process bus, local folder, SQLite), composed by
`pipeline.LocalPipeline` as `img2dataset service` composes them.

Resume: the index is the truth. Rows already recorded are skipped before they are enqueued
(with --retry_failed, failed ones are sent again),
and the in-process APPEND log starts at the index's `next_offset`, so the appender's fencing and
offsets work exactly as they do on Kafka. Objects a killed run left behind (completed but never
committed, or half-written) are removed first: this process owns the folder (a lock file says so).
A folder a service used keeps its durable bus (`bus.sqlite`): the download then runs over it,
so rows enqueued there and not recorded yet are fetched too and no offset is reused.

Progress, for `img2dataset status` and the dashboard (other processes): the run records itself
in the index (`download_runs`: the list's size, rows skipped, where its APPEND records start)
about every second, and the appender publishes its open segment's figures as it does in the
distributed mode. `--metrics_port` serves the three services' /metrics, /healthz and /readyz.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field

from i2d_cli.errors import InputError
from i2d_cli.inputs import carried_columns, count_rows
from i2d_cli.options import DownloadOptions
from i2d_cli.pipeline import LocalPipeline, PipelineSettings
from i2d_cli.progress import Progress
from i2d_cli.resume import rows_to_send
from i2d_fetcher.settings import FetcherSettings
from i2d_segments import stagecpu
from i2d_segments.bus import EmbeddedBus
from i2d_segments.bus.memory import MemoryBus
from i2d_segments.folder import BUS_FILE, OutputFolder
from i2d_segments.index import DownloadRun, Index, IndexAccessError
from i2d_segments.ops.gc import find_abandoned_uploads, find_garbage
from i2d_segments.records import UnparsedRow, UrlRow, encode_url_row
from i2d_segments.runtime import Health, HealthServer
from i2d_segments.store.local import LocalStore

log = logging.getLogger(__name__)

# How far the reader may run ahead of the fetcher, and the fetcher ahead of the appender's
# segments: bounds memory whatever the list size.
MAX_AHEAD = 20_000
SKIP_BATCH = 2_000
# How often the run's row in the index (download_runs) is brought up to date.
RUN_RECORD_SECONDS = 1.0


class DownloadInterrupted(Exception):
    """SIGINT/SIGTERM: in-flight work was committed; running again resumes."""


@dataclass
class Summary:
    rows_read: int = 0
    rows_skipped: int = 0
    rows_fetched: int = 0
    successes: int = 0
    elapsed: float = 0.0
    status_counts: dict[str, int] = field(default_factory=dict)
    error_counts: dict[str, int] = field(default_factory=dict)
    segments: int = 0
    input_error: str | None = None  # the url list could not be read to its end
    # CPU seconds of this run by stage, every process (i2d_segments.stagecpu.RunClock).
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.successes / self.elapsed if self.elapsed > 0 else 0.0

    def render(self) -> str:
        lines = [
            f"this run: {self.rows_fetched} rows fetched, {self.successes} images stored or "
            f"deduplicated, {self.rows_skipped} rows skipped (already recorded), "
            f"{self.elapsed:.1f}s, {self.images_per_second:.1f} images/s",
            "dataset: "
            + ", ".join(
                [f"{k}={v}" for k, v in sorted(self.status_counts.items())]
                + [f"{self.segments} segment{'' if self.segments == 1 else 's'}"]
            ),
        ]
        if self.cpu_seconds:
            # One line a script can read: `stage=seconds` pairs (README, "Where the CPU goes").
            lines.append(
                "cpu seconds by stage: "
                + " ".join(f"{k}={v:.3f}" for k, v in self.cpu_seconds.items())
            )
        if self.error_counts:
            lines.append("failures by reason:")
            top = sorted(self.error_counts.items(), key=lambda kv: (-kv[1], kv[0]))
            lines += [f"  {n:>8}  {reason}" for reason, n in top[:20]]
        return "\n".join(lines)


class RunRecord:
    """This run's row in the index, updated at most every RUN_RECORD_SECONDS (and at the end).
    Best effort: a failed write is logged; the figures are not the data."""

    def __init__(self, index: Index, run: DownloadRun) -> None:
        self.index = index
        self.run = run
        self._written = -float("inf")
        self._warned = False

    def update(self, *, force: bool = False, **changes: object) -> None:
        self.run = dataclasses.replace(self.run, **changes)  # type: ignore[arg-type]
        now = time.monotonic()
        if not force and now - self._written < RUN_RECORD_SECONDS:
            return
        self._written = now
        try:
            self.index.record_run(dataclasses.replace(self.run, updated_at=time.time()))
        except IndexAccessError as e:
            if not self._warned:
                self._warned = True
                log.warning("cannot record the run's progress in the index: %s", e)


def _clear_output(folder: OutputFolder) -> None:
    shutil.rmtree(folder.path / "segments", ignore_errors=True)
    for name in (folder.index_name, BUS_FILE):
        for suffix in ("", "-wal", "-shm", "-journal"):
            (folder.path / f"{name}{suffix}").unlink(missing_ok=True)


class EmbeddedDownload:
    def __init__(
        self,
        opts: DownloadOptions,
        fetcher_settings: FetcherSettings,
        stop: threading.Event | None = None,
    ) -> None:
        self.opts = opts
        self.fetcher_settings = fetcher_settings
        # --index_name names a new folder's index; an existing folder's is the one it records.
        self.folder = OutputFolder.at(opts.output_folder, opts.explicit_index_name())
        # Set by SIGINT/SIGTERM (the caller's event) or by a failing service: the run stops
        # reading, lets the services finish and commit what is in flight, and ends.
        self.stop_requested = stop if stop is not None else threading.Event()
        self.total: int | None = None  # rows in the list, when cheap to count
        self.health = Health()  # /healthz and /readyz of --metrics_port
        self.metrics_port: int | None = None  # the port /metrics is served on, once started
        self.record: RunRecord | None = None  # this run's row in the index, once it runs

    def run(self) -> Summary:
        # Before anything starts or is written: a list that is missing, empty or unreadable
        # is one clear error.
        self.total = count_rows(self.opts.url_list, self.opts.input_format)
        server = None
        if self.opts.metrics_port:
            try:
                server = HealthServer(
                    self.health, self.opts.metrics_host, self.opts.metrics_port
                ).start()
            except OSError as e:  # the port is taken, the address is not this machine's
                raise InputError(
                    f"--metrics_port {self.opts.metrics_port} on {self.opts.metrics_host}: {e}"
                ) from e
            self.metrics_port = server.port
            log.info("metrics on http://%s:%d/metrics", self.opts.metrics_host, server.port)
        try:
            return self._run_locked()
        finally:
            if server is not None:
                server.stop()

    def _run_locked(self) -> Summary:
        folder = self.folder
        with folder.lock("download"):
            if self.opts.incremental_mode == "overwrite":
                _clear_output(folder)
            store = folder.open_store()
            index = folder.open_index()
            try:
                # This process owns the folder: whatever a killed run left uncommitted is garbage.
                for upload in find_abandoned_uploads(store, grace_seconds=0):
                    store.abort_incomplete_upload(upload)
                for garbage in find_garbage(store, index, grace_seconds=0):
                    store.delete(garbage.name)
                # A folder a service used has a durable bus: rows enqueued there and not
                # recorded yet are fetched by this run too, and its APPEND offsets go on.
                bus = folder.open_bus() if folder.has_bus() else MemoryBus()
                try:
                    return self._run(bus, store, index)
                finally:
                    bus.close()
            finally:
                index.close()

    def _run(self, bus: EmbeddedBus, store: LocalStore, index: Index) -> Summary:
        fs = self.fetcher_settings
        settings = PipelineSettings.local(
            fs,
            number_sample_per_shard=self.opts.number_sample_per_shard,
            segment_max_bytes=self.opts.segment_max_bytes,
            # Segments close when the list is drained, or by size or count before.
            segment_idle_seconds=3600.0,
        )
        pipeline = LocalPipeline(
            bus, store, index, settings, self.health, failed=self.stop_requested
        )
        self.health.started()
        summary = Summary()
        started = time.monotonic()
        cpu = stagecpu.RunClock()
        progress = Progress(total=self.total, enabled=self.opts.progress)
        lease = index.partition(fs.append_topic, 0)
        now = time.time()
        self.record = record = RunRecord(
            index,
            DownloadRun(
                run_id=uuid.uuid4().hex,
                url_list=os.path.abspath(self.opts.url_list),
                append_topic=fs.append_topic,
                append_partition=0,
                start_offset=lease.next_offset if lease else 0,
                rows_total=self.total,
                rows_read=0,
                rows_skipped=0,
                started_at=now,
                updated_at=now,
                finished_at=None,
            ),
        )
        record.update(force=True)
        pipeline.start()
        drained = False
        try:
            produced = self._enqueue(pipeline, index, summary, progress)
            progress.set_total(summary.rows_skipped + produced)
            record.update(
                force=True,
                rows_total=summary.rows_skipped + produced,
                rows_read=summary.rows_read,
                rows_skipped=summary.rows_skipped,
            )

            def tick() -> None:
                progress.update(*pipeline.progress())
                self._beat()

            drained = pipeline.drain(self.stop_requested, tick)
            progress.update(*pipeline.progress())
        finally:
            progress.close()
            try:
                pipeline.stop(drained=drained)
            finally:
                record.update(force=True, finished_at=time.time())
        summary.elapsed = time.monotonic() - started
        summary.cpu_seconds = cpu.seconds()
        summary.rows_fetched, summary.successes = pipeline.progress()
        summary.status_counts = index.status_counts()
        summary.error_counts = index.error_counts()
        summary.segments = len(index.segments())
        if self.stop_requested.is_set():
            raise DownloadInterrupted(summary.render())
        return summary

    def _enqueue(
        self, pipeline: LocalPipeline, index: Index, summary: Summary, progress: Progress
    ) -> int:
        """Produce every row not recorded yet; returns how many were produced."""
        topic = self.fetcher_settings.urls_topic
        producer = pipeline.bus.producer()
        reader = self.opts.row_reader(
            carried_columns(self.opts.save_additional_columns, self.fetcher_settings),
            self.opts.number_sample_per_shard,
        )
        skip_known = self.opts.incremental_mode == "incremental"
        produced = 0
        batch: list[UrlRow | UnparsedRow] = []

        def flush_batch() -> None:
            nonlocal produced
            send = rows_to_send(index, batch, self.opts.retry_failed) if skip_known else batch
            if len(send) < len(batch):
                summary.rows_skipped += len(batch) - len(send)
                progress.skipped(len(batch) - len(send))
            for row in send:
                producer.produce(topic, encode_url_row(row), key=row.sample_id.encode())
                produced += 1
            batch.clear()
            producer.poll(0)
            pipeline.housekeeping()
            self._beat(summary)
            while (
                pipeline.backlog() > MAX_AHEAD or pipeline.appender_behind(MAX_AHEAD)
            ) and not self.stop_requested.is_set():
                progress.update(*pipeline.progress())
                time.sleep(0.05)
                producer.poll(0)
                pipeline.housekeeping()
                self._beat(summary)

        try:
            # Each list's shards are numbered dataset-wide (the index keeps them): img2dataset's
            # `key` stays unique when another list is downloaded into the same folder.
            for row in reader.rows(self.opts.url_list, index.allocate_shard):
                if self.stop_requested.is_set():
                    break
                summary.rows_read += 1
                batch.append(row)
                if len(batch) >= SKIP_BATCH:
                    flush_batch()
        except InputError as e:
            # A list damaged part way (a truncated gzip): the rows read before it are still
            # downloaded and committed, and the run ends with the error.
            summary.input_error = str(e)
        if batch and not self.stop_requested.is_set():
            flush_batch()
        producer.flush()
        producer.close()
        return produced

    def _beat(self, summary: Summary | None = None) -> None:
        """The run is alive (/healthz), and its row in the index is current."""
        self.health.beat()
        if self.record is None:
            return
        if summary is None:
            self.record.update()
        else:
            self.record.update(rows_read=summary.rows_read, rows_skipped=summary.rows_skipped)
