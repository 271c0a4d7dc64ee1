"""The fetch worker processes as the fetcher service runs them: rows downloaded, processed and
encoded in a worker come back as the APPEND records the main process produces, with the
metric figures; the per-host limits are split across the workers; a worker killed mid-run
costs only its rows in flight (each still gets exactly one record) and is replaced; a stop
leaves no worker process behind, and the records it had polled and not started come again."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from i2d_fetcher.outcome import Outcome
from i2d_fetcher.pool.config import WorkerConfig, capacity, share, worker_options
from i2d_fetcher.pool.supervisor import WORKER_DIED, FetchWorkers
from i2d_fetcher.service import FetcherService
from i2d_fetcher.settings import FetcherSettings
from i2d_imageserver import ImageServer
from i2d_segments.bus.memory import MemoryBus
from i2d_segments.records import AppendRecord, SampleStatus, UrlRow, decode_append
from tests.fetcher.helpers import IMAGE_SERVER_NETWORKS, fresh_seed, local_options, served


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def bus_with_urls(urls: list[str]) -> MemoryBus:
    """An in-process bus whose `urls` topic holds `urls`, one record each."""
    bus = MemoryBus()
    bus.create_topic("urls", 1)
    bus.create_topic("APPEND", 1)
    producer = bus.producer()
    for url in urls:
        producer.produce("urls", url.encode())
    producer.flush()
    return bus


def worker_settings(*, processes_count: int, thread_count: int) -> FetcherSettings:
    return FetcherSettings(
        processes_count=processes_count,
        thread_count=thread_count,
        allowed_networks=IMAGE_SERVER_NETWORKS,
        image_size=64,
        metrics_port=0,
        create_topics=False,
    )


@contextlib.contextmanager
def running(service: FetcherService) -> Iterator[None]:
    """The service's loop on a thread for the block, then stopped as SIGTERM stops it."""
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,))
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def appended(bus: MemoryBus) -> list[AppendRecord]:
    """The APPEND records the fetcher produced, read by a group of their own."""
    consumer = bus.consumer("check")
    consumer.subscribe(["APPEND"])
    return [decode_append(m.value) for m in consumer.poll_batch(1000, 1.0)]


def assert_each_url_stored_once_and_committed(
    bus: MemoryBus, urls: list[str], settings: FetcherSettings
) -> None:
    """Every url has exactly one APPEND record, a success, and the group committed them all."""
    records = appended(bus)
    assert Counter(r.meta.url for r in records) == Counter(urls)
    assert {r.meta.status for r in records} == {SampleStatus.SUCCESS}
    assert [p.committed for p in bus.lag(settings.group_id, "urls")] == [len(urls)]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_workers_return_encoded_records_and_their_figures(image_server: ImageServer) -> None:
    seed = fresh_seed()
    original = served(image_server, seed, 500, 300)
    values = [
        image_server.url_for(seed, 500, 300).encode(),
        json.dumps(
            {"url": image_server.url_for(fresh_seed(), 300, 200), "caption": "c", "key": "k1"}
        ).encode(),
        image_server.url_for(fresh_seed(), 300, 200, fault="notimage").encode(),
        image_server.url_for(fresh_seed(), 300, 200, fault="missing").encode(),
        b'{"url": 3}',
        b"   ",
    ]
    config = WorkerConfig(options=local_options(image_size=64), concurrency=8)

    async def main() -> list[Outcome | None]:
        workers = FetchWorkers(config, 2)
        await workers.start()
        try:
            assert len(workers.pids()) == 2
            return list(await asyncio.gather(*(workers.fetch(v) for v in values)))
        finally:
            await workers.close()

    outcomes = asyncio.run(main())
    assert outcomes[-1] is None  # a blank line: nothing to report
    done = [o for o in outcomes if o is not None]
    assert len(done) == len(values) - 1
    records: list[AppendRecord] = []
    for outcome in done:
        record = decode_append(outcome.value)  # encoded in the worker, produced as it is
        assert outcome.key == record.key
        assert outcome.status is record.meta.status
        assert outcome.payload_size == len(record.payload or b"")
        records.append(record)
    ok, captioned, html, missing, malformed = records
    assert ok.meta.status is SampleStatus.SUCCESS
    assert ok.meta.item_id == hashlib.sha256(original).hexdigest()  # hashed in the worker
    assert ok.meta.hashes == {"sha256": ok.meta.item_id}
    assert (ok.meta.width, ok.meta.height) == (64, 64) and ok.payload
    assert captioned.meta.status is SampleStatus.SUCCESS
    assert (captioned.meta.caption, captioned.meta.key) == ("c", "k1")
    assert html.meta.status is SampleStatus.FAILED_TO_RESIZE
    assert html.meta.error_message == "not an image: unrecognized format"
    assert missing.meta.error_message == "HTTP Error 404: Not Found"
    assert malformed.meta.error_message is not None
    assert malformed.meta.error_message.startswith("malformed row:")
    stats = [o.stats for o in done]
    assert stats[0].downloaded_bytes == len(original)
    assert stats[0].fetch_seconds is not None and stats[0].resize_seconds is not None
    assert stats[3].fetch_seconds is not None and stats[3].resize_seconds is None  # a 404
    assert stats[4].fetch_seconds is None  # nothing was fetched


def test_per_host_limits_are_split_across_workers() -> None:
    assert [share(16, 2, i) for i in range(2)] == [8, 8]
    assert [share(5, 2, i) for i in range(2)] == [3, 2]  # adds up to the total
    assert [share(1, 3, i) for i in range(3)] == [1, 1, 1]  # at least one each
    opts = local_options(max_connections_per_host=5, host_rate_limit=3.0)
    parts = [worker_options(opts, 2, i) for i in range(2)]
    assert sum(p.max_connections_per_host for p in parts) == 5
    assert sum(p.host_rate_limit for p in parts) == pytest.approx(3.0)
    assert all(p.image_size == opts.image_size for p in parts)


def test_a_killed_worker_fails_only_its_rows_and_is_replaced(image_server: ImageServer) -> None:
    bus = MemoryBus()
    bus.create_topic("urls", 1)
    bus.create_topic("APPEND", 1)
    slow = [image_server.url_for(fresh_seed(), 300, 200, fault="slow", delay=4) for _ in range(8)]
    fast = [image_server.url_for(fresh_seed(), 300, 200) for _ in range(40)]
    rows = [UrlRow(url=u) for u in slow + fast]
    producer = bus.producer()
    for url in slow:  # first: they are in flight, in both workers, when one is killed
        producer.produce("urls", url.encode())
    producer.flush()
    settings = FetcherSettings(
        processes_count=2,
        thread_count=16,
        allowed_networks=IMAGE_SERVER_NETWORKS,
        image_size=64,
        metrics_port=0,
        create_topics=False,
        commit_interval_seconds=0.2,
    )
    service = FetcherService(bus, settings)
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,))
    slow_before = image_server.count("slow")
    thread.start()
    try:
        wait_for(lambda: image_server.count("slow") - slow_before >= len(slow))
        assert service.fetcher is not None
        workers = service.fetcher
        assert isinstance(workers, FetchWorkers)
        first = workers.pids()
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        # Rows sent before the death is noticed would be its rows in flight too.
        wait_for(lambda: first[0] not in workers.pids())
        for url in fast:  # the pipeline goes on
            producer.produce("urls", url.encode())
        producer.flush()
        wait_for(lambda: service.rows_done >= len(rows))
        wait_for(lambda: len(workers.pids()) == 2 and first[0] not in workers.pids())
        now = workers.pids()
        assert workers.restarts == 1
    finally:
        stop.set()
        thread.join()
    assert all(gone(pid) for pid in {*first, *now})  # no worker outlives the service

    records = appended(bus)
    by_sample = Counter(r.meta.sample_id for r in records)
    assert by_sample == Counter(r.sample_id for r in rows)  # exactly one record per row
    died = {r.meta.url for r in records if r.meta.error_message == WORKER_DIED}
    assert died and died <= set(slow)  # the killed worker's rows in flight, nothing else
    failed = [r.meta.status for r in records if r.meta.url in died]
    assert set(failed) == {SampleStatus.FAILED_TO_DOWNLOAD}
    ok = {r.meta.url for r in records if r.meta.status is SampleStatus.SUCCESS}
    assert ok == set(slow + fast) - died
    lag = bus.lag(settings.group_id, "urls")
    assert [p.committed for p in lag] == [len(rows)]  # every row acknowledged, then committed


def test_rows_a_killed_worker_had_queued_are_fetched_by_another(
    image_server: ImageServer,
) -> None:
    # 2 workers fetching 2 rows each at once are given 4 each: 2 fetched, 2 queued to start
    # next. The killed worker's 2 queued rows never ran: another worker fetches them, and only
    # the 2 it was fetching fail.
    urls = [image_server.url_for(fresh_seed(), 300, 200, fault="slow", delay=1) for _ in range(8)]
    bus = bus_with_urls(urls)
    settings = worker_settings(processes_count=2, thread_count=2)
    assert capacity(settings.rows_in_flight, settings.processes_count) == 8
    service = FetcherService(bus, settings)
    slow_before = image_server.count("slow")
    with running(service):
        wait_for(lambda: image_server.count("slow") - slow_before >= 4)
        time.sleep(0.3)
        assert image_server.count("slow") - slow_before == 4  # 2 per worker, the rest queued
        workers = service.fetcher
        assert isinstance(workers, FetchWorkers)
        os.kill(workers.pids()[0], signal.SIGKILL)
        wait_for(lambda: service.rows_done >= len(urls))
    records = appended(bus)
    assert sorted(r.meta.url for r in records) == sorted(urls)  # one record per row
    died = [r.meta.url for r in records if r.meta.error_message == WORKER_DIED]
    assert len(died) == 2
    ok = [r.meta.url for r in records if r.meta.status is SampleStatus.SUCCESS]
    assert len(ok) == 6


def test_thread_count_is_rows_in_flight_per_worker_process_as_in_img2dataset(
    image_server: ImageServer,
) -> None:
    # img2dataset's `--processes_count 2 --thread_count 3` downloads 6 rows at once.
    urls = [image_server.url_for(fresh_seed(), 300, 200, fault="slow", delay=2) for _ in range(9)]
    bus = bus_with_urls(urls)
    settings = worker_settings(processes_count=2, thread_count=3)
    assert settings.rows_in_flight == 6
    service = FetcherService(bus, settings)
    slow_before = image_server.count("slow")
    with running(service):
        wait_for(lambda: image_server.count("slow") - slow_before >= 6)
        time.sleep(0.5)
        assert service.rows_done == 0  # 6 rows in flight, all still being served...
        assert image_server.count("slow") - slow_before == 6  # ...and the others waiting


def test_a_stop_finishes_the_rows_in_flight_then_the_workers_exit(
    image_server: ImageServer,
) -> None:
    urls = [image_server.url_for(fresh_seed(), 300, 200, fault="slow", delay=1) for _ in range(6)]
    bus = bus_with_urls(urls)
    settings = worker_settings(processes_count=2, thread_count=8)
    service = FetcherService(bus, settings)
    slow_before = image_server.count("slow")
    with running(service):  # stopped as SIGTERM stops `serve fetcher`
        wait_for(lambda: image_server.count("slow") - slow_before >= len(urls))
        assert isinstance(service.fetcher, FetchWorkers)
        pids = service.fetcher.pids()
        assert service.rows_done == 0  # all of them in flight
    assert all(gone(pid) for pid in pids)
    assert_each_url_stored_once_and_committed(bus, urls, settings)


def test_records_polled_and_not_started_at_a_stop_come_again_to_the_next_fetcher(
    image_server: ImageServer,
) -> None:
    """A poll takes up to the pool's capacity of records and hands them out as rows finish: at
    a stop, the ones not handed out yet are neither answered nor committed past, so the next
    fetcher of the group gets them, and every row ends with exactly one record."""
    quick = image_server.url_for(fresh_seed(), 300, 200, fault="slow", delay=0.5)
    slow = [image_server.url_for(fresh_seed(), 300, 200, fault="slow", delay=1.5) for _ in range(7)]
    urls = [quick, *slow]
    bus = bus_with_urls(urls)
    # One worker fetching 2 rows at once holds 4 (capacity), so refill is 1: the first poll
    # hands out the quick row and 3 slow ones (2 fetched, 2 queued in the worker); once the
    # quick one is done, a poll takes the last 4 and hands out 1 of them.
    settings = worker_settings(processes_count=1, thread_count=2)
    assert capacity(settings.rows_in_flight, settings.processes_count) == 4
    slow_before = image_server.count("slow")

    def serve(until: Callable[[FetcherService], bool]) -> None:
        service = FetcherService(bus, settings)
        with running(service):
            wait_for(lambda: until(service))

    def three_rows_at_the_server(_: FetcherService) -> bool:
        # The quick row and 2 slow ones (the quick one is done: the second poll, which its end
        # set off, is over 0.3 s later).
        if image_server.count("slow") - slow_before < 3:
            return False
        time.sleep(0.3)
        return True

    # Stopped with 4 rows handed out and not done (2 fetched, 2 queued) and 3 records polled
    # behind them: the 4 and the quick row are answered and committed.
    serve(three_rows_at_the_server)
    assert [p.committed for p in bus.lag(settings.group_id, "urls")] == [5]
    serve(lambda s: s.rows_done >= 3)
    assert_each_url_stored_once_and_committed(bus, urls, settings)
