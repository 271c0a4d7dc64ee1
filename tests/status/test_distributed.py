"""`img2dataset serve status` as its own process over PostgreSQL and Kafka (Tansu): the
progress of the urls topic, consumer lag per group and partition, the index's figures, health
and /metrics; the page shows the lag panel and fits 1280 px; `img2dataset status` prints the
same; SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from i2d_segments.bus import TopicPartition
from i2d_segments.bus.kafka import KafkaBus
from i2d_segments.index import SegmentRow
from i2d_segments.index.postgres import PostgresIndex
from i2d_segments.store.local import LocalStore
from tests.servers.kafka import KAFKA_TEST_CONFIG
from tests.servers.proc import ServerProcess, free_port, wait_for_port, wait_until
from tests.status.helpers import check_conventions, commit, get_json, http_get, scrape
from tests.status.test_dashboard_browser import look, screenshot_path

BIN = Path(sys.executable).parent


def commit_segment(
    index: PostgresIndex, store: LocalStore, topic: str, n_ok: int, n_failed: int
) -> SegmentRow:
    """APPEND offsets 0.. committed by an appender holding partition 0's lease."""
    lease = index.acquire_partition(topic, 0, "test-appender")
    outcomes = "s" * n_ok + "f" * n_failed
    return commit(index, lease.epoch, 0, outcomes, 1000.0, topic=topic, store=store)


def test_serve_status_over_postgres_and_kafka(
    kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    topics = {"urls": f"urls-{run}", "append": f"append-{run}", "closed": f"closed-{run}"}
    groups = {"fetcher": f"fetcher-{run}", "appender": f"appender-{run}"}
    groups["materializer"] = f"materializer-{run}"
    bus = KafkaBus(kafka_bootstrap, config=KAFKA_TEST_CONFIG)
    index = PostgresIndex(postgres_dsn)
    index.migrate()
    try:
        bus.create_topics({topics["urls"]: 2, topics["append"]: 1, topics["closed"]: 1})
        producer = Producer({"bootstrap.servers": kafka_bootstrap})

        def send(topic: str, value: str, partition: int) -> None:
            # One record per request: Tansu reports a multi-record batch's end offset wrongly.
            producer.produce(topic, value, partition=partition)
            assert producer.flush(30) == 0

        for n in range(10):  # 10 urls enqueued, 5 on each partition
            send(topics["urls"], f"http://127.0.0.1/{n}.jpg", n % 2)
        for _ in range(8):
            send(topics["append"], "{}", 0)
        send(topics["closed"], "{}", 0)
        fetcher = bus.consumer(groups["fetcher"])
        fetcher.commit({TopicPartition(topics["urls"], 0): 5, TopicPartition(topics["urls"], 1): 2})
        fetcher.close()
        commit_segment(
            index, LocalStore(tmp_path / "store"), topics["append"], n_ok=5, n_failed=2
        )  # APPEND 0..6 committed

        port = free_port()
        env = {
            "I2D_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "I2D_KAFKA_CONFIG": json.dumps(dict(KAFKA_TEST_CONFIG)),
            "I2D_INDEX_URL": postgres_dsn,
            "I2D_STORE_URL": str(tmp_path / "store"),
            "I2D_URLS_TOPIC": topics["urls"],
            "I2D_APPEND_TOPIC": topics["append"],
            "I2D_CLOSED_TOPIC": topics["closed"],
            "I2D_FETCHER_GROUP": groups["fetcher"],
            "I2D_APPENDER_GROUP": groups["appender"],
            "I2D_MATERIALIZER_GROUP": groups["materializer"],
            "I2D_REFRESH_SECONDS": "0.5",
        }
        serve = [str(BIN / "img2dataset"), "serve", "status"]
        server = ServerProcess(
            [*serve, "--http_host", "127.0.0.1", "--http_port", str(port)],
            tmp_path / "status.log",
            env=env,
        ).start()
        try:
            wait_for_port(port, 60)
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: http_get(base + "/readyz")[0] == 200, 60, "readiness")
            check_status(get_json(base + "/api/status"), groups, topics)
            check_queue(get_json(base + "/api/queue"), groups, topics)
            assert http_get(base + "/healthz")[0] == 200
            # The page at 1280 px: the lag panel is there (Kafka), beside the failures.
            page = look(base + "/", screenshot_path(tmp_path, "dashboard-distributed.png"))
            assert page["lagHidden"] is False and page["lagDisplay"] != "none"
            assert page["text"]["mode"] == "distributed"
            assert page["text"]["progress-text"] == "7 of 10 rows (70.0 %)"
            lag_rows = {(r[0], r[1], r[2]): r[5] for r in page["rows"]["lag"]}
            assert lag_rows[(groups["fetcher"], topics["urls"], "1")] == "3"
            assert page["scrollWidth"] <= 1280 and page["wider"] == [], page["wider"]
            assert page["clipped"] == [], page["clipped"]
            families = scrape(base + "/metrics")
            assert check_conventions(families) == []
            lag = {
                (s.labels["group"], s.labels["partition"]): s.value
                for s in families["img2dataset_consumer_lag"].samples
                if s.labels["topic"] == topics["urls"]
            }
            assert lag == {(groups["fetcher"], "0"): 0.0, (groups["fetcher"], "1"): 3.0}

            text = subprocess.run(
                [str(BIN / "img2dataset"), "status"],
                env={**server.env, **env},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert text.returncode == 0, text.stderr
            assert "(distributed)" in text.stdout
            assert "rows recorded: 7\n" in text.stdout
            # No appender publishes here: done is the committed position on APPEND.
            assert "progress: 7 of 10 rows enqueued done (70.0 %)" in text.stdout
            assert "fetchers: 7 of 10 enqueued rows committed" in text.stdout
            assert f"{groups['fetcher']:<14} {topics['urls']}[1]  committed 2  end 5  lag 3" in (
                text.stdout
            )

            # SIGTERM: it stops by itself, cleanly, within the grace period.
            server.signal(signal.SIGTERM)
            assert server.proc is not None and server.proc.wait(30) == 0, server.log_tail()
        finally:
            server.stop()
    finally:
        index.close()
        bus.close()


def check_status(s: dict[str, Any], groups: dict[str, str], topics: dict[str, str]) -> None:
    assert s["mode"] == "distributed" and s["errors"] == [], s["errors"]
    p = s["progress"]
    assert (p["samples"], p["successes"], p["failures"]) == (7, 5, 2)
    assert (p["enqueued"], p["fetched"]) == (10, 7)
    assert (p["total"], p["done"], p["fraction"]) == (10, 7, 0.7) and p["run"] is None
    assert (p["committed"], p["in_open_segments"]) == (7, 0)
    assert s["failures"] == [{"reason": "HTTP Error 404: Not Found", "count": 2}]
    assert s["segments"]["closed"] == 1 and s["segments"]["items"] == 5
    # One record on APPEND past the index's committed position: a segment is open.
    assert s["segments"]["open"] == 1
    lag = {(x["group"], x["topic"], x["partition"]): (x["committed"], x["end"], x["lag"])
           for x in s["lag"]}  # fmt: skip
    assert lag == {
        (groups["fetcher"], topics["urls"], 0): (5, 5, 0),
        (groups["fetcher"], topics["urls"], 1): (2, 5, 3),
        (groups["appender"], topics["append"], 0): (None, 8, 8),
        (groups["materializer"], topics["closed"], 0): (None, 1, 1),
    }
    assert len(s["recent"]) == 7 and s["recent"][0]["segment_id"].startswith("p00000/")


def check_queue(q: dict[str, Any], groups: dict[str, str], topics: dict[str, str]) -> None:
    assert q["total_lag"] == {
        groups["fetcher"]: 3,
        groups["appender"]: 8,
        groups["materializer"]: 1,
    }
    append = [x for x in q["partitions"] if x["topic"] == topics["append"]]
    assert append == [
        {
            "topic": topics["append"],
            "partition": 0,
            "end": 8,
            "index_next_offset": 7,
            "pending": 1,
            "owner": "test-appender",
        }
    ]
    urls = sorted(
        (x["partition"], x["end"]) for x in q["partitions"] if x["topic"] == topics["urls"]
    )
    assert urls == [(0, 5), (1, 5)]
