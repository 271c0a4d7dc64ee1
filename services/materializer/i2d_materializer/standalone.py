"""Run a user's SegmentConsumer as its own program: over Kafka like `img2dataset serve`, or
over an output folder (no bus: catch up on its committed segments and exit)."""

from __future__ import annotations

import logging

from pydantic import Field

from i2d_materializer.consumer import ConsumerRunner, SegmentConsumer
from i2d_segments.connect import index_from, open_kafka_bus, store_from
from i2d_segments.folder import OutputFolder
from i2d_segments.index import Index
from i2d_segments.runtime import Health, HealthServer, stop_event_on_signals
from i2d_segments.settings import ConnectionSettings

log = logging.getLogger(__name__)


class ConsumerSettings(ConnectionSettings):
    """Env `I2D_<FIELD>`; the connection fields are the services' own."""

    group_id: str | None = Field(None, description="Consumer group; default: the consumer's.")
    output_folder: str | None = Field(
        None,
        description="An output folder: catch up over its index (the one it records, or its "
        "_segments/ dataset) and exit.",
    )
    poll_timeout_seconds: float = Field(0.5, gt=0, description="Longest wait of one poll.")


def run_consumer(consumer: SegmentConsumer, settings: ConsumerSettings) -> int:
    """Returns how many segments were handled by the catch-up (folder mode) or 0 (bus mode,
    after SIGTERM/SIGINT stopped it cleanly). A folder that holds no dataset raises
    `i2d_segments.folder.FolderError`."""
    if settings.output_folder is not None:
        folder = OutputFolder.find(settings.output_folder)
        local_index = folder.open_existing_index()
        try:
            return ConsumerRunner(consumer, None, folder.open_store(), local_index).catch_up()
        finally:
            local_index.close()
    stop = stop_event_on_signals()
    health = Health()
    server = (
        HealthServer(health, settings.metrics_host, settings.metrics_port).start()
        if settings.metrics_port
        else None
    )
    bus = open_kafka_bus(settings)
    index: Index | None = None
    try:
        if settings.create_topics:
            bus.create_topics(settings.topic_partitions())
        index = index_from(settings)
        health.add_check("index", lambda: index is not None and index.partitions() is not None)
        runner = ConsumerRunner(
            consumer,
            bus,
            store_from(settings),
            index,
            topic=settings.closed_topic,
            group_id=settings.group_id,
            health=health,
            poll_timeout=settings.poll_timeout_seconds,
        )
        health.started()  # its checks are registered: readiness is theirs from now on
        log.info("consumer %s running", runner.group_id)
        runner.run(stop)
        return 0
    finally:
        if index is not None:
            index.close()
        bus.close()
        if server is not None:
            server.stop()
