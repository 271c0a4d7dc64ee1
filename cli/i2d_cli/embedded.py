"""`img2dataset download`: the same fetcher, appender and materializer loops as the services,
wired in one process over the embedded adapters (in-process bus, local folder, SQLite).

Resume: the index is the truth. Rows already recorded are skipped before they are enqueued
(with --retry_failed, failed ones are sent again),
and the in-process APPEND log starts at the index's `next_offset`, so the appender's fencing and
offsets work exactly as they do on Kafka. Objects a killed run left behind (completed but never
committed, or half-written) are removed first: this process owns the folder (a lock file says so).

Progress, for `img2dataset status` and the dashboard (other processes): the run records itself
in the index (`download_runs`: the list's size, rows skipped, where its APPEND records start)
about every second, and the appender publishes its open segment's figures as it does in the
distributed mode. `--metrics_port` serves the three services' /metrics, /healthz and /readyz.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from i2d_appender.service import AppenderService
from i2d_appender.settings import AppenderSettings
from i2d_cli.errors import InputError
from i2d_cli.inputs import carried_columns, count_rows
from i2d_cli.options import DownloadOptions
from i2d_cli.progress import Progress
from i2d_cli.resume import rows_to_send
from i2d_fetcher.service import FetcherService
from i2d_fetcher.settings import FetcherSettings
from i2d_materializer.service import MaterializerService
from i2d_materializer.settings import MaterializerSettings
from i2d_segments.bus.memory import MemoryBus
from i2d_segments.gc import find_abandoned_uploads, find_garbage
from i2d_segments.index import DownloadRun, Index, IndexError_
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.records import UnparsedRow, UrlRow, encode_url_row
from i2d_segments.runtime import Health, HealthServer
from i2d_segments.store.local import LocalStore

log = logging.getLogger(__name__)

# How far the reader may run ahead of the fetcher: bounds memory whatever the list size.
MAX_AHEAD = 20_000
SKIP_BATCH = 2_000
# Longest wait of a service's poll on the in-process bus. Waking up costs nothing here, and a
# service notices its stop only between polls: with the services' default (0.5 s) each of
# the three would add up to that to the end of every download.
POLL_SECONDS = 0.05
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
        except IndexError_ as e:
            if not self._warned:
                self._warned = True
                log.warning("cannot record the run's progress in the index: %s", e)


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = (folder / ".img2dataset.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(f"another img2dataset download is writing to {folder}") from None
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _clear_output(folder: Path, index_name: str) -> None:
    shutil.rmtree(folder / "segments", ignore_errors=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        (folder / f"{index_name}{suffix}").unlink(missing_ok=True)


class EmbeddedDownload:
    def __init__(
        self,
        opts: DownloadOptions,
        fetcher_settings: FetcherSettings,
        stop: threading.Event | None = None,
    ) -> None:
        self.opts = opts
        self.fetcher_settings = fetcher_settings
        self.folder = Path(opts.output_folder)
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
        with folder_lock(self.folder):
            if self.opts.incremental_mode == "overwrite":
                _clear_output(self.folder, self.opts.index_name)
            store = LocalStore(self.folder)
            index = SqliteIndex(self.folder / self.opts.index_name)
            try:
                index.migrate()
                # This process owns the folder: whatever a killed run left uncommitted is garbage.
                for upload in find_abandoned_uploads(store, grace_seconds=0):
                    store.abort_incomplete_upload(upload)
                for garbage in find_garbage(store, index, grace_seconds=0):
                    store.delete(garbage.name)
                return self._run(store, index)
            finally:
                index.close()

    def _run(self, store: LocalStore, index: Index) -> Summary:
        fs = self.fetcher_settings
        bus = MemoryBus()
        lease = index.partition(fs.append_topic, 0)
        bus.create_topic(fs.urls_topic, 1)
        bus.create_topic(fs.append_topic, 1, start_offsets=[lease.next_offset if lease else 0])
        bus.create_topic(fs.closed_topic, 1)
        common = {
            "append_topic": fs.append_topic,
            "closed_topic": fs.closed_topic,
            "urls_topic": fs.urls_topic,
            "metrics_port": 0,
            "create_topics": False,
            "poll_timeout_seconds": POLL_SECONDS,
        }
        appender = AppenderService(
            bus,
            store,
            index,
            AppenderSettings(
                number_sample_per_shard=self.opts.number_sample_per_shard,
                segment_max_bytes=self.opts.segment_max_bytes,
                segment_idle_seconds=3600.0,
                **common,  # type: ignore[arg-type]
            ),
        )
        materializer = MaterializerService(
            bus,
            store,
            index,
            MaterializerSettings(**common),  # type: ignore[arg-type]
        )
        poll = min(fs.poll_timeout_seconds, POLL_SECONDS)
        fetcher = FetcherService(
            bus, fs.model_copy(update={"poll_timeout_seconds": poll}), store=store
        )
        # Ready while each service's own checks pass; alive while this loop beats.
        for name, health in (
            ("fetcher", fetcher.health),
            ("appender", appender.health),
            ("materializer", materializer.health),
        ):
            self.health.add_check(name, _all_checks_pass(health))
        self.health.started()

        stops = {name: threading.Event() for name in ("fetcher", "appender", "materializer")}
        errors: list[BaseException] = []

        def guarded(fn: Callable[[threading.Event], None], stop: threading.Event) -> None:
            try:
                fn(stop)
            except BaseException as e:
                errors.append(e)
                self.stop_requested.set()

        threads = [
            threading.Thread(target=guarded, args=(fetcher.run, stops["fetcher"]), name="fetcher"),
            threading.Thread(
                target=guarded, args=(appender.run, stops["appender"]), name="appender"
            ),
            threading.Thread(
                target=guarded, args=(materializer.run, stops["materializer"]), name="materializer"
            ),
        ]
        for t in threads:
            t.start()

        summary = Summary()
        started = time.monotonic()
        progress = Progress(total=self.total, enabled=self.opts.progress)
        append_start = lease.next_offset if lease else 0
        now = time.time()
        self.record = record = RunRecord(
            index,
            DownloadRun(
                run_id=uuid.uuid4().hex,
                url_list=os.path.abspath(self.opts.url_list),
                append_topic=fs.append_topic,
                append_partition=0,
                start_offset=append_start,
                rows_total=self.total,
                rows_read=0,
                rows_skipped=0,
                started_at=now,
                updated_at=now,
                finished_at=None,
            ),
        )
        record.update(force=True)
        try:
            produced = self._enqueue(bus, index, fetcher, summary, progress)
            progress.set_total(summary.rows_skipped + produced)
            record.update(
                force=True,
                rows_total=summary.rows_skipped + produced,
                rows_read=summary.rows_read,
                rows_skipped=summary.rows_skipped,
            )
            self._wait(
                lambda: fetcher.rows_done >= produced or bool(errors), bus, fetcher, progress
            )
            # Everything is on the APPEND log: close segments as soon as the appender is idle.
            appender.close_when_idle.set()
            self._wait(
                lambda: _caught_up(bus, "appender", fs.append_topic, append_start) or bool(errors),
                bus,
            )
            self._wait(
                lambda: _caught_up(bus, "materializer", fs.closed_topic, 0) or bool(errors), bus
            )
        finally:
            progress.close()
            # Order matters: the fetcher drains first, then the appender commits its segments.
            for name in ("fetcher", "appender", "materializer"):
                stops[name].set()
                next(t for t in threads if t.name == name).join()
            record.update(force=True, finished_at=time.time())
        if errors:
            raise errors[0]
        summary.elapsed = time.monotonic() - started
        summary.rows_fetched = fetcher.rows_done
        summary.successes = fetcher.successes
        summary.status_counts = index.status_counts()
        summary.error_counts = index.error_counts()
        summary.segments = len(index.segments())
        if self.stop_requested.is_set():
            raise DownloadInterrupted(summary.render())
        return summary

    def _enqueue(
        self,
        bus: MemoryBus,
        index: Index,
        fetcher: FetcherService,
        summary: Summary,
        progress: Progress,
    ) -> int:
        """Produce every row not recorded yet; returns how many were produced."""
        topic = self.fetcher_settings.urls_topic
        producer = bus.producer()
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
                producer.produce(topic, encode_url_row(row))
                produced += 1
            batch.clear()
            producer.poll(0)
            self._truncate_consumed(bus)
            self._beat(summary)
            while produced - fetcher.rows_done > MAX_AHEAD and not self.stop_requested.is_set():
                progress.update(fetcher.rows_done, fetcher.successes)
                time.sleep(0.05)
                self._truncate_consumed(bus)
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
        return produced

    def _wait(
        self,
        done: Callable[[], bool],
        bus: MemoryBus,
        fetcher: FetcherService | None = None,
        progress: Progress | None = None,
    ) -> None:
        while not done() and not self.stop_requested.is_set():
            if fetcher is not None and progress is not None:
                progress.update(fetcher.rows_done, fetcher.successes)
            self._beat()
            time.sleep(0.05)
            # Once the whole list is produced the reader no longer truncates: keep dropping
            # what is committed, or the payloads of the last MAX_AHEAD rows stay in memory.
            self._truncate_consumed(bus)
        if fetcher is not None and progress is not None:
            progress.update(fetcher.rows_done, fetcher.successes)

    def _beat(self, summary: Summary | None = None) -> None:
        """The run is alive (/healthz), and its row in the index is current."""
        self.health.beat()
        if self.record is None:
            return
        if summary is None:
            self.record.update()
        else:
            self.record.update(rows_read=summary.rows_read, rows_skipped=summary.rows_skipped)

    def _truncate_consumed(self, bus: MemoryBus) -> None:
        """Drop log records every group has committed past: the in-process log is not a
        retention store, and image payloads would otherwise pile up in memory."""
        fs = self.fetcher_settings
        for group, topic in ((fs.group_id, fs.urls_topic), ("appender", fs.append_topic)):
            for lag in bus.lag(group, topic):
                if lag.committed:
                    bus.truncate_before(topic, lag.partition, lag.committed)


def _all_checks_pass(health: Health) -> Callable[[], bool]:
    return lambda: all(health.readiness().values())


def _caught_up(bus: MemoryBus, group: str, topic: str, log_start: int) -> bool:
    """The group committed everything on the (single-partition) topic; a group that never
    committed is caught up only if nothing was produced since the log started."""
    return all(
        (log_start if p.committed is None else p.committed) >= p.high_watermark
        for p in bus.lag(group, topic)
    )
