"""`img2dataset reindex`: rebuild the index from the segments alone, into a new or empty index.

    img2dataset reindex --output_folder out                   # out/index.sqlite lost: rebuild it
    img2dataset reindex --output_folder out --index_url sqlite:///out/rebuilt.sqlite
    img2dataset reindex --store_url s3://bucket/ds/ --index_url postgresql://.../new_db

Run it with the appenders stopped. Which objects count and why: `i2d_segments.ops.reindex`.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import Field

from i2d_cli.dataset import DatasetOptions, index_url_of, store_of
from i2d_cli.flags import add_model_flags, model_kwargs
from i2d_cli.progress import Progress
from i2d_segments.connect import open_index
from i2d_segments.index import IndexAccessError, SegmentRow
from i2d_segments.ops.reindex import DEFAULT_TOPIC, ReindexError, rebuild_index
from i2d_segments.store import StoreError

NAME = "reindex"
HELP = "Rebuild the index from the segments' manifests, into a new or empty index."


class ReindexOptions(DatasetOptions):
    append_topic: str = Field(
        DEFAULT_TOPIC, description="Topic of the partitions of unreadable segments."
    )
    workers: int = Field(4, ge=1, description="Segments read at once.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser, ReindexOptions)


def run(ns: argparse.Namespace) -> int:
    opts = ReindexOptions(**model_kwargs(ns, ReindexOptions))
    store = store_of(opts)
    target = index_url_of(opts)
    try:
        index = open_index(target)
    except ValueError as e:
        print(f"img2dataset: {e}", file=sys.stderr)
        return 2
    done = 0
    bar = Progress(None, unit="segments")  # the count is known only once the store is listed

    def progress(seg: SegmentRow) -> None:
        nonlocal done
        done += 1
        bar.update(done)

    try:
        index.migrate()
        report = rebuild_index(
            store,
            index,
            workers=opts.workers,
            topic=opts.append_topic,
            on_segment=progress,
        )
    except ReindexError as e:
        print(f"img2dataset: {e}", file=sys.stderr)
        return 2
    except (IndexAccessError, StoreError) as e:
        print(f"img2dataset: reindex failed: {e}", file=sys.stderr)
        return 1
    finally:
        bar.close()
        index.close()
        store.close()
    for skipped in report.superseded:
        print(f"garbage, not indexed: {skipped.name}: {skipped.reason}")
    for skipped in report.invalid:
        print(f"UNREADABLE, not indexed: {skipped.name}: {skipped.reason}")
    print(
        f"reindexed {report.segments} segments, {report.items} items, {report.samples} samples "
        f"over {report.partitions} partitions into {target}; left out {len(report.superseded)} "
        f"garbage and {len(report.invalid)} unreadable objects"
    )
    return 0 if report.ok else 1
