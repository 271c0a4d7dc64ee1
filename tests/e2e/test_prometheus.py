"""End to end on a real Prometheus: the distributed pipeline (fetcher, appender, materializer and
status as separate processes over Tansu, moto and PostgreSQL, as tests/e2e/test_distributed.py
runs it) scraped every second by Prometheus (Debian's `prometheus`) loaded with the shipped
alert rules, time-scaled.

- Every query of every panel of the Grafana dashboard, as Grafana sends it (a range query over
  the run, `$__rate_interval` replaced by the value Grafana computes for a 1 s scrape), answers
  with data: a label typo, a histogram queried without `_bucket` or a wrong window would answer
  nothing. Labelled counters exist at 0 from the start (a retry or an abandoned segment that
  never happened shows 0, not "No data").
- The rules evaluate without error, no alert fires while the pipeline is healthy, and two
  provoked failures fire theirs: an appender stopped (its APPEND partitions unowned, the service
  down) and fetchers pointed at a dead host (the failure ratio of its reason).

The rules are the shipped ones with every `for:`, range and offset divided by 60 (minutes
become seconds: build_rules.py --time-scale 60); the expressions are the same. The promtool unit
tests (tests/deploy/test_alerts.py) cover the production durations.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from confluent_kafka import Producer

from i2d_imageserver import ImageServer, make_url_list
from i2d_segments.index.postgres import PostgresIndex
from tests.e2e.test_distributed import service_env as distributed_env
from tests.servers.kafka import start_tansu
from tests.servers.proc import ServerProcess, free_port, wait_for_port, wait_until
from tests.servers.prometheus import Prometheus, start_prometheus, wait_for_alerts
from tests.servers.s3 import S3Server

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ROWS = 120
FAULTS = {"missing": 0.08, "notimage": 0.04}
SCALE = 60
SCRAPE = "1s"
# Grafana's $__rate_interval: max(4 x the scrape interval, the step + the scrape interval).
GRAFANA_VARIABLES = {"$__rate_interval": "4s"}
COMPONENTS = ("fetcher", "appender", "materializer", "status")


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


def service_env(kafka: str, s3: S3Server, bucket: str, dsn: str) -> dict[str, str]:
    """test_distributed's services, with smaller segments that close sooner (more of them
    while Prometheus watches)."""
    return {
        **distributed_env(kafka, s3, bucket, dsn),
        "I2D_URLS_PARTITIONS": "2",
        "I2D_NUMBER_SAMPLE_PER_SHARD": "40",
        "I2D_SEGMENT_IDLE_SECONDS": "1",
        "I2D_THREAD_COUNT": "16",
    }


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def grafana_query(expr: str) -> str:
    """The query Grafana sends: its variables replaced by their values."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    left = re.findall(r"\$\{?\w+", expr)
    assert not left, f"a Grafana variable this test does not know: {left} in {expr}"
    return expr


def has_finite_value(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(v)) for series in result for _, v in series.get("values", []))


def check_every_panel_query(prom: Prometheus, board: dict[str, Any], start: float) -> None:
    end = time.time()
    empty = []
    checked = 0
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = grafana_query(target["expr"])
            checked += 1
            if has_finite_value(prom.query_range(expr, start, end, 1.0)):
                continue
            empty.append((panel["title"], expr))
    assert not empty, f"panel queries without data ({len(empty)} of {checked}): {empty}"
    print(f"{checked} panel queries, every one with data")


class DeadHostFeed:
    """Rows of a host nothing listens on, sent to `urls` at a steady rate until stopped."""

    def __init__(self, bootstrap: str, per_second: float = 25.0) -> None:
        self.url = f"http://127.0.0.1:{free_port()}/gone"
        self.per_second = per_second
        self.sent = 0
        self._stop = threading.Event()
        self._producer = Producer({"bootstrap.servers": bootstrap})
        self._thread = threading.Thread(target=self._run, name="dead-host-feed", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1 / self.per_second):
            self._producer.produce("urls", f"{self.url}/{self.sent}.jpg".encode())
            self._producer.poll(0)
            self.sent += 1
        self._producer.flush(10)

    def __enter__(self) -> DeadHostFeed:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)
        del self._producer  # before the broker stops: no disconnection noise


def test_dashboard_queries_and_alerts_on_a_real_prometheus(
    s3_server: S3Server,
    s3_bucket: str,
    postgres_dsn: str,
    images: ImageServer,
    tmp_path: Path,
) -> None:
    rules_builder = load(ROOT / "deploy/prometheus/build_rules.py")
    rules = tmp_path / "img2dataset.rules.yml"
    rules.write_text(rules_builder.render(rules_builder.scaled(rules_builder.groups(), SCALE)))
    board = json.loads((ROOT / "deploy/grafana/dashboards/img2dataset.json").read_text())
    # A broker of its own: the topics and consumer groups keep their default names, which the
    # rules select by, without another test's records or offsets.
    (tmp_path / "kafka").mkdir()
    with start_tansu(tmp_path / "kafka") as broker:
        env = service_env(broker.bootstrap, s3_server, s3_bucket, postgres_dsn)
        ports = {name: free_port() for name in COMPONENTS}
        procs = {
            name: ServerProcess(
                [str(BIN / "img2dataset"), "serve", name],
                tmp_path / f"{name}.log",
                env={
                    **env,
                    "I2D_HTTP_PORT" if name == "status" else "I2D_METRICS_PORT": str(port),
                },
            ).start()
            for name, port in ports.items()
        }
        index = PostgresIndex(postgres_dsn)
        try:
            for port in ports.values():
                wait_for_port(port, 60)

            def all_ready() -> bool:
                for name, p in procs.items():
                    assert p.alive(), f"{name} died:\n{p.log_tail()}"
                return all(ready(port) for port in ports.values())

            wait_until(all_ready, 60, "every service ready (partitions assigned)", 0.2)
            targets = {name: [f"127.0.0.1:{port}"] for name, port in ports.items()}
            with start_prometheus(tmp_path, targets, [rules], interval=SCRAPE) as prom:
                prom.wait_for_targets(len(COMPONENTS))
                start = time.time()
                run_a_healthy_list(prom, broker.bootstrap, images, index, procs)
                firing = prom.firing()
                assert not firing, f"fired while healthy: {[a['labels'] for a in firing]}"

                # Stop the only appender, and point the fetchers at a dead host.
                procs["appender"].signal(signal.SIGTERM)
                with DeadHostFeed(broker.bootstrap) as feed:
                    firing = wait_for_alerts(
                        prom,
                        {
                            "Img2datasetAppendPartitionsUnowned": {},
                            "Img2datasetServiceDown": {"component": "appender"},
                            "Img2datasetFetchFailureRatioHigh": {},
                        },
                        timeout=60,
                    )
                assert feed.sent > 0
                assert procs["appender"].proc is not None
                assert procs["appender"].proc.wait(30) == 0, procs["appender"].log_tail()
                for alert in firing:
                    notes = alert["annotations"]
                    text = json.dumps(notes)
                    assert "error expanding" not in text and "<no value>" not in text, alert
                    assert notes["runbook"].startswith("1. ") and "viewPanel=" in notes["dashboard"]
                print("firing:", sorted({a["labels"]["alertname"] for a in firing}))
                ratio = [
                    a["labels"]["reason"]
                    for a in firing
                    if a["labels"]["alertname"] == "Img2datasetFetchFailureRatioHigh"
                ]
                print("failure ratio alerts by reason:", ratio)

                # Every rule's latest evaluation succeeded: no PromQL that only fails at run
                # time (many-to-many matching, duplicate series after a sum).
                broken = [
                    (r["name"], r.get("lastError")) for r in prom.rules() if r["health"] != "ok"
                ]
                assert not broken, broken
                check_every_panel_query(prom, board, start)
        finally:
            for p in procs.values():
                p.stop()
            index.close()
        for name, p in procs.items():
            assert p.proc is not None and p.proc.returncode == 0, f"{name}:\n{p.log_tail()}"


def run_a_healthy_list(
    prom: Prometheus,
    bootstrap: str,
    images: ImageServer,
    index: PostgresIndex,
    procs: dict[str, ServerProcess],
) -> None:
    """A list with some failing rows, and one APPEND record no appender can read (the
    dashboard's failures panel counts it), through the whole pipeline; then until Prometheus
    has scraped what it left (the materializer's figures, the lag the status service reports)."""
    urls = make_url_list(images.base_url, ROWS, seed=15, faults=FAULTS)
    producer = Producer({"bootstrap.servers": bootstrap})
    for url in urls:
        producer.produce("urls", url.encode())
    producer.produce("APPEND", b"not an APPEND record", partition=0)
    assert producer.flush(30) == 0
    del producer

    def done() -> bool:
        for name, p in procs.items():
            assert p.alive(), f"{name} died:\n{p.log_tail()}"
        if sum(index.status_counts().values()) < ROWS:
            return False
        segments = len(index.segments())
        return segments > 0 and bool(
            prom.query(f"sum(img2dataset_materializer_segments_total) >= {segments}")
        )

    wait_until(done, 90, "every row recorded, every segment materialized and scraped", 0.5)
    for expr in (
        'sum(img2dataset_appender_records_total{outcome="malformed"}) > 0',
        'count(img2dataset_consumer_lag{group="materializer"}) > 0',
    ):
        wait_until(lambda e=expr: bool(prom.query(e)), 15, expr, 0.5)
