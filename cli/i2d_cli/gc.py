"""`img2dataset gc`: list, then with `--delete` remove, what no committed segment names.

    img2dataset gc --output_folder out                        # list only (dry run)
    img2dataset gc --output_folder out --delete
    img2dataset gc --store_url s3://bucket/ds/ --index_url postgresql://... --delete

Garbage: segment objects (and their side files) no index commit names, multipart uploads
never completed, claim-check payloads left under staging/; each only once older than its
grace period, since a live writer may still complete or commit it (`i2d_segments.ops.gc`).
"""

from __future__ import annotations

import argparse
import time

from pydantic import Field

from i2d_cli.dataset import DatasetOptions, existing_index_of, store_of
from i2d_cli.flags import add_model_flags, model_kwargs
from i2d_segments.ops.gc import collect_garbage

NAME = "gc"
HELP = "List (and with --delete remove) uncommitted objects, aborted uploads, stale claim checks."

DAY = 24 * 3600.0


class GcOptions(DatasetOptions):
    delete: bool = Field(False, description="Remove what is listed; without it, only list.")
    grace_seconds: float = Field(
        DAY,
        ge=0,
        description="Leave objects and uploads younger than this: a live appender may still "
        "complete or commit them (uploads live at most segment_max_age_seconds, 1 h).",
    )
    staging_grace_seconds: float = Field(
        7 * DAY,
        ge=0,
        description="Leave claim checks of items not stored yet younger than this: their "
        "APPEND record may wait in Kafka up to its retention (7 days by default).",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser, GcOptions)


def _age(started: float, now: float) -> str:
    return f"{(now - started) / 3600:.1f}h"


def run(ns: argparse.Namespace) -> int:
    opts = GcOptions(**model_kwargs(ns, GcOptions))
    store = store_of(opts)
    index = existing_index_of(opts)
    try:
        report = collect_garbage(
            store,
            index,
            grace_seconds=opts.grace_seconds,
            staging_grace_seconds=opts.staging_grace_seconds,
            delete=opts.delete,
        )
    finally:
        index.close()
        store.close()
    now = time.time()
    verb = "deleted" if opts.delete else "garbage"
    for g in report.objects:
        print(f"{verb}: {g.name}  {g.size} bytes  {_age(g.last_modified, now)} old  ({g.reason})")
    for u in report.uploads:
        action = "aborted" if opts.delete else "garbage"
        print(f"{action}: upload of {u.name}  {_age(u.started, now)} old  (incomplete upload)")
    for error in report.errors:
        print(f"ERROR: {error}")
    print(
        f"{len(report.objects)} objects ({report.bytes} bytes) and {len(report.uploads)} "
        f"incomplete uploads {'removed' if opts.delete else 'to remove'}; kept "
        f"{report.young_objects} objects and {report.young_uploads} uploads within their "
        "grace period"
        + ("" if opts.delete or not (report.objects or report.uploads) else "; --delete removes")
    )
    return 1 if report.errors else 0
