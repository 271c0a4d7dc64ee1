"""`img2dataset serve <service>`: one service over Kafka, the store and the index, with
/metrics, /healthz and /readyz, stopping cleanly on SIGTERM (work in flight is finished and
committed, offsets are stored).

`SERVICES` is the registry: each name's settings model and how it runs. The pipeline services
are built by a factory and booted by the kernel's `run_service` (health server, bus, topics,
store, index); status serves its dashboard, API, /metrics and health on one port of its own."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from i2d_appender.settings import AppenderSettings
from i2d_cli.flags import add_model_flags, model_kwargs
from i2d_fetcher.settings import FetcherSettings
from i2d_materializer.settings import MaterializerSettings
from i2d_segments.boot import Service, ServiceFactory, StartupError, Wiring, run_service
from i2d_segments.runtime import stop_event_on_signals
from i2d_segments.settings import ConnectionSettings
from i2d_status.settings import StatusSettings

# The services themselves are imported by their factory, for the one that runs: importing a
# service registers its metrics, and each service's /metrics should show its own families only.

NAME = "serve"
HELP = "Run one service over Kafka, S3 and Postgres."

S = TypeVar("S", bound=ConnectionSettings)
# How a service runs: (its name, its settings, the stop event) until the event is set.
Runner = Callable[[str, S, threading.Event], None]


@dataclass(frozen=True)
class Served(Generic[S]):
    """One `img2dataset serve <name>`: its settings (env `I2D_<FIELD>` or flags), how it runs
    until the stop event is set, and the shared connection settings it has no use for (not
    offered as its flags)."""

    settings: type[S]
    run: Runner[S]
    unused: tuple[str, ...] = ()


def booted(factory: ServiceFactory[S], *, uses_index: bool = True) -> Runner[S]:
    """Runs the service `factory` builds through the kernel's boot."""

    def run(name: str, settings: S, stop: threading.Event) -> None:
        run_service(name, settings, factory, uses_index=uses_index, stop=stop)

    return run


def _fetcher(settings: FetcherSettings, wiring: Wiring) -> Service:
    from i2d_fetcher.service import FetcherService

    return FetcherService(wiring.bus, settings, store=wiring.store, health=wiring.health)


def _appender(settings: AppenderSettings, wiring: Wiring) -> Service:
    from i2d_appender.service import AppenderService

    return AppenderService(wiring.bus, wiring.store, wiring.index, settings, health=wiring.health)


def _materializer(settings: MaterializerSettings, wiring: Wiring) -> Service:
    from i2d_materializer.service import MaterializerService

    return MaterializerService(
        wiring.bus, wiring.store, wiring.index, settings, health=wiring.health
    )


def _status(_name: str, settings: StatusSettings, stop: threading.Event) -> None:
    from i2d_status.server import serve_status

    # Read-only, one port for the dashboard, API, /metrics and health; no topic creation.
    serve_status(settings, stop)


SERVICES: dict[str, Served[Any]] = {
    "fetcher": Served(FetcherSettings, booted(_fetcher, uses_index=False)),
    "appender": Served(AppenderSettings, booted(_appender)),
    "materializer": Served(MaterializerSettings, booted(_materializer)),
    "status": Served(
        StatusSettings,
        _status,
        # one port (http_port) for the dashboard, API, /metrics and health; it creates no topic
        unused=(
            "metrics_host",
            "metrics_port",
            "create_topics",
            "urls_partitions",
            "append_partitions",
            "closed_partitions",
            "kafka_max_message_bytes",
        ),
    ),
}
SETTINGS: dict[str, type[ConnectionSettings]] = {
    name: served.settings for name, served in SERVICES.items()
}


def serve(name: str, settings: ConnectionSettings) -> None:
    stop = stop_event_on_signals()
    SERVICES[name].run(name, settings, stop)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    services = parser.add_subparsers(dest="service", required=True)
    for name, served in SERVICES.items():
        sub = services.add_parser(name, help=f"the {name}")
        add_model_flags(sub, served.settings, skip=served.unused)
        if name == "status":
            sub.add_argument(
                "--host",
                dest="http_host",
                default=argparse.SUPPRESS,
                metavar="HTTP_HOST",
                help="same as --http_host",
            )


def run(ns: argparse.Namespace) -> int:
    cls = SETTINGS[ns.service]
    try:
        serve(ns.service, cls(**model_kwargs(ns, cls)))
    except StartupError as e:
        # The orchestrator restarts the service; the log says why in one line.
        print(f"img2dataset serve {ns.service}: cannot start: {e}", file=sys.stderr)
        return 1
    return 0
