"""`img2dataset serve fetcher|appender|materializer|status` and SIGTERM/SIGINT: once, a service
finishes its work in flight and exits 0; twice (0.1-0.3 s apart), it exits within 5 s of the
second, whatever it was doing, with no traceback and no process left behind; and services
started again over the same Kafka topics, store and index complete the dataset with every input
row recorded exactly once (index and metadata parquet)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from i2d_imageserver import ImageServer, make_url_list
from i2d_segments.index.postgres import PostgresIndex
from i2d_segments.naming import sidecar_name
from i2d_segments.reader import SegmentRows
from i2d_segments.store.s3 import S3Store
from tests.e2e.signals import (
    catches,
    group_members,
    parquet_rows,
    stopped_by_second_signal,
    wait_group_gone,
)
from tests.servers.kafka import KAFKA_TEST_CONFIG
from tests.servers.proc import free_port, wait_for_port, wait_until
from tests.servers.s3 import S3Server, s3_client, s3_env

BIN = Path(sys.executable).parent
SERVICES = ("fetcher", "appender", "materializer", "status")
ROWS = 300
# Slow rows (1 s before their headers) keep work in flight when the signals come.
FAULTS = {"slow": 0.2, "missing": 0.05}


@pytest.fixture
def images() -> Iterator[ImageServer]:
    with ImageServer(slow_delay=1.0) as server:
        yield server


@dataclass
class Service:
    name: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start(name: str, env: dict[str, str], tmp_path: Path, run: int = 0) -> Service:
    port = free_port()
    argv = [str(BIN / "img2dataset"), "serve", name]
    argv += (
        ["--http_host", "127.0.0.1", "--http_port", str(port)]
        if name == "status"
        else ["--metrics_host", "127.0.0.1", "--metrics_port", str(port)]
    )
    log = tmp_path / f"{name}-{run}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,  # its own group: the test checks its children are gone
        )
    return Service(name, port, log, proc)


def stop_all(services: list[Service]) -> None:
    """Clean-up only: kill what a failed test left running (processes this test started)."""
    for s in services:
        if s.alive():
            s.proc.kill()
            s.proc.wait(10)
        for pid in group_members(s.proc.pid):
            os.kill(pid, signal.SIGKILL)


def service_env(kafka: str, s3: S3Server, bucket: str, dsn: str, tmp_path: Path) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]  # the broker is shared by the session: topics of our own
    return {
        **s3_env(s3),
        "I2D_KAFKA_BOOTSTRAP_SERVERS": kafka,
        "I2D_KAFKA_CONFIG": json.dumps(dict(KAFKA_TEST_CONFIG)),
        "I2D_STORE_URL": f"s3://{bucket}/",
        "I2D_S3_ENDPOINT_URL": s3.endpoint_url,
        "I2D_INDEX_URL": dsn,
        "I2D_URLS_TOPIC": f"urls-{run}",
        "I2D_APPEND_TOPIC": f"append-{run}",
        "I2D_CLOSED_TOPIC": f"closed-{run}",
        "I2D_URLS_PARTITIONS": "2",
        "I2D_APPEND_PARTITIONS": "2",
        "I2D_NUMBER_SAMPLE_PER_SHARD": "40",
        "I2D_SEGMENT_IDLE_SECONDS": "2",
        "I2D_PROCESSES_COUNT": "1",
        "I2D_THREAD_COUNT": "16",
        "I2D_RETRIES": "0",
        "I2D_TIMEOUT": "5",
        "I2D_REFRESH_SECONDS": "0.5",
        "I2D_ALLOWED_NETWORKS": "127.0.0.1/32",  # the local image server
    }


def signal_twice(service: Service, sig: signal.Signals, gap: float) -> bool:
    """Send `sig` to the service's pid, again `gap` s later unless its clean stop is over;
    check it exits within 5 s of the last signal, without a traceback, children included.
    Returns whether the second signal found its clean stop under way.

    Over means it logged "stopped cleanly". What follows is closing its clients, then the
    interpreter's own shutdown, where a signal either still stops it at once or, once no
    handler can run, is lost and the exit stays 0: a second signal then proves nothing, and
    made the exit code a race."""
    service.proc.send_signal(sig)
    time.sleep(gap)
    twice = service.alive() and "stopped cleanly" not in service.output()
    if twice:
        service.proc.send_signal(sig)
    sent = time.monotonic()
    try:
        code = service.proc.wait(5.0)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{service.name} still running 5 s after the last {sig.name}:\n"
            + service.output()[-3000:]
        ) from None
    assert time.monotonic() - sent < 5.0
    printed = service.output()
    assert "Traceback" not in printed, f"{service.name}:\n{printed[-3000:]}"
    if twice:
        assert stopped_by_second_signal(code, sig, printed), (service.name, code, printed[-3000:])
    else:
        assert code == 0, f"{service.name} exit {code}:\n{printed[-3000:]}"
    wait_group_gone(service.proc.pid)
    return twice


@pytest.mark.parametrize(
    ("name", "sig", "gap"),
    [
        ("fetcher", signal.SIGTERM, 0.1),
        ("appender", signal.SIGINT, 0.2),
        ("materializer", signal.SIGTERM, 0.3),
        ("status", signal.SIGINT, 0.1),
    ],
)
def test_twice_during_start_up_exits_at_once(
    kafka_bootstrap: str,
    s3_server: S3Server,
    s3_bucket: str,
    postgres_dsn: str,
    tmp_path: Path,
    name: str,
    sig: signal.Signals,
    gap: float,
) -> None:
    env = service_env(kafka_bootstrap, s3_server, s3_bucket, postgres_dsn, tmp_path)
    service = start(name, env, tmp_path)
    try:
        # Its handlers are in place (Python's own catch SIGINT, not SIGTERM); it is still
        # importing its code and connecting.
        wait_until(lambda: catches(service.proc.pid, signal.SIGTERM), 30, "the handlers", 0.01)
        assert signal_twice(service, sig, gap), f"{name} stopped before the second signal"
    finally:
        stop_all([service])


def test_once_then_twice_mid_run_and_a_restart_completes(
    kafka_bootstrap: str,
    s3_server: S3Server,
    s3_bucket: str,
    postgres_dsn: str,
    images: ImageServer,
    tmp_path: Path,
) -> None:
    env = service_env(kafka_bootstrap, s3_server, s3_bucket, postgres_dsn, tmp_path)
    urls = make_url_list(images.base_url, ROWS, seed=31, faults=FAULTS)
    (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
    index = PostgresIndex(postgres_dsn)
    store = S3Store(s3_bucket, client=s3_client(s3_server))
    running: list[Service] = []
    try:
        running = [start(name, env, tmp_path) for name in SERVICES]
        for s in running:
            wait_for_port(s.port, 60)
        enqueue = subprocess.run(
            [str(BIN / "img2dataset"), "enqueue", "--url_list", str(tmp_path / "urls.txt")],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert enqueue.returncode == 0, enqueue.stderr[-3000:]

        def committed() -> int:
            for s in running:
                assert s.alive(), f"{s.name} died:\n{s.output()[-3000:]}"
            return len(index.segments())

        wait_until(lambda: committed() >= 2, 120, "two committed segments", 0.1)
        # Mid-run, with rows in flight in the fetcher and records in the appender's open
        # segments: each service is signalled twice; a service whose clean stop is over before
        # the second signal must have exited 0.
        plan = {
            "fetcher": (signal.SIGINT, 0.1),
            "appender": (signal.SIGTERM, 0.2),
            "materializer": (signal.SIGINT, 0.3),
            "status": (signal.SIGTERM, 0.2),
        }
        twice = {s.name: signal_twice(s, *plan[s.name]) for s in running}
        # The fetcher had slow rows in flight: its clean stop was still waiting for them.
        assert twice["fetcher"], "the fetcher stopped before the second signal"
        recorded_before = sum(index.status_counts().values())
        assert recorded_before < ROWS

        # Started again over the same topics, store and index: the dataset completes.
        running = [start(name, env, tmp_path, run=1) for name in SERVICES]

        def complete() -> bool:
            for s in running:
                assert s.alive(), f"{s.name} died:\n{s.output()[-3000:]}"
            if sum(index.status_counts().values()) < ROWS:
                return False
            return all(
                store.exists(sidecar_name(s.segment_id, "_stats.json")) for s in index.segments()
            )

        wait_until(complete, 240, "every row recorded and every segment materialized", 0.5)
        # Once: each service finishes its work and exits 0.
        for s in running:
            s.proc.send_signal(signal.SIGTERM)
        for s in running:
            assert s.proc.wait(60) == 0, f"{s.name}:\n{s.output()[-3000:]}"
            assert "Traceback" not in s.output(), f"{s.name}:\n{s.output()[-3000:]}"
            wait_group_gone(s.proc.pid)

        segments = [s.segment_id for s in index.segments()]
        full = SegmentRows(store, index)
        ids = {r.sample_id for sid in segments for r in full.samples_for_segment(sid)}
        assert sum(index.status_counts().values()) == len(ids) == ROWS
        # The materializer ran to the end: the parquet files hold each row once.
        rows = parquet_rows(store.get(sidecar_name(sid, ".parquet")) for sid in segments)
        assert len(rows) == ROWS
        assert {r["sample_id"] for r in rows} == ids
    finally:
        stop_all(running)
        index.close()
