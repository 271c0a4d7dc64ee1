"""`img2dataset status`: the dashboard's figures in the terminal, or the dashboard itself.

img2dataset status out                                  (an output folder; also --output_folder)
img2dataset status out --json                           (/api/status's JSON)
img2dataset status out --port 8080 [--host 0.0.0.0]     (serve the dashboard until SIGTERM/Ctrl-C)
img2dataset status                                      (the distributed settings: I2D_INDEX_URL...)

The folder is any output folder: a download's (whatever its --index_name or --output_format) or
one `img2dataset service` runs on, whose durable bus gives the consumer lag. `--port` serves the
dashboard, the REST API (/api/*), /metrics, /healthz and /readyz on that port, as `img2dataset
serve status` does (`--port 0`: a free one, logged with the URL).
"""

from __future__ import annotations

import argparse
import logging
import sys

from i2d_cli.flags import add_model_flags, model_kwargs
from i2d_segments.bus import BusError
from i2d_segments.index import IndexAccessError
from i2d_segments.store import StoreError
from i2d_status.settings import StatusSettings
from i2d_status.source import StatusSource
from i2d_status.text import render

log = logging.getLogger(__name__)

NAME = "status"
HELP = "Print the pipeline's progress, failures, segments and consumer lag, or serve its dashboard."

# Knobs of the services' own ports and of topic creation: status has one port (--port) and
# creates nothing.
_SKIP = ("metrics_host", "metrics_port", "create_topics")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folder",
        nargs="?",
        default=None,
        metavar="OUTPUT_FOLDER",
        help="The output folder (same as --output_folder); none: the distributed settings.",
    )
    parser.add_argument("--json", action="store_true", help="Print /api/status's JSON instead.")
    parser.add_argument(
        "--port",
        dest="http_port",
        type=int,
        default=argparse.SUPPRESS,
        metavar="PORT",
        help="Serve the dashboard, /api/*, /metrics, /healthz and /readyz on this port until "
        "SIGTERM or Ctrl-C (0: a free port, logged) instead of printing once.",
    )
    parser.add_argument(
        "--host",
        dest="http_host",
        default=argparse.SUPPRESS,
        metavar="HOST",
        help="Bind address with --port (default 127.0.0.1: this machine only; 0.0.0.0 for "
        "every interface).",
    )
    add_model_flags(parser, StatusSettings, skip=_SKIP)


def _settings(ns: argparse.Namespace) -> StatusSettings:
    kwargs = model_kwargs(ns, StatusSettings)
    if ns.folder is not None:
        given = kwargs.get("output_folder")
        if given is not None and given != ns.folder:
            raise _UsageError(f"two output folders: {ns.folder} and --output_folder {given}")
        kwargs["output_folder"] = ns.folder
    return StatusSettings(**kwargs)


class _UsageError(Exception):
    pass


def run(ns: argparse.Namespace) -> int:
    serving = "http_port" in vars(ns)
    try:
        if "http_host" in vars(ns) and not serving:
            raise _UsageError("--host is where the dashboard is served: give --port too")
        if serving and ns.json:
            raise _UsageError("--json prints the figures once, --port serves them: not both")
        settings = _settings(ns)
    except _UsageError as e:
        print(f"img2dataset status: {e}", file=sys.stderr)
        return 2
    return serve(settings) if serving else print_once(settings, as_json=ns.json)


def print_once(settings: StatusSettings, *, as_json: bool) -> int:
    try:
        source = StatusSource.open(settings)
    except FileNotFoundError as e:
        print(f"img2dataset: {e}", file=sys.stderr)
        return 2
    try:
        snapshot = source.status()
    except (IndexAccessError, StoreError, BusError) as e:
        print(f"img2dataset: cannot read the status: {e}", file=sys.stderr)
        return 1
    finally:
        source.close()
    print(snapshot.model_dump_json(indent=1) if as_json else render(snapshot))
    return 0


def serve(settings: StatusSettings) -> int:
    """The dashboard, API, /metrics and health on the settings' port until SIGTERM/SIGINT."""
    from i2d_segments.runtime import stop_event_on_signals
    from i2d_status.app import StatusApp
    from i2d_status.server import StatusServer

    # First: a signal while the folder is opened stops the command, not the process mid-way.
    stop = stop_event_on_signals()
    try:
        source = StatusSource.open(settings)
    except FileNotFoundError as e:
        print(f"img2dataset: {e}", file=sys.stderr)
        return 2
    try:
        host, port = settings.http_host, settings.http_port
        try:
            server = StatusServer(StatusApp(source), host, port).start()
        except OSError as e:
            print(f"img2dataset: cannot serve on {host}:{port}: {e}", file=sys.stderr)
            return 1
        where = settings.output_folder or "the distributed deployment"
        log.info(
            "status of %s (%s) on http://%s:%d/ (SIGTERM or Ctrl-C stops)",
            where,
            source.mode,
            host,
            server.port,
        )
        try:
            stop.wait()
        finally:
            server.stop()
        log.info("status stopped")
        return 0
    finally:
        source.close()
