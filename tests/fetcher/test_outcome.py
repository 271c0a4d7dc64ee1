"""A hostile `urls` record is answered: a failed sample `malformed row: ...`, never an
exception out of the fetcher (which left the record unanswered in serve mode)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from i2d_fetcher.outcome import Outcome, failed_value, parse
from i2d_fetcher.service import FetcherService
from i2d_fetcher.settings import FetcherSettings
from i2d_imageserver import ImageServer
from i2d_segments.bus.memory import MemoryBus
from i2d_segments.records import SampleStatus, decode_append
from tests.fetcher.helpers import IMAGE_SERVER_NETWORKS, fresh_seed

URL = "http://127.0.0.1/a.jpg"
TOO_DEEP = "malformed row: invalid JSON row: nested deeper than 32 levels"
HOSTILE = [
    ("{" + '"a":[' * 100_000, TOO_DEEP),  # RecursionError in json.loads
    ('{"url": "' + URL + '", "x": ' + "[" * 100_000, TOO_DEEP),
    # Parsed by json, but past pydantic's limits: the APPEND record could not be encoded.
    ('{"url": "' + URL + '", "x": ' + "[" * 300 + "]" * 300 + "}", TOO_DEEP),
    # Within every limit of json and pydantic, past the bound (the parquet sidecar's).
    ('{"url": "' + URL + '", "x": ' + "[" * 40 + "]" * 40 + "}", TOO_DEEP),
    (
        '{"url": "' + URL + '", "n": ' + "1" * 5000 + "}",
        "malformed row: invalid JSON row: unreadable value: Exceeds the limit (4300 digits)"
        " for integer string conversion",
    ),
]


@pytest.mark.parametrize(("text", "error"), HOSTILE)
def test_hostile_json_records_are_failed_samples(text: str, error: str) -> None:
    value = text.encode()
    outcome = parse(value, "url", "caption")
    assert isinstance(outcome, Outcome)
    meta = decode_append(outcome.value).meta
    assert (meta.status, meta.error_message) == (SampleStatus.FAILED_TO_DOWNLOAD, error)
    assert meta.url == text[:4096]  # the record's text, to find it by
    # A record whose worker died is answered the same way (the supervisor parses it again).
    died = failed_value(value, "fetch worker died")
    assert isinstance(died, Outcome) and decode_append(died.value).meta.error_message == error


def test_a_malformed_record_keeps_its_row_key_even_beside_a_value_too_deep() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    for x in (deep, "[[1]]"):
        record = '{"row_key": "000000007", "malformed": "why", "x": ' + x + "}"
        outcome = parse(record.encode(), "url", "caption")
        assert isinstance(outcome, Outcome)
        meta = decode_append(outcome.value).meta
        error = TOO_DEEP if x == deep else "malformed row: why"
        assert (meta.error_message, meta.key) == (error, "000000007")


def test_the_deepest_row_allowed_is_fetched_with_its_value() -> None:
    value = json.dumps({"url": URL, "x": [[[1]]] * 2}).encode()
    row = parse(value, "url", "caption")
    assert not isinstance(row, Outcome) and row is not None and row.extra == {"x": [[[1]]] * 2}


@pytest.mark.parametrize("processes_count", [1, 0])  # a worker process (serve's default); inline
def test_the_fetcher_service_answers_every_hostile_record(
    image_server: ImageServer, processes_count: int
) -> None:
    bus = MemoryBus()
    bus.create_topic("urls", 1)
    bus.create_topic("APPEND", 1)
    good = image_server.url_for(fresh_seed(), 64, 48)
    values = [text.encode() for text, _ in HOSTILE] + [b"[" * 100_000, good.encode()]
    producer = bus.producer()
    for value in values:
        producer.produce("urls", value)
    producer.flush()
    settings = FetcherSettings(
        processes_count=processes_count,
        allowed_networks=IMAGE_SERVER_NETWORKS,
        metrics_port=0,
        create_topics=False,
        commit_interval_seconds=0.2,
    )
    service = FetcherService(bus, settings)
    stop = threading.Event()
    # A daemon: a service left waiting for an answer that never comes must not hang the run.
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while service.rows_done < len(values):
            assert thread.is_alive(), "the fetcher service died"
            assert time.monotonic() < deadline, f"{service.rows_done} of {len(values)} answered"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    consumer = bus.consumer("check")
    consumer.subscribe(["APPEND"])
    records = [decode_append(m.value).meta for m in consumer.poll_batch(1000, 1.0)]
    assert len(records) == len(values)  # one answer per record
    by_url = {r.url: r for r in records}  # a malformed record's url: its text, up to 4096
    assert [by_url[text[:4096]].error_message for text, _ in HOSTILE] == [e for _, e in HOSTILE]
    assert by_url["[" * 100_000].error_message == "invalid url"  # not JSON: a bare (bad) url
    assert by_url[good].status is SampleStatus.SUCCESS  # the pipeline went on
