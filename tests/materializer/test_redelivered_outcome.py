"""A row delivered again with a different outcome (a fetcher killed before committing its urls
offsets: first a timeout, then a success) moves to the newer segment, and the metadata parquet
files still hold each input row exactly once, with the latest outcome: the appender's commit
records which older segment lost the row, and the materializer writes that segment's parquet
and stats again, even when it learns of the newer segment only after a crash."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from i2d_appender.service import AppenderService
from i2d_appender.settings import AppenderSettings
from i2d_materializer.service import MaterializerService
from i2d_materializer.settings import MaterializerSettings
from i2d_segments.bus.memory import MemoryBus
from i2d_segments.index import SampleRow, SegmentCommit, SegmentMove, SegmentRow
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.naming import sidecar_name
from i2d_segments.records import AppendRecord, SampleStatus, encode_append
from i2d_segments.store.local import LocalStore
from tests.append_records import success
from tests.e2e.signals import parquet_rows
from tests.segment_files import store_segment
from tests.servers.proc import wait_until

APPEND, CLOSED = "APPEND", "SEGMENT_CLOSED"
PER_SEGMENT = 4


def timed_out(n: int) -> AppendRecord:
    """Row `n`'s first outcome: the same row as `success(n)`, which timed out."""
    meta = success(n).meta.model_copy(
        update={
            "status": SampleStatus.FAILED_TO_DOWNLOAD,
            "error_message": "timeout",
            "item_id": None,
            "width": None,
            "height": None,
            "original_width": None,
            "original_height": None,
            "hashes": {},
        }
    )
    return AppendRecord(meta=meta, payload=None)


def materializer_settings() -> MaterializerSettings:
    return MaterializerSettings(metrics_port=0, poll_timeout_seconds=0.02)  # type: ignore[call-arg]


class Pipeline:
    """The appender and the materializer loops on their threads, over the embedded adapters."""

    def __init__(self, folder: Path) -> None:
        self.bus = MemoryBus()
        self.bus.create_topic(APPEND, 1)
        self.bus.create_topic(CLOSED, 1)
        self.store = LocalStore(folder)
        self.index = SqliteIndex.open(folder / "index.sqlite")
        self.producer = self.bus.producer()
        self._threads: list[tuple[threading.Thread, threading.Event]] = []

    def start(self, loop: Callable[[threading.Event], None], name: str) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=loop, args=(stop,), name=name)
        thread.start()
        self._threads.append((thread, stop))

    def appender(self) -> None:
        settings = AppenderSettings(
            number_sample_per_shard=PER_SEGMENT,
            segment_idle_seconds=3600,
            poll_timeout_seconds=0.02,
            metrics_port=0,
        )  # type: ignore[call-arg]
        self.start(AppenderService(self.bus, self.store, self.index, settings).run, "appender")

    def materializer(self) -> MaterializerService:
        service = MaterializerService(self.bus, self.store, self.index, materializer_settings())
        self.start(service.run, "materializer")
        return service

    def send(self, records: list[AppendRecord]) -> None:
        for r in records:
            self.producer.produce(APPEND, encode_append(r), key=r.key)
        self.producer.flush()

    def stop(self) -> None:
        for thread, stop in self._threads:
            stop.set()
            thread.join(30)
        self._threads = []

    def segments(self) -> list[str]:
        return [s.segment_id for s in self.index.segments()]

    def materialized(self, sid: str) -> bool:
        return self.store.exists(sidecar_name(sid, "_stats.json"))

    def rows(self) -> list[dict[str, object]]:
        """Every row of every metadata parquet file in the folder."""
        return parquet_rows(sorted((self.store.root / "segments").rglob("*.parquet")))

    def stats(self, sid: str) -> dict[str, object]:
        return dict(json.loads(self.store.get(sidecar_name(sid, "_stats.json"))))


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path / "out")
    yield p
    p.stop()
    p.index.close()


def check_once_with_the_success(p: Pipeline, first: str, second: str) -> None:
    rows = p.rows()
    ids = [r["sample_id"] for r in rows]
    assert sorted(ids) == sorted(set(ids)), "a row in two parquet files"
    assert len(ids) == 2 * PER_SEGMENT - 1  # s7 counted once
    (row,) = [r for r in rows if r["sample_id"] == "s7"]
    assert row["status"] == "success" and row["error_message"] is None
    assert row["item_id"] == success(7).meta.item_id
    assert p.stats(first)["count"] == PER_SEGMENT - 1
    assert p.stats(first)["failed_to_download"] == 0
    assert p.stats(second)["count"] == PER_SEGMENT
    assert p.stats(second)["successes"] == PER_SEGMENT
    summary = json.loads(p.store.get("manifests/summary.json"))
    assert summary["samples"] == 2 * PER_SEGMENT - 1
    assert summary["status_counts"] == {"success": 2 * PER_SEGMENT - 1}


def test_the_row_is_in_one_parquet_with_its_latest_outcome(pipeline: Pipeline) -> None:
    p = pipeline
    p.appender()
    p.materializer()
    # Segment 1: s7 timed out. Materialized: its parquet lists s7 as a failure.
    p.send([timed_out(7), *(success(n) for n in range(PER_SEGMENT - 1))])
    wait_until(lambda: len(p.segments()) == 1 and p.materialized(p.segments()[0]), 30, "seg 1")
    (first,) = p.segments()
    assert [r["status"] for r in p.rows() if r["sample_id"] == "s7"] == ["failed_to_download"]
    # Segment 2: s7 again (its fetcher died before committing the urls offset), a success.
    p.send([success(7), *(success(n) for n in range(10, 10 + PER_SEGMENT - 1))])
    wait_until(lambda: len(p.segments()) == 2, 30, "seg 2")
    second = p.segments()[1]
    assert p.index.moves_into(second) == [SegmentMove(second, first, 1)]
    wait_until(lambda: p.materialized(second), 30, "seg 2 materialized")
    p.stop()  # the last flush writes the manifests
    check_once_with_the_success(p, first, second)


def test_a_crash_before_the_newer_segment_is_materialized_loses_nothing(
    pipeline: Pipeline,
) -> None:
    """The move is in the index: a materializer that never got the newer segment's event (it
    crashed, the announcement was lost) catches up at start and still rewrites the older one."""
    p = pipeline
    p.appender()
    p.materializer()
    p.send([timed_out(7), *(success(n) for n in range(PER_SEGMENT - 1))])
    wait_until(lambda: len(p.segments()) == 1 and p.materialized(p.segments()[0]), 30, "seg 1")
    (first,) = p.segments()
    p.stop()
    # The newer outcome is committed with no materializer running, and its event is lost.
    p.bus = MemoryBus()
    p.bus.create_topic(APPEND, 1, start_offsets=[PER_SEGMENT])
    p.bus.create_topic(CLOSED, 1)
    p.producer = p.bus.producer()
    p.appender()
    p.send([success(7), *(success(n) for n in range(10, 10 + PER_SEGMENT - 1))])
    wait_until(lambda: len(p.segments()) == 2, 30, "seg 2")
    p.stop()
    second = p.segments()[1]
    assert not p.materialized(second)
    assert [r["status"] for r in p.rows() if r["sample_id"] == "s7"] == ["failed_to_download"]
    # A materializer over a fresh bus: no event at all, only its catch-up at start.
    p.bus = MemoryBus()
    p.bus.create_topic(CLOSED, 1)
    service = p.materializer()
    wait_until(lambda: p.materialized(second), 30, "the catch-up")
    p.stop()
    assert service.reconcile() == 0
    check_once_with_the_success(p, first, second)


def test_a_move_while_the_older_segment_is_written_is_not_lost(tmp_path: Path) -> None:
    """Distributed mode: one materializer writes segment 1's files from rows read just before
    segment 2 took s7, while another handles segment 2 (rewriting segment 1) in between. The
    first notices the move recorded meanwhile and writes segment 1 again."""
    index = SqliteIndex.open(tmp_path / "index.sqlite")
    lease = index.acquire_partition(APPEND, 0, "test")
    first, second = "p00000/00000000000000000000-e1", "p00000/00000000000000000004-e1"
    objects = LocalStore(tmp_path / "out")

    def commit(sid: str, offset: int, rows: list[SampleRow]) -> None:
        segment = SegmentRow(
            sid, APPEND, 0, offset, offset + 3, lease.epoch, "file:///x", 0, 4, 1024, "s" * 64, 1.0
        )
        c = SegmentCommit(lease.epoch, segment, [], rows, offset + 4)
        index.commit_segment(store_segment(objects, c))

    def row(sample_id: str, sid: str, status: str = "failed_to_download") -> SampleRow:
        error = None if status == "success" else "timeout"
        return SampleRow(sample_id, f"http://127.0.0.1/{sample_id}", None, status, error, None, sid)

    commit(first, 0, [row("s7", first), *(row(f"a{n}", first) for n in range(3))])
    store = LocalStore(tmp_path / "out")
    other = MaterializerService(None, store, index, materializer_settings())

    class Interleaved(LocalStore):
        def put(self, name: str, data: bytes) -> None:
            if name == sidecar_name(first, ".parquet") and index.segment(second) is None:
                # Between this writer's read of segment 1 and its write: segment 2 commits
                # and the other materializer handles it (segment 1 rewritten without s7).
                commit(
                    second,
                    4,
                    [row("s7", second, "success"), *(row(f"b{n}", second) for n in range(3))],
                )
                assert other.materialize(second)
            super().put(name, data)

    service = MaterializerService(
        None, Interleaved(tmp_path / "out"), index, materializer_settings()
    )
    try:
        assert service.materialize(first)
        rows = parquet_rows(sorted((tmp_path / "out" / "segments").rglob("*.parquet")))
        assert sorted(r["sample_id"] for r in rows) == ["a0", "a1", "a2", "b0", "b1", "b2", "s7"]
        assert [r["status"] for r in rows if r["sample_id"] == "s7"] == ["success"]
    finally:
        index.close()
