"""`img2dataset enqueue`: write a url list to the `urls` topic, one record per row.

    img2dataset enqueue --url_list urls.txt --output_folder data/     (a folder's durable bus)
    img2dataset enqueue --url_list urls.txt                           (Kafka: I2D_KAFKA_...)
    img2dataset enqueue --url_list urls.txt --output_folder data/ --wait   (until recorded)

Rows go out in the topic's own format (a bare URL, or a JSON object when the row has more
than a URL), keyed by sample id. Each row carries its identity (its `key`, else its place in
its list: `sample_id`), so enqueuing the same list again is the same samples: rows the index
already records are not sent again (with --retry_failed, failed ones are). The list's shards
are numbered dataset-wide in the index, so img2dataset's `key` column stays unique across the
lists enqueued into one dataset.

It returns once every row sent is durable on the bus (whether a service runs or not), or with
`--wait` once every one is recorded in the index (enqueue_wait.py).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pydantic import Field

from i2d_cli.errors import InputError
from i2d_cli.flags import add_model_flags, model_kwargs
from i2d_cli.inputs import carried_columns, count_rows
from i2d_cli.options import UrlListOptions
from i2d_cli.progress import Progress
from i2d_cli.resume import rows_to_send
from i2d_fetcher.options import FetchOptions
from i2d_segments.bus import Bus, BusError, Message
from i2d_segments.connect import index_from, open_kafka_bus
from i2d_segments.folder import FolderError, OutputFolder, create_urls_topic
from i2d_segments.index import Index, IndexAccessError
from i2d_segments.records import UnparsedRow, UrlRow, encode_url_row
from i2d_segments.settings import ConnectionSettings
from i2d_segments.signals import stop_event_on_signals

NAME = "enqueue"
HELP = "Add a url list to a service's folder (--output_folder) or to the Kafka urls topic."


class EnqueueSettings(ConnectionSettings, UrlListOptions):
    output_folder: str | None = Field(
        None,
        description="An output folder served by `img2dataset service`: the rows go to its "
        "durable bus and are checked against its index (no Kafka, no --index_url).",
    )
    wait: bool = Field(
        False, description="Return once every row sent is recorded in the index, not before."
    )
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
    fetcher_group: str = Field(
        "fetcher", description="The fetchers' group on `urls` (what --wait watches)."
    )


SKIP_BATCH = 2_000  # rows looked up in the index at once


@dataclass
class Sent:
    """Where the rows sent landed: per partition, the first offset and one past the last."""

    first: dict[int, int] = field(default_factory=dict)
    end: dict[int, int] = field(default_factory=dict)
    rows: int = 0
    failed: list[BusError] = field(default_factory=list)

    def delivered(self, err: BusError | None, msg: Message | None) -> None:
        if err is not None or msg is None:
            self.failed.append(err or BusError("no delivery report"))
            return
        self.first[msg.partition] = min(self.first.get(msg.partition, msg.offset), msg.offset)
        self.end[msg.partition] = max(self.end.get(msg.partition, 0), msg.offset + 1)


def enqueue(
    settings: EnqueueSettings, index: Index, bus: Bus, stop: threading.Event | None = None
) -> Sent:
    """Send the list's rows not recorded yet; returns where they landed. Raises InputError
    for a list damaged part way (after sending what came before it) and BusError when the
    bus did not take every row."""
    stop = stop or threading.Event()
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
    sent = Sent()
    skipped = 0
    progress = Progress(count_rows(settings.url_list, settings.input_format), settings.progress)
    batch: list[UrlRow | UnparsedRow] = []

    def send() -> None:
        nonlocal skipped
        rows = rows_to_send(index, batch, settings.retry_failed)
        skipped += len(batch) - len(rows)
        progress.skipped(len(batch) - len(rows))
        for row in rows:
            producer.produce(
                settings.urls_topic,
                encode_url_row(row),
                key=row.sample_id.encode(),
                on_delivery=sent.delivered,
            )
        sent.rows += len(rows)
        batch.clear()
        producer.poll(0)
        progress.update(sent.rows)

    try:
        for row in reader.rows(settings.url_list, index.allocate_shard):
            if stop.is_set():
                break
            batch.append(row)
            if len(batch) >= SKIP_BATCH:
                send()
        if batch and not stop.is_set():
            send()
    except InputError as e:  # damaged part way: what was read before it is delivered
        if batch:
            send()
        producer.flush()
        raise InputError(f"{e}; the {sent.rows} rows before it are enqueued") from e
    finally:
        progress.close()
        producer.flush()
        producer.close()
    if sent.failed:
        raise BusError(f"{len(sent.failed)} of {sent.rows} rows were not taken: {sent.failed[0]}")
    already = f", {skipped} rows skipped (already recorded)" if skipped else ""
    stopped = " (interrupted: enqueue the same list again to add the rest)" if stop.is_set() else ""
    print(
        f"enqueued {sent.rows} rows to {settings.urls_topic} in "
        f"{time.monotonic() - started:.1f}s{already}{stopped}",
        file=sys.stderr,
    )
    return sent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # It writes to the bus and reads the index (rows recorded, the lists' shards): no store,
    # metrics port or owner identity.
    unused = ("store_url", "s3_endpoint_url", "s3_region", "metrics_host")
    add_model_flags(parser, EnqueueSettings, skip=(*unused, "metrics_port", "owner"))


@contextmanager
def _destination(settings: EnqueueSettings) -> Iterator[tuple[Index, Bus, OutputFolder | None]]:
    """The index and bus the rows go to: an output folder's, or Kafka's and --index_url's."""
    if settings.output_folder is not None:
        folder = OutputFolder.at(settings.output_folder)
        local_index = folder.open_index()
        try:
            local_bus = folder.open_bus()
            try:
                create_urls_topic(local_bus, settings)
                yield local_index, local_bus, folder
            finally:
                local_bus.close()
        finally:
            local_index.close()
        return
    try:
        index = index_from(settings)
    except IndexAccessError as e:
        # The index says which rows are recorded and numbers each list's shards: without it
        # a list would be sent again whole, under keys another list may already hold.
        raise _Refused(
            "enqueue reads the index (--index_url, I2D_INDEX_URL) to skip rows already "
            f"recorded and number the list's keys: {str(e).splitlines()[0]}"
        ) from e
    try:
        bus = open_kafka_bus(settings)
        try:
            if settings.create_topics:
                bus.create_topics(settings.topic_partitions())
            yield index, bus, None
        finally:
            bus.close()
    finally:
        index.close()


class _Refused(Exception):
    """A one-line reason this enqueue cannot run."""


def run(ns: argparse.Namespace) -> int:
    from i2d_cli.enqueue_wait import wait_recorded

    settings = EnqueueSettings(**model_kwargs(ns, EnqueueSettings))
    stop = stop_event_on_signals()
    try:
        with _destination(settings) as (index, bus, folder):
            sent = enqueue(settings, index, bus, stop)
            if stop.is_set():
                return 130
            if settings.wait and not wait_recorded(settings, index, bus, sent, folder, stop):
                return 130
    except _Refused as e:
        print(f"img2dataset: {e}", file=sys.stderr)
        return 1
    except (BusError, FolderError, IndexAccessError) as e:
        print(f"img2dataset: enqueue: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return 0
