"""`img2dataset serve <service>`: one service over Kafka, the store and the index, with
/metrics, /healthz and /readyz, stopping cleanly on SIGTERM (work in flight is finished and
committed, offsets are stored)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from i2d_appender.settings import AppenderSettings
from i2d_cli.flags import add_model_flags, model_kwargs
from i2d_fetcher.settings import FetcherSettings
from i2d_materializer.settings import MaterializerSettings
from i2d_segments.connect import index_from, open_kafka_bus, store_from
from i2d_segments.runtime import Health, HealthServer, stop_event_on_signals
from i2d_segments.settings import ConnectionSettings
from i2d_status.settings import StatusSettings

# The services themselves are imported by `serve` for the one it runs: importing a service
# registers its metrics, and each service's /metrics should show its own families only.

log = logging.getLogger(__name__)

NAME = "serve"
HELP = "Run one service over Kafka, S3 and Postgres."

SETTINGS: dict[str, type[ConnectionSettings]] = {
    "fetcher": FetcherSettings,
    "appender": AppenderSettings,
    "materializer": MaterializerSettings,
    "status": StatusSettings,
}


# Shared connection settings a service has no use for: not offered as its flags.
UNUSED = {
    # one port (http_port) for the dashboard, API, /metrics and health; it creates no topic
    "status": (
        "metrics_host",
        "metrics_port",
        "create_topics",
        "urls_partitions",
        "append_partitions",
        "closed_partitions",
        "kafka_max_message_bytes",
    ),
}


def serve(name: str, settings: ConnectionSettings) -> None:
    stop = stop_event_on_signals()
    if isinstance(settings, StatusSettings):
        from i2d_status.server import serve_status

        # Read-only, one port for the dashboard, API, /metrics and health; no topic creation.
        serve_status(settings, stop)
        return
    health = Health()
    server = (
        HealthServer(health, settings.metrics_host, settings.metrics_port).start()
        if settings.metrics_port
        else None
    )
    bus = open_kafka_bus(settings)
    service: Any
    try:
        try:
            if settings.create_topics:
                bus.create_topics(settings.topic_partitions())
            store = store_from(settings)
            if isinstance(settings, FetcherSettings):
                from i2d_fetcher.service import FetcherService

                service = FetcherService(bus, settings, store=store, health=health)
            else:
                index = index_from(settings)
                health.add_check("index", lambda: index.partitions() is not None)
                if isinstance(settings, AppenderSettings):
                    from i2d_appender.service import AppenderService

                    service = AppenderService(bus, store, index, settings, health=health)
                elif isinstance(settings, MaterializerSettings):
                    from i2d_materializer.service import MaterializerService

                    service = MaterializerService(bus, store, index, settings, health=health)
                else:
                    raise ValueError(f"unknown service {name!r}")
        except Exception as e:  # a dependency missing at start: one line, and the exit code
            log.debug("start-up failed", exc_info=True)
            raise StartupError(" ".join(str(e).split()) or type(e).__name__) from e
        # Its checks are registered: readiness is theirs from now on (503 until then).
        health.started()
        log.info("%s serving (owner %s)", name, settings.owner)
        service.run(stop)
        log.info("%s stopped cleanly", name)
    finally:
        bus.close()
        if server is not None:
            server.stop()


class StartupError(Exception):
    """Kafka, the store or the index cannot be reached, or is not as configured, at start."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    services = parser.add_subparsers(dest="service", required=True)
    for name, cls in SETTINGS.items():
        sub = services.add_parser(name, help=f"the {name}")
        add_model_flags(sub, cls, skip=UNUSED.get(name, ()))
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
