"""The materializer writes img2dataset's metadata parquet and stats for a committed segment,
identically however many times the event arrives, and catches up on segments it missed."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from i2d_materializer.service import MaterializerService
from i2d_materializer.settings import MaterializerSettings
from i2d_segments.bus.memory import MemoryBus
from i2d_segments.index import ItemRow, SampleRow, SegmentCommit, SegmentRow
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.records import SegmentClosed
from i2d_segments.store.local import LocalStore
from tests.segment_files import store_segment

SEG = "p00000/00000000000000000000-e1"


def commit_segment(
    index: SqliteIndex, store: LocalStore, segment_id: str = SEG, first: int = 0
) -> None:
    lease = index.acquire_partition("APPEND", 0, "test")
    samples = [
        SampleRow(
            sample_id="a",
            url="http://127.0.0.1/a.jpg",
            caption="a cat",
            status="success",
            error=None,
            item_id="i" * 64,
            segment_id=segment_id,
            attrs={
                "key": "000010005",
                "width": 256,
                "height": 256,
                "original_width": 640,
                "original_height": 480,
                "exif": "{}",
                "sha256": "i" * 64,
                "license": "cc-by",
            },
            updated_at=1000.0,
        ),
        SampleRow(
            sample_id="b",
            url="http://127.0.0.1/b.jpg",
            caption=None,
            status="failed_to_download",
            error="404 Not Found",
            item_id=None,
            segment_id=segment_id,
            attrs={"key": "b", "license": None},
            updated_at=1001.0,
        ),
    ]
    item = ItemRow("i" * 64, segment_id, 512, 10, "jpg", "image/jpeg", 256, 256, 640, 480)
    commit = store_segment(
        store,
        SegmentCommit(
            epoch=lease.epoch,
            segment=SegmentRow(
                segment_id,
                "APPEND",
                0,
                first,
                first + 1,
                lease.epoch,
                "file:///x",
                1,
                2,
                2048,
                "s" * 64,
                999.0,
            ),
            items=[item],
            samples=samples,
            next_offset=first + 2,
        ),
    )
    index.commit_segment(commit)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[MemoryBus, LocalStore, SqliteIndex]]:
    bus = MemoryBus()
    bus.create_topic("SEGMENT_CLOSED", 1)
    index = SqliteIndex(tmp_path / "index.sqlite")
    index.migrate()
    yield bus, LocalStore(tmp_path / "store"), index
    index.close()


def settings() -> MaterializerSettings:
    return MaterializerSettings(metrics_port=0, poll_timeout_seconds=0.05)  # type: ignore[call-arg]


def test_metadata_and_stats_follow_img2dataset(
    parts: tuple[MemoryBus, LocalStore, SqliteIndex],
) -> None:
    bus, store, index = parts
    commit_segment(index, store)
    service = MaterializerService(bus, store, index, settings())
    assert service.materialize(SEG)
    table = pq.read_table(io.BytesIO(store.get(f"segments/{SEG}.parquet")))
    rows = {r["url"]: r for r in table.to_pylist()}
    ok = rows["http://127.0.0.1/a.jpg"]
    assert ok["status"] == "success" and ok["key"] == "000010005" and ok["width"] == 256
    assert ok["original_width"] == 640 and ok["sha256"] == "i" * 64 and ok["license"] == "cc-by"
    bad = rows["http://127.0.0.1/b.jpg"]
    assert bad["status"] == "failed_to_download" and bad["error_message"] == "404 Not Found"
    stats = json.loads(store.get(f"segments/{SEG}_stats.json"))
    assert stats["count"] == 2 and stats["successes"] == 1 and stats["failed_to_download"] == 1
    assert stats["status_dict"] == {"404 Not Found": 1, "success": 1}
    # Idempotent: the same event again gives the same bytes.
    first = store.get(f"segments/{SEG}.parquet")
    assert service.materialize(SEG)
    assert store.get(f"segments/{SEG}.parquet") == first


def test_events_drive_it_and_reconcile_catches_up(
    parts: tuple[MemoryBus, LocalStore, SqliteIndex],
) -> None:
    bus, store, index = parts
    commit_segment(index, store)
    service = MaterializerService(bus, store, index, settings())
    assert service.reconcile() == 1  # committed, never announced (e.g. a crash)
    assert service.reconcile() == 0
    second = "p00000/00000000000000000002-e1"
    commit_segment(index, store, second, first=2)
    event = SegmentClosed(
        segment_id=second,
        uri="file:///x",
        topic="APPEND",
        partition=0,
        first_offset=2,
        last_offset=3,
        epoch=1,
        item_count=1,
        sample_count=2,
        bytes=2048,
        sha256="s" * 64,
        created_at=999.0,
    )
    producer = bus.producer()
    producer.produce("SEGMENT_CLOSED", event.encode(), key=second.encode())
    producer.flush()
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,))
    thread.start()
    try:
        for _ in range(100):
            if store.exists(f"segments/{second}_stats.json"):
                break
            stop.wait(0.05)
    finally:
        stop.set()
        thread.join(10)
    assert store.exists(f"segments/{second}.parquet")
    lag = bus.lag("materializer", "SEGMENT_CLOSED")
    assert [p.committed for p in lag] == [1]
