"""The appender over the embedded adapters: segments close by count and idle time, items are
deduplicated, failures get sample rows, commits are fenced by epoch, resume starts at the
index's next_offset, and every stored image reads back with one ranged read."""

from __future__ import annotations

import hashlib
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import webdataset
from prometheus_client import REGISTRY

from i2d_appender.open_segment import _SAMPLE_COLUMNS, sample_attrs
from i2d_appender.service import AppenderService
from i2d_appender.settings import AppenderSettings
from i2d_segments.bus import TopicPartition
from i2d_segments.bus.memory import MemoryBus
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.naming import object_name_of
from i2d_segments.reader import SegmentRows
from i2d_segments.records import (
    AppendMeta,
    AppendRecord,
    SampleStatus,
    SegmentClosed,
    encode_append,
)
from i2d_segments.store.local import LocalStore
from tests.append_records import failure, success

TOPIC = "APPEND"


class Harness:
    def __init__(self, tmp_path: Path, bus: MemoryBus | None = None) -> None:
        self.bus = bus if bus is not None else MemoryBus()
        self.bus.create_topic(TOPIC, 1)
        self.bus.create_topic("SEGMENT_CLOSED", 1)
        self.store = LocalStore(tmp_path / "store")
        self.index = SqliteIndex(tmp_path / "index.sqlite")
        self.index.migrate()
        self.producer = self.bus.producer()

    def settings(self, **kw: object) -> AppenderSettings:
        base: dict[str, object] = {
            "number_sample_per_shard": 5,
            "segment_idle_seconds": 3600,
            "poll_timeout_seconds": 0.05,
            "metrics_port": 0,
        }
        base.update(kw)
        return AppenderSettings(**base)  # type: ignore[arg-type]

    def appender(self, **kw: object) -> AppenderService:
        return AppenderService(self.bus, self.store, self.index, self.settings(**kw))

    def send(self, records: list[AppendRecord]) -> None:
        for r in records:
            self.producer.produce(TOPIC, encode_append(r), key=r.key)
        self.producer.flush()

    def closed_events(self) -> list[SegmentClosed]:
        consumer = self.bus.consumer("test-reader")
        consumer.subscribe(["SEGMENT_CLOSED"])
        events = [SegmentClosed.decode(m.value) for m in consumer.poll_batch(1000, 0.2)]
        consumer.close()
        return events


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.index.close()


def run_until(service: AppenderService, done: object, steps: int = 200) -> None:
    service.consumer.subscribe([TOPIC], listener=service)
    for _ in range(steps):
        service.step()
        if callable(done) and done():
            return
    raise AssertionError("condition not reached")


def test_segments_close_by_count_and_read_back(h: Harness) -> None:
    records = [success(i) for i in range(12)]
    h.send(records)
    app = h.appender()
    run_until(app, lambda: len(h.index.segments()) == 2)
    segments = h.index.segments()
    assert [s.first_offset for s in segments] == [0, 5]
    assert [s.last_offset for s in segments] == [4, 9]
    assert h.index.partition(TOPIC, 0).next_offset == 10  # type: ignore[union-attr]
    for r in records[:10]:
        item = SegmentRows(h.store, h.index).item(r.meta.item_id)  # type: ignore[arg-type]
        assert item is not None
        data = h.store.read_range(
            object_name_of(item.segment_id), item.data_offset, item.data_length
        )
        assert data == r.payload
        assert hashlib.sha256(data).hexdigest() == item.data_sha256
    for seg in segments:
        blob = h.store.get(object_name_of(seg.segment_id))
        assert hashlib.sha256(blob).hexdigest() == seg.sha256 and len(blob) == seg.bytes
    # The announcement follows the commit, one per segment.
    assert [e.segment_id for e in h.closed_events()] == [s.segment_id for s in segments]


def test_idle_segment_closes_and_holds_failures(h: Harness, tmp_path: Path) -> None:
    h.send([success(1), failure(2), failure(3)])
    app = h.appender(segment_idle_seconds=0.2)
    run_until(app, lambda: len(h.index.segments()) == 1)
    (seg,) = h.index.segments()
    assert seg.item_count == 1 and seg.sample_count == 3
    failed = SegmentRows(h.store, h.index).sample("f2")
    assert failed is not None and failed.error == "404 Not Found" and failed.item_id is None
    path = tmp_path / "store" / object_name_of(seg.segment_id)
    with tarfile.open(path) as tar:
        names = tar.getnames()
    item_id = success(1).meta.item_id
    # The manifest closes the archive; WebDataset skips it as metadata.
    assert names == [f"{item_id}.jpg", f"{item_id}.json", f"{item_id}.txt", "__segment__"]
    assert [s["__key__"] for s in webdataset.WebDataset(str(path), shardshuffle=False)] == [item_id]


def test_same_content_is_stored_once(h: Harness) -> None:
    same = b"identical bytes"
    a, b = success(1, same), success(2, same)
    h.send([a, b, success(3), success(4), success(5)])
    app = h.appender()
    run_until(app, lambda: len(h.index.segments()) == 1)
    (seg,) = h.index.segments()
    assert seg.item_count == 4 and seg.sample_count == 5
    assert h.index.sample_ref("s1").item_key == h.index.sample_ref("s2").item_key  # type: ignore[union-attr]
    # Later, in another segment: still not written again.
    h.send([success(6, same), *[failure(i) for i in range(4)]])
    run_until(app, lambda: len(h.index.segments()) == 2)
    assert h.index.segments()[1].item_count == 0
    assert SegmentRows(h.store, h.index).sample("s6").item_id == a.meta.item_id  # type: ignore[union-attr]


def test_new_owner_fences_the_old_one_and_resumes_at_next_offset(h: Harness) -> None:
    h.send([success(i) for i in range(7)])
    old = h.appender()
    run_until(old, lambda: len(h.index.segments()) == 1)  # offsets 0..4 committed, 5..6 open
    # A second owner takes the partition (epoch bump) as after a rebalance or a restart.
    new = h.appender(group_id="appender-2")
    run_until(new, lambda: new.owned.get(TopicPartition(TOPIC, 0)) is not None, steps=5)
    # The zombie's commit of its open segment is refused: nothing of it becomes visible.
    old.drain()
    old.step()  # nothing more to read: its open segment closes, the commit is fenced
    assert TopicPartition(TOPIC, 0) not in old.owned
    assert len(h.index.segments()) == 1
    # The new owner re-reads from next_offset = 5 and commits those records itself.
    new.drain()
    run_until(new, lambda: len(h.index.segments()) == 2)
    second = h.index.segments()[1]
    assert (second.first_offset, second.last_offset, second.epoch) == (5, 6, 2)
    assert h.index.sample_ref("s6").segment_id == second.segment_id  # type: ignore[union-attr]


def test_records_deleted_by_retention_before_appending_are_counted_and_passed(
    h: Harness,
) -> None:
    h.send([success(i) for i in range(8)])
    h.bus.truncate_before(TOPIC, 0, 3)
    skipped = REGISTRY.get_sample_value("img2dataset_appender_offsets_skipped_total") or 0.0
    app = h.appender()
    run_until(app, lambda: len(h.index.segments()) == 1)
    (seg,) = h.index.segments()
    assert (seg.first_offset, seg.last_offset) == (3, 7)
    assert h.index.partition(TOPIC, 0).next_offset == 8  # type: ignore[union-attr]
    assert REGISTRY.get_sample_value("img2dataset_appender_offsets_skipped_total") == skipped + 3


def test_run_commits_open_segment_on_stop(h: Harness) -> None:
    h.send([success(1), success(2)])
    app = h.appender()
    stop = threading.Event()
    thread = threading.Thread(target=app.run, args=(stop,))
    thread.start()
    try:
        deadline = 200
        while app.owned.get(TopicPartition(TOPIC, 0)) is None and deadline:
            threading.Event().wait(0.02)
            deadline -= 1
        threading.Event().wait(0.3)
    finally:
        stop.set()
        thread.join(10)
    (seg,) = h.index.segments()
    assert seg.sample_count == 2


def test_after_a_small_poll_the_appender_lets_records_gather_but_not_while_draining(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll that brought fewer than poll_max_records / 8 records is followed by a wait of
    poll_linger_seconds, so a busy fetcher's records reach the appender in batches; a full
    enough poll is not, and neither is any poll while draining (a download's last records
    are committed at once)."""
    waits: list[float] = []
    monkeypatch.setattr("i2d_appender.service.time.sleep", waits.append)
    app = h.appender(poll_max_records=80, poll_linger_seconds=0.25, number_sample_per_shard=100)
    app.consumer.subscribe([TOPIC], listener=app)

    def appended() -> int:
        return sum(s.segment.records for s in app.owned.values() if s.segment is not None)

    h.send([failure(i) for i in range(3)])
    run_until(app, lambda: appended() == 3)
    assert waits == [0.25]
    h.send([failure(i) for i in range(3, 13)])  # 10 = 80 / 8: a batch already
    run_until(app, lambda: appended() == 13)
    assert waits == [0.25]
    app.drain()
    h.send([failure(i) for i in range(13, 15)])
    run_until(app, lambda: len(h.index.segments()) == 1)
    assert waits == [0.25]
    assert h.index.segments()[0].last_offset == 14  # nothing lost on the way


@pytest.mark.parametrize(("drained", "committed"), [(True, 13), (False, 3)])
def test_a_drained_appender_commits_what_was_published_before_its_stop(
    h: Harness, monkeypatch: pytest.MonkeyPatch, drained: bool, committed: int
) -> None:
    """`download` stops its fetcher first, then its appender, whose records live on a bus that
    ends with the process: the answers published meanwhile, which the run counts as fetched,
    are committed too. Not drained (the distributed appender), a stop leaves what was not
    read yet on the topic for the partition's next owner."""
    stop = threading.Event()
    app = h.appender(poll_max_records=80, poll_linger_seconds=0.25, number_sample_per_shard=100)

    def last_answers_then_stop(_seconds: float) -> None:
        # The appender waits after a small poll; the fetcher publishes its last answers and
        # the pipeline stops the appender meanwhile.
        if not stop.is_set():
            h.send([failure(i) for i in range(3, 13)])
            if drained:
                app.drain()
            stop.set()

    monkeypatch.setattr("i2d_appender.service.time.sleep", last_answers_then_stop)
    h.send([failure(i) for i in range(3)])
    app.run(stop)
    (seg,) = h.index.segments()
    assert seg.sample_count == committed


def test_a_sample_rows_attributes_are_its_metadata_but_its_own_columns() -> None:
    # sample_attrs (made per record) is sample_json() without SampleRow's columns, in order.
    metas = [
        AppendMeta(sample_id="s1", url="http://a/1", status=SampleStatus.FAILED_TO_DOWNLOAD),
        AppendMeta(
            sample_id="s2",
            url="http://a/2",
            caption="c",
            key="k2",
            status=SampleStatus.SUCCESS,
            item_id="i",
            width=3,
            height=4,
            original_width=30,
            original_height=40,
            exif='{"a": "b"}',
            hashes={"sha256": "f00", "md5": "ba4"},
            # an extra column never replaces a row's own, nor shows SampleRow's columns twice
            extra={"license": "cc0", "status": "x", "width": 9, "url": "u", "zz": None},
        ),
    ]
    for meta in metas:
        expected = {k: v for k, v in meta.sample_json().items() if k not in _SAMPLE_COLUMNS}
        got = sample_attrs(meta)
        assert list(got.items()) == list(expected.items())
