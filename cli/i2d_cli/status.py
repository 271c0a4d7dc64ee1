"""`img2dataset status`: the dashboard's figures in the terminal.

img2dataset status --output_folder out          (an embedded output folder)
img2dataset status                              (the distributed settings: I2D_INDEX_URL...)
img2dataset status --output_folder out --json   (/api/status's JSON)
"""

from __future__ import annotations

import argparse
import sys

from i2d_cli.flags import add_model_flags, model_kwargs
from i2d_segments.bus import BusError
from i2d_segments.index import IndexError_
from i2d_segments.store import StoreError
from i2d_status.settings import StatusSettings
from i2d_status.source import StatusSource
from i2d_status.text import render

NAME = "status"
HELP = "Print the pipeline's progress, failures, segments and consumer lag."

# Serving knobs mean nothing to a one-shot summary.
_SKIP = (
    "http_host",
    "http_port",
    "metrics_host",
    "metrics_port",
    "refresh_seconds",
    "history_points",
    "create_topics",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="Print /api/status's JSON instead.")
    add_model_flags(parser, StatusSettings, skip=_SKIP)


def run(ns: argparse.Namespace) -> int:
    settings = StatusSettings(**model_kwargs(ns, StatusSettings))
    try:
        source = StatusSource.open(settings)
    except FileNotFoundError as e:
        print(f"img2dataset: {e}", file=sys.stderr)
        return 2
    try:
        snapshot = source.status()
    except (IndexError_, StoreError, BusError) as e:
        print(f"img2dataset: cannot read the status: {e}", file=sys.stderr)
        return 1
    finally:
        source.close()
    print(snapshot.model_dump_json(indent=1) if ns.json else render(snapshot))
    return 0
