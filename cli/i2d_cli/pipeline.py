"""The embedded pipeline: the fetcher, appender and materializer services as threads of one
process, over one bus, one store and one index.

`download` runs it over the in-process bus until its list is drained; `service` runs it over
the output folder's durable bus until it is stopped. Both start, drain and stop the services
through this object, which knows them only by what they expose (`run(stop)`, `progress()`,
`drain()`, `health`) and the bus only by its port: what "caught up" means is read from the
groups' committed offsets and, for APPEND, from the index (the truth of what is recorded).

The local topics (`i2d_segments.folder.create_local_topics`) have one partition each.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from i2d_appender.service import AppenderService
from i2d_appender.settings import AppenderSettings
from i2d_fetcher.pool.config import capacity
from i2d_fetcher.service import FetcherService, FetchProgress
from i2d_fetcher.settings import FetcherSettings
from i2d_materializer.metadata import load_table_libraries
from i2d_materializer.service import MaterializerService
from i2d_materializer.settings import MaterializerSettings
from i2d_segments.bus import EmbeddedBus
from i2d_segments.folder import create_local_topics
from i2d_segments.index import Index
from i2d_segments.runtime import Health
from i2d_segments.store import SegmentStore

log = logging.getLogger(__name__)

# Longest wait of a service's poll on a local bus. Waking up costs little here, and a service
# notices its stop only between polls: with the services' default (0.5 s) each of the three
# would add up to that to the end of every download.
POLL_SECONDS = 0.05
# How often the fetcher commits its `urls` offsets: what `drain` and `enqueue --wait` read.
COMMIT_SECONDS = 0.2
# How long `drain` sleeps between two looks at the groups' positions.
TICK_SECONDS = 0.05
# And once the end is near (no more rows on `urls` than the fetcher holds, then the last
# segments being committed and materialized): each of those waits adds itself to the end of
# every download, and a look is two small queries.
FINAL_TICK_SECONDS = 0.01


@dataclass(frozen=True)
class PipelineSettings:
    """The three services' settings, sharing the topic names of the fetcher's."""

    fetcher: FetcherSettings
    appender: AppenderSettings
    materializer: MaterializerSettings

    @classmethod
    def local(
        cls,
        fetcher: FetcherSettings,
        *,
        number_sample_per_shard: int,
        segment_max_bytes: int,
        segment_idle_seconds: float,
        poll_seconds: float = POLL_SECONDS,
    ) -> PipelineSettings:
        """`poll_seconds`: the longest wait of each service's poll, so how soon it notices a
        stop (a download ends sooner with short ones; an idle service queries less with long
        ones: a record wakes a waiting poll at once either way)."""
        common = {
            "urls_topic": fetcher.urls_topic,
            "append_topic": fetcher.append_topic,
            "closed_topic": fetcher.closed_topic,
            "metrics_port": 0,  # the process serves one /metrics for all three
            "create_topics": False,  # create_local_topics does, with APPEND's start offsets
            "poll_timeout_seconds": poll_seconds,
        }
        return cls(
            fetcher=fetcher.model_copy(
                update={
                    "poll_timeout_seconds": min(fetcher.poll_timeout_seconds, poll_seconds),
                    "commit_interval_seconds": min(fetcher.commit_interval_seconds, COMMIT_SECONDS),
                }
            ),
            appender=AppenderSettings(
                number_sample_per_shard=number_sample_per_shard,
                segment_max_bytes=segment_max_bytes,
                segment_idle_seconds=segment_idle_seconds,
                **common,  # type: ignore[arg-type]
            ),
            materializer=MaterializerSettings(**common),  # type: ignore[arg-type]
        )


class LocalPipeline:
    def __init__(
        self,
        bus: EmbeddedBus,
        store: SegmentStore,
        index: Index,
        settings: PipelineSettings,
        health: Health,
        failed: threading.Event | None = None,
    ) -> None:
        """`failed` is set when a service stops on an error (the caller's stop event, say)."""
        self.bus = bus
        self.index = index
        self.settings = settings
        self.health = health
        create_local_topics(bus, index, settings.fetcher)
        self.appender = AppenderService(
            bus, store, index, settings.appender, hand_off_manifests=True
        )
        self.materializer = MaterializerService(bus, store, index, settings.materializer)
        self.fetcher = FetcherService(bus, settings.fetcher, store=store)
        # Ready while each service's own checks pass; alive while the caller's loop beats.
        for name, service_health in (
            ("fetcher", self.fetcher.health),
            ("appender", self.appender.health),
            ("materializer", self.materializer.health),
        ):
            health.add_check(name, _all_checks_pass(service_health))
        # Stopped in this order: the fetcher finishes and publishes its rows, then the
        # appender commits its open segments, then the materializer.
        self._stages: list[tuple[str, Callable[[threading.Event], None]]] = [
            ("fetcher", self.fetcher.run),
            ("appender", self.appender.run),
            ("materializer", self.materializer.run),
        ]
        self._stops = {name: threading.Event() for name, _ in self._stages}
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.failed = failed if failed is not None else threading.Event()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        # The materializer's pyarrow (with numpy, ~0.25 s of CPU), imported now: the fetch
        # workers' fork server (started first thing, main.py) is still importing their code,
        # and this process's core has nothing else to do; when the first segment closes,
        # every core is fetching. On the caller's thread, before any of ours: the caller
        # reads the list next, and a module another thread is still importing is half made.
        load_table_libraries()
        for name, run in self._stages:
            thread = threading.Thread(target=self._guarded, args=(run, name), name=name)
            thread.start()
            self._threads.append(thread)

    def _guarded(self, run: Callable[[threading.Event], None], name: str) -> None:
        try:
            run(self._stops[name])
        except BaseException as e:
            log.error("the %s stopped on an error: %s", name, e)
            self.errors.append(e)
            self.failed.set()

    def stop(self, drained: bool = False) -> None:
        """Stop the services in order, each finishing and committing what it holds; raise the
        first error a service stopped on. `drained`: after a `drain` that returned True nothing
        is left to pass from one service to the next, so all three are told at once and each
        exits after its current poll, not one poll after the other (the end of a download)."""
        if drained:
            for event in self._stops.values():
                event.set()
        for (name, _), thread in zip(self._stages, self._threads, strict=False):
            self._stops[name].set()
            thread.join()
            if name == "fetcher" and not drained:
                # Every answer it counted as fetched is on the bus: all of it is committed.
                self.appender.drain()
        if self.errors:
            raise self.errors[0]

    # -- what it has done ---------------------------------------------------------------------

    def progress(self) -> FetchProgress:
        return self.fetcher.progress()

    def backlog(self) -> int:
        """Rows on `urls` the fetchers have not answered yet (as of their last commit)."""
        fs = self.settings.fetcher
        return self._uncommitted(fs.group_id, fs.urls_topic)[0]

    def _uncommitted(self, group: str, topic: str) -> tuple[int, int]:
        """Records of `topic` past `group`'s committed offsets, and the topic's partitions."""
        lag = self.bus.lag(group, topic)
        return sum(max(0, p.high_watermark - (p.committed or 0)) for p in lag), len(lag)

    def drained(self) -> bool:
        """Every row on `urls` is answered, every answer is in a committed segment, and every
        committed segment is materialized."""
        return self._fetched() and self._recorded() and self._materialized()

    def _fetched(self) -> bool:
        return self.backlog() == 0

    def _recorded(self) -> bool:
        s = self.settings.appender
        for p in self.bus.lag(s.group_id, s.append_topic):
            lease = self.index.partition(s.append_topic, p.partition)
            if (lease.next_offset if lease else 0) < p.high_watermark:
                return False
        return True

    def appender_behind(self, slack: int) -> bool:
        """More rows are held on their way to the appender (not fetched yet, or answered and not
        committed past by the appender) than its open and closing segments hold, plus `slack`:
        the reader should wait. Else a slow disk or index lets answers (their images included)
        pile up in the in-process bus."""
        s = self.settings.appender
        held, partitions = self._uncommitted(s.group_id, s.append_topic)
        return self.backlog() + held > slack + 2 * s.number_sample_per_shard * partitions

    def _materialized(self) -> bool:
        s = self.settings.materializer
        return all(
            (p.committed or 0) >= p.high_watermark for p in self.bus.lag(s.group_id, s.closed_topic)
        )

    def drain(self, stop: threading.Event, tick: Callable[[], None] = lambda: None) -> bool:
        """Wait until everything on the bus is fetched, recorded and materialized, closing open
        segments as soon as their partition is idle meanwhile; `tick` runs between looks.
        False when `stop` was set or a service failed first."""

        def wait(done: Callable[[], bool], pause: Callable[[], float]) -> bool:
            while not done():
                if stop.is_set() or self.failed.is_set():
                    return False
                tick()
                self.housekeeping()
                time.sleep(pause())
            return True

        held = self._fetcher_capacity()

        def fetching_pause() -> float:
            return TICK_SECONDS if self.backlog() > held else FINAL_TICK_SECONDS

        if not wait(self._fetched, fetching_pause):
            return False
        self.appender.drain()
        try:
            return wait(self._recorded, _final_pause) and wait(self._materialized, _final_pause)
        finally:
            self.appender.drain(False)

    def _fetcher_capacity(self) -> int:
        """Rows the fetcher holds at most (in flight and queued in its workers)."""
        fs = self.settings.fetcher
        return capacity(fs.rows_in_flight, fs.processes_count)

    def housekeeping(self) -> None:
        """Drop what every group has read (the in-process log holds image payloads)."""
        self.bus.truncate_consumed()


def _final_pause() -> float:
    return FINAL_TICK_SECONDS


def _all_checks_pass(health: Health) -> Callable[[], bool]:
    return lambda: all(health.readiness().values())
