"""Run a user's SegmentConsumer as its own program: over Kafka like `img2dataset serve`, or
over an output folder (no bus: catch up on its committed segments and exit)."""

from __future__ import annotations

from pydantic import Field

from i2d_segments.boot import Wiring, run_service
from i2d_segments.consumer.runner import ConsumerRunner, SegmentConsumer
from i2d_segments.folder import OutputFolder
from i2d_segments.settings import ConnectionSettings


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
    `i2d_segments.folder.FolderError`; Kafka, the store or the index out of reach at start
    raises `i2d_segments.boot.StartupError`. Over the bus it boots as `img2dataset serve` does
    (`i2d_segments.boot.run_service`): /metrics, /healthz and /readyz on `metrics_port`."""
    if settings.output_folder is not None:
        folder = OutputFolder.find(settings.output_folder)
        local_index = folder.open_existing_index()
        try:
            return ConsumerRunner(consumer, None, folder.open_store(), local_index).catch_up()
        finally:
            local_index.close()
    group_id = settings.group_id or consumer.group_id

    def runner(s: ConsumerSettings, wiring: Wiring) -> ConsumerRunner:
        return ConsumerRunner(
            consumer,
            wiring.bus,
            wiring.store,
            wiring.index,
            topic=s.closed_topic,
            group_id=group_id,
            health=wiring.health,
            poll_timeout=s.poll_timeout_seconds,
        )

    run_service(f"consumer {group_id}", settings, runner)
    return 0
