"""/readyz of the pipeline services means "has work it can do": each is ready only while the
group has given it partitions (the appender: owned, i.e. also leased in the index)."""

from __future__ import annotations

from pathlib import Path

from i2d_appender.service import AppenderService
from i2d_appender.settings import AppenderSettings
from i2d_fetcher.service import FetcherService
from i2d_fetcher.settings import FetcherSettings
from i2d_materializer.service import MaterializerService
from i2d_materializer.settings import MaterializerSettings
from i2d_segments.bus import TopicPartition
from i2d_segments.bus.memory import MemoryBus
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.store.local import LocalStore


def test_a_fetcher_is_ready_only_while_it_holds_partitions() -> None:
    fetcher = FetcherService(MemoryBus(), FetcherSettings())
    assert fetcher.health.readiness() == {"partitions_assigned": False}
    tp = TopicPartition("urls", 0)
    fetcher.on_assign([tp])
    assert fetcher.health.readiness() == {"partitions_assigned": True}
    fetcher.on_revoke([tp])
    assert fetcher.health.readiness() == {"partitions_assigned": False}


def test_an_appender_is_ready_once_it_holds_a_lease(tmp_path: Path) -> None:
    index = SqliteIndex(tmp_path / "index.sqlite")
    index.migrate()
    appender = AppenderService(MemoryBus(), LocalStore(tmp_path), index, AppenderSettings())
    try:
        assert appender.health.readiness()["partitions_owned"] is False
        tp = TopicPartition("APPEND", 0)
        appender.on_assign([tp])  # leases the partition in the index
        assert appender.health.readiness() == {
            "partition_loop": True,
            "partitions": True,
            "partitions_owned": True,
        }
        appender.on_lost([tp])
        assert appender.health.readiness()["partitions_owned"] is False
    finally:
        index.close()


def test_a_materializer_is_ready_only_while_it_holds_partitions(tmp_path: Path) -> None:
    index = SqliteIndex(tmp_path / "index.sqlite")
    index.migrate()
    materializer = MaterializerService(
        MemoryBus(), LocalStore(tmp_path), index, MaterializerSettings()
    )
    try:
        assert materializer.health.readiness() == {"partitions_assigned": False}
        materializer.runner.held.on_assign([TopicPartition("SEGMENT_CLOSED", 0)])
        assert materializer.health.readiness() == {"partitions_assigned": True}
    finally:
        index.close()
