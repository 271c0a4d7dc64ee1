"""`img2dataset service`: the pipeline on an output folder, until it is stopped, fed by
`img2dataset enqueue --output_folder` from any process at any time (img2dataset PR #474's usage).

    img2dataset service --output_folder data/ --thread_count 32     # runs until stopped
    img2dataset enqueue --url_list urls.txt --output_folder data/    # from another terminal
    img2dataset status data/ --port 8080                             # the dashboard
    img2dataset service --output_folder data/ --port 8080 --host 0.0.0.0   # service + dashboard

The bus is the folder's durable log (`bus.sqlite`): a list enqueued while the service is down
waits there, and a service killed at any moment (SIGKILL included) starts again where the index
and the bus say it was: rows not answered are fetched again, a row is recorded once. Ctrl-C or
SIGTERM stop it as they stop `download`: rows in flight are finished and committed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time

from pydantic import Field

from i2d_cli.download import busy_folder_advice, local_fetcher_settings
from i2d_cli.flags import add_model_flags, model_kwargs
from i2d_cli.options import FolderOptions
from i2d_cli.pipeline import LocalPipeline, PipelineSettings
from i2d_fetcher.settings import FetcherSettings
from i2d_segments.folder import FolderBusy, FolderError, OutputFolder
from i2d_segments.ops.gc import find_abandoned_uploads, find_garbage
from i2d_segments.runtime import Health, HealthServer
from i2d_segments.settings import ConnectionSettings
from i2d_segments.signals import stop_event_on_signals

log = logging.getLogger(__name__)

NAME = "service"
HELP = "Run the pipeline on an output folder until stopped; feed it with enqueue --output_folder."

# How often the service logs its progress while it has work.
REPORT_SECONDS = 10.0
# Longest wait of each service's poll: records wake a poll at once, so this only bounds how
# soon a stop is noticed; short polls would cost an idle service queries for nothing.
SERVICE_POLL_SECONDS = 0.5


class ServiceOptions(FolderOptions):
    segment_idle_seconds: float = Field(
        5.0,
        ge=0,
        description="Close a segment that received nothing for this long, so a short list "
        "shows up in the index within seconds (segments also close by size and count).",
    )
    port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Also serve the dashboard, REST API and its /metrics on this port, as "
        "`img2dataset status DIR --port` does (0: any free port).",
    )
    host: str = Field("127.0.0.1", description="Bind address of --port.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser, ServiceOptions)
    # The fetcher's options, as `download` takes them. The input columns are enqueue's: rows
    # reach the service in the `urls` topic's own format.
    skip = (*ConnectionSettings.model_fields, "group_id", "url_field", "caption_field")
    add_model_flags(parser, FetcherSettings, skip=skip)


def run(ns: argparse.Namespace) -> int:
    opts = ServiceOptions(**model_kwargs(ns, ServiceOptions))
    fetcher = local_fetcher_settings(ns)
    stop = stop_event_on_signals()
    try:
        folder = OutputFolder.at(opts.output_folder, opts.explicit_index_name())
        with folder.lock("service"):
            LocalService(folder, opts, fetcher, stop).run()
    except FolderBusy as e:
        print(f"img2dataset: {busy_folder_advice(e, ns)}", file=sys.stderr)
        return 1
    except FolderError as e:
        print(f"img2dataset: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        log.debug("the service failed", exc_info=True)
        print(f"img2dataset service: stopped on an error: {e}", file=sys.stderr)
        return 1
    return 0


class LocalService:
    """Serves `folder` until `stop` is set (by a signal, or by a service that failed)."""

    def __init__(
        self,
        folder: OutputFolder,
        opts: ServiceOptions,
        fetcher: FetcherSettings,
        stop: threading.Event,
    ) -> None:
        self.folder = folder
        self.opts = opts
        self.fetcher = fetcher
        self.stop = stop
        self.health = Health()

    def run(self) -> None:
        metrics = (
            HealthServer(self.health, self.opts.metrics_host, self.opts.metrics_port).start()
            if self.opts.metrics_port
            else None
        )
        store = self.folder.open_store()
        index = self.folder.open_index()
        bus = None
        try:
            # This process holds the folder's lock: what a killed run left uncommitted is garbage.
            for upload in find_abandoned_uploads(store, grace_seconds=0):
                store.abort_incomplete_upload(upload)
            for garbage in find_garbage(store, index, grace_seconds=0):
                store.delete(garbage.name)
            bus = self.folder.open_bus()
            settings = PipelineSettings.local(
                self.fetcher,
                number_sample_per_shard=self.opts.number_sample_per_shard,
                segment_max_bytes=self.opts.segment_max_bytes,
                segment_idle_seconds=self.opts.segment_idle_seconds,
                poll_seconds=SERVICE_POLL_SECONDS,
            )
            pipeline = LocalPipeline(bus, store, index, settings, self.health, failed=self.stop)
            self.health.started()
            dashboard = self._start_dashboard()
            pipeline.start()
            log.info(
                "serving %s; add lists with: img2dataset enqueue --url_list LIST "
                "--output_folder %s",
                self.folder.path,
                self.folder.path,
            )
            try:
                self._serve(pipeline)
            finally:
                try:
                    pipeline.stop()
                finally:
                    if dashboard is not None:
                        dashboard.stop()
            log.info("service stopped cleanly: %s", self._figures(pipeline))
        finally:
            if bus is not None:
                bus.close()
            index.close()
            store.close()
            if metrics is not None:
                metrics.stop()

    def _serve(self, pipeline: LocalPipeline) -> None:
        report = ProgressReport()
        while not self.stop.wait(0.5):
            self.health.beat()
            line = report.line(pipeline)
            if line is not None:
                log.info("%s", line)

    def _figures(self, pipeline: LocalPipeline) -> str:
        done, ok = pipeline.progress()
        return f"{done} rows answered, {ok} images, {pipeline.backlog()} rows waiting"

    def _start_dashboard(self) -> _Dashboard | None:
        if self.opts.port is None:
            return None
        return _Dashboard(str(self.folder.path), self.opts.host, self.opts.port).start()


class ProgressReport:
    """A log line every REPORT_SECONDS while rows move: totals, rates, the queue and its ETA."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._done = 0
        self._ok = 0

    def line(self, pipeline: LocalPipeline) -> str | None:
        now = time.monotonic()
        if now - self._last < REPORT_SECONDS:
            return None
        done, ok = pipeline.progress()
        if done == self._done:
            self._last = now
            return None
        span = now - self._last
        rate = (done - self._done) / span
        images = (ok - self._ok) / span
        self._last, self._done, self._ok = now, done, ok
        waiting = pipeline.backlog()
        eta = f", ETA {waiting / rate:.0f}s" if waiting and rate > 0 else ""
        return (
            f"{done} rows answered ({rate:.1f} rows/s, {images:.1f} images/s), "
            f"{waiting} waiting{eta}"
        )


class _Dashboard:
    """`img2dataset status DIR --port` inside the service: its own thread and stop event."""

    def __init__(self, folder: str, host: str, port: int) -> None:
        from i2d_status.settings import StatusSettings

        self.settings = StatusSettings(
            output_folder=folder, http_host=host, http_port=port, metrics_port=0
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> _Dashboard:
        from i2d_status.server import serve_status

        def serve() -> None:
            try:
                serve_status(self.settings, self._stop)
            except Exception as e:  # the dashboard is a view: the service goes on without it
                log.error("the dashboard stopped: %s", e)

        self._thread = threading.Thread(target=serve, name="dashboard", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
