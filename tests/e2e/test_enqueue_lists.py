"""Two lists enqueued into one dataset over Kafka (PostgreSQL index): every row is its own
sample, the same url in both lists too, and img2dataset's `key` column never repeats across the
lists (each list's shards are numbered dataset-wide in the index)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer

from tests.servers.kafka import KAFKA_TEST_CONFIG

BIN = Path(sys.executable).parent
ROWS = 250


def enqueue(url_list: Path, topic: str, kafka: str, dsn: str) -> None:
    done = subprocess.run(
        [
            str(BIN / "img2dataset"),
            "enqueue",
            f"--url_list={url_list}",
            f"--kafka_bootstrap_servers={kafka}",
            f"--kafka_config={json.dumps(dict(KAFKA_TEST_CONFIG))}",
            f"--index_url={dsn}",
            f"--urls_topic={topic}",
            "--number_sample_per_shard=100",
            "--progress=False",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def read_topic(topic: str, kafka: str, expected: int) -> list[dict[str, Any]]:
    consumer = Consumer(
        {
            "bootstrap.servers": kafka,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **KAFKA_TEST_CONFIG,
        }
    )
    consumer.subscribe([topic])
    out: list[dict[str, Any]] = []
    try:
        idle = 0
        while len(out) < expected or idle < 3:
            message = consumer.poll(1.0)
            if message is None:
                idle += 1
                if idle > 30:
                    break
                continue
            assert message.error() is None, message.error()
            value = message.value()
            assert value is not None
            out.append(json.loads(value))
    finally:
        consumer.close()
    return out


def test_two_lists_enqueued_into_one_dataset_share_no_key(
    kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path
) -> None:
    topic = f"urls-{uuid.uuid4().hex[:8]}"
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("".join(f"http://127.0.0.1:9/a/{i}.jpg\n" for i in range(ROWS)))
    # The second list repeats the first's urls: still other rows of another list.
    second.write_text(first.read_text())
    enqueue(first, topic, kafka_bootstrap, postgres_dsn)
    enqueue(second, topic, kafka_bootstrap, postgres_dsn)
    records = read_topic(topic, kafka_bootstrap, 2 * ROWS)
    assert len(records) == 2 * ROWS
    keys = [r["row_key"] for r in records]
    assert len(set(keys)) == 2 * ROWS, "img2dataset keys repeat across the two lists"
    ids = {r["sample_id"] for r in records}
    assert len(ids) == 2 * ROWS  # every row its own sample, the same url in two lists too
