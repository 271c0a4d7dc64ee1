"""Starting a long-running service over Kafka, the store and the index: the one boot shared by
`img2dataset serve <name>` and a user's own SegmentConsumer program.

    health server (/metrics, /healthz; /readyz answers 503 until the service is built)
    -> Kafka bus -> topics (if `create_topics`) -> store -> index and its readiness check
    -> the service, built by its factory -> `Health.started()` -> run until `stop` is set
    -> closed in reverse order: index, bus, health server

What to build is the caller's: a factory gets the settings and the connections (`Wiring`), so
the kernel names no service. A failure while starting (a dependency unreachable or not as
configured) raises `StartupError`, its reason on one line; the caller says it and exits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from i2d_segments.bus import Bus
from i2d_segments.connect import index_from, open_kafka_bus, store_from
from i2d_segments.index import Index
from i2d_segments.runtime import Health, HealthServer, stop_event_on_signals
from i2d_segments.settings import ConnectionSettings
from i2d_segments.store import SegmentStore

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ConnectionSettings)


class Service(Protocol):
    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set, finishing and committing the work in flight."""


@dataclass(frozen=True)
class Wiring:
    """What the boot opened for the service: the bus, the store, the index (unless the service
    said it has no use for one) and the health its checks register with."""

    bus: Bus
    store: SegmentStore
    health: Health
    opened_index: Index | None = None

    @property
    def index(self) -> Index:
        if self.opened_index is None:
            raise RuntimeError("this service was started without an index (uses_index=False)")
        return self.opened_index


ServiceFactory = Callable[[S, Wiring], Service]


class StartupError(Exception):
    """Kafka, the store or the index cannot be reached, or is not as configured, at start."""


def run_service(
    name: str,
    settings: S,
    factory: ServiceFactory[S],
    *,
    uses_index: bool = True,
    stop: threading.Event | None = None,
) -> None:
    """Boot the service `factory` builds and run it until `stop` (by default: the first
    SIGTERM/SIGINT) is set; everything opened is closed on the way out. `name` is what the
    log calls it."""
    stop = stop_event_on_signals() if stop is None else stop
    health = Health()
    server = (
        HealthServer(health, settings.metrics_host, settings.metrics_port).start()
        if settings.metrics_port
        else None
    )
    try:
        bus = open_kafka_bus(settings)
        index: Index | None = None
        try:
            try:
                if settings.create_topics:
                    bus.create_topics(settings.topic_partitions())
                store = store_from(settings)
                if uses_index:
                    index = index_from(settings)
                    health.add_check("index", _index_answers(index))
                service = factory(settings, Wiring(bus, store, health, index))
            except Exception as e:  # a dependency missing at start: one line for the caller
                log.debug("start-up failed", exc_info=True)
                raise StartupError(" ".join(str(e).split()) or type(e).__name__) from e
            # Its checks are registered: readiness is theirs from now on (503 until then).
            health.started()
            log.info("%s serving (owner %s)", name, settings.owner)
            service.run(stop)
            log.info("%s stopped cleanly", name)
        finally:
            if index is not None:
                index.close()
            bus.close()
    finally:
        if server is not None:
            server.stop()


def _index_answers(index: Index) -> Callable[[], bool]:
    return lambda: index.partitions() is not None
