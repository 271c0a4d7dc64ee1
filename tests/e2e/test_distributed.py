"""End to end: fetcher, appender and materializer as separate OS processes over the real broker
(Tansu), S3 (moto) and PostgreSQL, fed by `img2dataset enqueue` and by raw lines as
`kafka-console-producer` writes them."""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import webdataset as wds
from confluent_kafka import Producer

from i2d_imageserver import ImageServer, make_url_list
from i2d_segments.bus.kafka import KafkaBus
from i2d_segments.ids import sample_id_for
from i2d_segments.index.postgres import PostgresIndex
from i2d_segments.naming import object_name_of, sidecar_name
from i2d_segments.reader import SegmentRows
from i2d_segments.store.s3 import S3Store
from tests.servers.kafka import KAFKA_TEST_CONFIG
from tests.servers.proc import ServerProcess, free_port, wait_for_port, wait_until
from tests.servers.s3 import S3Server, s3_client, s3_env

BIN = Path(sys.executable).parent
ROWS = 500
FAULTS = {"missing": 0.06, "notimage": 0.04, "truncated": 0.02, "noai": 0.02}


@pytest.fixture
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


def service_env(kafka: str, s3: S3Server, bucket: str, dsn: str) -> dict[str, str]:
    return {
        **s3_env(s3),
        "I2D_KAFKA_BOOTSTRAP_SERVERS": kafka,
        "I2D_KAFKA_CONFIG": json.dumps(dict(KAFKA_TEST_CONFIG)),
        "I2D_STORE_URL": f"s3://{bucket}/",
        "I2D_S3_ENDPOINT_URL": s3.endpoint_url,
        "I2D_INDEX_URL": dsn,
        "I2D_URLS_PARTITIONS": "3",
        "I2D_APPEND_PARTITIONS": "2",
        "I2D_NUMBER_SAMPLE_PER_SHARD": "120",
        "I2D_SEGMENT_IDLE_SECONDS": "2",
        "I2D_PROCESSES_COUNT": "1",
        "I2D_THREAD_COUNT": "32",
        "I2D_RETRIES": "0",
        "I2D_TIMEOUT": "5",
        "I2D_ALLOWED_NETWORKS": "127.0.0.1/32",  # the local image server
    }


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_three_services_end_to_end(
    kafka_bootstrap: str,
    s3_server: S3Server,
    s3_bucket: str,
    postgres_dsn: str,
    images: ImageServer,
    tmp_path: Path,
) -> None:
    urls = make_url_list(images.base_url, ROWS, seed=7, faults=FAULTS)
    half = ROWS // 2
    (tmp_path / "urls.txt").write_text("\n".join(urls[:half]) + "\n")
    env = service_env(kafka_bootstrap, s3_server, s3_bucket, postgres_dsn)
    ports = {name: free_port() for name in ("fetcher", "appender", "materializer")}
    procs = {
        name: ServerProcess(
            [str(BIN / "img2dataset"), "serve", name],
            tmp_path / f"{name}.log",
            env={**env, "I2D_METRICS_PORT": str(port)},
        ).start()
        for name, port in ports.items()
    }
    index = PostgresIndex(postgres_dsn)
    store = S3Store(s3_bucket, client=s3_client(s3_server))
    try:
        for port in ports.values():
            wait_for_port(port, 60)
        # Half through the CLI, half as raw lines the way kafka-console-producer sends them.
        # --wait: the command returns once its rows are recorded in the index.
        enqueue = ServerProcess(
            [
                str(BIN / "img2dataset"),
                "enqueue",
                "--url_list",
                str(tmp_path / "urls.txt"),
                "--wait",
            ],
            tmp_path / "enqueue.log",
            env=env,
        ).start()
        assert enqueue.proc is not None and enqueue.proc.wait(120) == 0, enqueue.log_tail()
        printed = enqueue.log_path.read_text()  # a progress bar with rate, then the total
        assert f"{half}/{half}" in printed and "rows/s" in printed, printed[-2000:]
        assert f"enqueued {half} rows to urls" in printed
        assert f"all {half} rows are recorded in the index" in printed
        assert sum(index.status_counts().values()) == half
        raw = Producer({"bootstrap.servers": kafka_bootstrap})
        for url in urls[half:]:
            raw.produce("urls", url.encode())
        raw.produce("urls", b"\n")  # a blank line is skipped, not a sample
        assert raw.flush(30) == 0
        del raw

        def complete() -> bool:
            for name, p in procs.items():
                assert p.alive(), f"{name} died:\n{p.log_tail()}"
            counts = index.status_counts()
            if sum(counts.values()) < ROWS:
                return False
            return all(
                store.exists(sidecar_name(s.segment_id, "_stats.json")) for s in index.segments()
            )

        wait_until(complete, 240, "every row recorded and every segment materialized", 0.5)

        # Health and metrics, while running.
        for name, port in ports.items():
            base = f"http://127.0.0.1:{port}"
            assert http_get(base + "/healthz")[0] == 200, name
            status, body = http_get(base + "/readyz")
            assert status == 200, (name, body)
            assert b"img2dataset_" in http_get(base + "/metrics")[1], name
        metrics = http_get(f"http://127.0.0.1:{ports['fetcher']}/metrics")[1].decode()
        assert 'img2dataset_fetcher_rows_total{status="success"}' in metrics
        assert "img2dataset_appender_" not in metrics  # each service exports its own families
        appender = http_get(f"http://127.0.0.1:{ports['appender']}/metrics")[1].decode()
        assert "img2dataset_appender_segments_closed_total" in appender
        assert "img2dataset_fetcher_" not in appender

        # SIGTERM: each service stops cleanly, by itself, in time.
        for p in procs.values():
            p.signal(signal.SIGTERM)
        for name, p in procs.items():
            assert p.proc is not None
            assert p.proc.wait(60) == 0, f"{name} exit:\n{p.log_tail()}"
        # After the stop every group's offsets are stored: a restart would redo nothing. Offsets
        # count records, so each group's committed offsets add up to what its topic got: the
        # urls records (the blank line too), at least one APPEND record per row and one
        # SEGMENT_CLOSED per segment (at least once: a rebalance may repeat some).
        bus = KafkaBus(kafka_bootstrap, config=dict(KAFKA_TEST_CONFIG))
        try:
            expected = {
                ("fetcher", "urls"): ROWS + 1,
                ("appender", "APPEND"): ROWS,
                ("materializer", "SEGMENT_CLOSED"): len(index.segments()),
            }
            for (group, topic), records in expected.items():
                lag = bus.lag(group, topic)
                committed = [p.committed for p in lag]
                assert None not in committed, (group, topic, lag)
                total = sum(c for c in committed if c is not None)
                assert total == records if topic == "urls" else total >= records, (group, lag)
        finally:
            bus.close()

        check_dataset(index, store, urls, images, tmp_path)
    finally:
        for p in procs.values():
            p.stop()
        index.close()


def check_dataset(
    index: PostgresIndex, store: S3Store, urls: list[str], images: ImageServer, tmp_path: Path
) -> None:
    # Every input row has exactly one sample row: an enqueued row is identified by its place
    # in its list, a raw line by its content (a bare url: sha256 of the url).
    half = len(urls) // 2
    rows = SegmentRows(store, index)
    by_url = {}
    for i, url in enumerate(urls):
        found = rows.samples_by_url(url)
        assert len(found) == 1, url
        by_url[url] = found[0]
        if i >= half:
            assert found[0].sample_id == sample_id_for(url)
    counts = index.status_counts()
    assert sum(counts.values()) == len(set(urls))
    assert counts["success"] >= len(urls) * 0.8
    assert counts.get("failed_to_download", 0) + counts.get("failed_to_resize", 0) > 0
    errors = index.error_counts()
    assert any("404" in e for e in errors), errors
    assert any("X-Robots-Tag" in e for e in errors), errors

    # img2dataset's `key`: enqueue numbers its rows in shards of I2D_NUMBER_SAMPLE_PER_SHARD
    # (120: shard x 1000 + place, on 5 + 3 digits); a raw line has no place in a list, so its
    # key is its sample_id.
    for i, url in enumerate(urls):
        if urls.count(url) == 1:
            expected = f"{i // 120 * 1000 + i % 120:08d}" if i < half else sample_id_for(url)
            assert by_url[url].attrs["key"] == expected

    segments = index.segments()
    assert len(segments) >= 2
    total_items = 0
    for seg in segments:
        blob = store.get(object_name_of(seg.segment_id))
        assert hashlib.sha256(blob).hexdigest() == seg.sha256 and len(blob) == seg.bytes
        items = rows.items_for_segment(seg.segment_id)
        total_items += len(items)
        for item in items:
            data = store.read_range(
                object_name_of(seg.segment_id), item.data_offset, item.data_length
            )
            assert hashlib.sha256(data).hexdigest() == item.data_sha256
            assert data[:2] == b"\xff\xd8"  # a JPEG, exactly: no header bytes around it
        local = tmp_path / f"{seg.segment_id.replace('/', '_')}.tar"
        local.write_bytes(blob)
        keys = [s["__key__"] for s in wds.WebDataset(str(local), shardshuffle=False)]
        assert sorted(keys) == sorted(i.item_id for i in items)
    assert total_items > 0

    # item_id is the sha256 of the original bytes the URL served.
    successes = [u for u in urls if by_url[u].status == "success"]
    for url in successes[:20]:
        with urllib.request.urlopen(url, timeout=5) as r:
            original = r.read()
        assert by_url[url].item_id == hashlib.sha256(original).hexdigest()
