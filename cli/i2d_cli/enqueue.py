"""`img2dataset enqueue`: write a url list to the `urls` topic, one record per row.

Rows go out in the topic's own format (a bare URL, or a JSON object when the row has more
than a URL), keyed by sample id. Each row carries its identity (its `key`, else its place in
its list: `sample_id`), so enqueuing the same list again is the same samples: rows the index
already records are not sent again (with --retry_failed, failed ones are). The list's shards
are numbered dataset-wide in the index, so img2dataset's `key` column stays unique across the
lists enqueued into one dataset.
"""

from __future__ import annotations

import argparse
import sys
import time

from pydantic import Field

from i2d_cli.errors import InputError
from i2d_cli.flags import add_model_flags, model_kwargs
from i2d_cli.inputs import carried_columns, count_rows
from i2d_cli.options import UrlListOptions
from i2d_cli.progress import Progress
from i2d_cli.resume import rows_to_send
from i2d_fetcher.options import FetchOptions
from i2d_segments.connect import index_from, open_kafka_bus
from i2d_segments.index import Index, IndexError_
from i2d_segments.records import UnparsedRow, UrlRow, encode_url_row
from i2d_segments.settings import ConnectionSettings

NAME = "enqueue"
HELP = "Write a url list to the Kafka urls topic."


class EnqueueSettings(ConnectionSettings, UrlListOptions):
    number_sample_per_shard: int = Field(
        10000,
        ge=1,
        description="Numbers the rows' img2dataset `key` metadata column as img2dataset's "
        "shards of this many rows would (the appender sizes the segments).",
    )
    # The fetchers' options that read input columns: the columns must travel with the rows.
    bbox_col: str | None = Field(None, description="Column of boxes to blur (bbox_col).")
    verify_hash: list[str] | None = Field(
        None, description="[column, hash type]: the column is carried (verify_hash)."
    )


SKIP_BATCH = 2_000  # rows looked up in the index at once


def enqueue(settings: EnqueueSettings) -> int:
    """Enqueue the list; returns how many rows were sent."""
    index = index_from(settings)
    try:
        return _enqueue(settings, index)
    finally:
        index.close()


def _enqueue(settings: EnqueueSettings, index: Index) -> int:
    bus = open_kafka_bus(settings)
    try:
        if settings.create_topics:
            bus.create_topics(settings.topic_partitions())
        producer = bus.producer()
        carried = FetchOptions(
            bbox_col=settings.bbox_col,
            verify_hash=tuple(settings.verify_hash) if settings.verify_hash else None,
        )
        reader = settings.row_reader(
            carried_columns(settings.save_additional_columns, carried),
            settings.number_sample_per_shard,
        )
        started = time.monotonic()
        count = skipped = 0
        progress = Progress(count_rows(settings.url_list, settings.input_format), settings.progress)
        batch: list[UrlRow | UnparsedRow] = []

        def send() -> None:
            nonlocal count, skipped
            rows = rows_to_send(index, batch, settings.retry_failed)
            skipped += len(batch) - len(rows)
            progress.skipped(len(batch) - len(rows))
            for row in rows:
                producer.produce(
                    settings.urls_topic, encode_url_row(row), key=row.sample_id.encode()
                )
            count += len(rows)
            batch.clear()
            producer.poll(0)
            progress.update(count)

        try:
            for row in reader.rows(settings.url_list, index.allocate_shard):
                batch.append(row)
                if len(batch) >= SKIP_BATCH:
                    send()
            if batch:
                send()
            producer.flush()
            progress.update(count)
        except InputError as e:  # damaged part way: what was read before it is delivered
            if batch:
                send()
            producer.flush()
            raise InputError(f"{e}; the {count} rows before it are enqueued") from e
        finally:
            progress.close()
        producer.close()
        elapsed = time.monotonic() - started
        already = f", {skipped} rows skipped (already recorded)" if skipped else ""
        print(
            f"enqueued {count} rows to {settings.urls_topic} in {elapsed:.1f}s{already}",
            file=sys.stderr,
        )
        return count
    finally:
        bus.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # It writes to Kafka and reads the index (rows recorded, the lists' shards): no store,
    # metrics port or owner identity.
    unused = ("store_url", "s3_endpoint_url", "s3_region", "metrics_host")
    add_model_flags(parser, EnqueueSettings, skip=(*unused, "metrics_port", "owner"))


def run(ns: argparse.Namespace) -> int:
    settings = EnqueueSettings(**model_kwargs(ns, EnqueueSettings))
    try:
        index = index_from(settings)
    except IndexError_ as e:
        # The index says which rows are recorded and numbers each list's shards: without it
        # a list would be sent again whole, under keys another list may already hold.
        print(
            f"img2dataset: enqueue reads the index (--index_url, I2D_INDEX_URL) to skip rows "
            f"already recorded and number the list's keys: {str(e).splitlines()[0]}",
            file=sys.stderr,
        )
        return 1
    try:
        _enqueue(settings, index)
    finally:
        index.close()
    return 0
