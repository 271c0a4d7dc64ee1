"""The chaos suite's cluster: a Tansu broker keeping its log in moto S3 (so it survives a
restart), appenders as `img2dataset serve appender` OS processes, and helpers to crash, freeze,
thaw and drain them. Every process is ours and is signalled by its own PID."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import confluent_kafka

from i2d_segments.index import Index
from i2d_segments.records import SegmentClosed
from tests.chaos.workload import Ledger
from tests.servers.kafka import KAFKA_TEST_CONFIG, TansuBroker, start_tansu
from tests.servers.proc import ServerProcess, free_port, wait_until
from tests.servers.s3 import S3Server, s3_client, s3_env

BIN = Path(sys.executable).parent
APPEND_TOPIC = "APPEND"
PARTITIONS = 2


class S3Broker:
    """Tansu on a fixed port with `s3://<bucket>/` storage against moto: `restart()` stops the
    process and starts a new one over the same data, as an operator's broker restart does."""

    def __init__(self, tmp_path: Path, s3: S3Server, bucket: str) -> None:
        s3_client(s3).create_bucket(Bucket=bucket)
        self._tmp = tmp_path
        self._engine = f"s3://{bucket}/"
        self._env = s3_env(s3)
        self._port = free_port()
        self._stack = contextlib.ExitStack()
        self.restarts = 0
        self.broker: TansuBroker = self._start()

    def _start(self) -> TansuBroker:
        return self._stack.enter_context(
            start_tansu(
                self._tmp, storage_engine=self._engine, env=self._env, port=self._port, timeout=60
            )
        )

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def restart(self) -> None:
        self._stack.close()
        self._stack = contextlib.ExitStack()
        self.broker = self._start()
        self.restarts += 1

    def close(self) -> None:
        self._stack.close()


@dataclass
class Appenders:
    """Starts appender processes with one environment; remembers them to stop them all."""

    tmp_path: Path
    env: dict[str, str]
    procs: list[ServerProcess] = field(default_factory=list)
    started: int = 0

    def start(
        self, crash_at: str | None = None, env: dict[str, str] | None = None
    ) -> ServerProcess:
        self.started += 1
        name = f"appender-{self.started:03d}"
        env = {**self.env, **(env or {}), "I2D_OWNER": name}
        if crash_at:
            env["I2D_CRASH_AT"] = crash_at
        proc = ServerProcess(
            [
                str(BIN / "img2dataset"),
                "--log_level",
                os.environ.get("CHAOS_LOG_LEVEL") or "INFO",
                "serve",
                "appender",
            ],
            self.tmp_path / f"{name}.log",
            env=env,
        ).start()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            if p.alive():
                p.signal(signal.SIGCONT)
                p.kill()


def kafka_config() -> dict[str, object]:
    """The test config; CHAOS_KAFKA_DEBUG=cgrp,... adds librdkafka's debug contexts."""
    config: dict[str, object] = dict(KAFKA_TEST_CONFIG)
    if os.environ.get("CHAOS_KAFKA_DEBUG"):
        config["debug"] = os.environ["CHAOS_KAFKA_DEBUG"]
    return config


def appender_env(
    bootstrap: str, s3: S3Server, s3_endpoint: str, bucket: str, dsn: str
) -> dict[str, str]:
    return {
        **s3_env(s3),
        "AWS_ENDPOINT_URL": s3_endpoint,
        "I2D_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "I2D_KAFKA_CONFIG": json.dumps(kafka_config()),
        "I2D_STORE_URL": f"s3://{bucket}/",
        "I2D_S3_ENDPOINT_URL": s3_endpoint,
        "I2D_INDEX_URL": dsn,
        "I2D_APPEND_PARTITIONS": str(PARTITIONS),
        "I2D_URLS_PARTITIONS": "1",
        "I2D_NUMBER_SAMPLE_PER_SHARD": "8",
        "I2D_SEGMENT_IDLE_SECONDS": "0.3",
        "I2D_POLL_TIMEOUT_SECONDS": "0.2",
        "I2D_RETRY_BASE_SECONDS": "0.1",
        "I2D_RETRY_MAX_SECONDS": "1.0",
        # Every fault injected here is transient: a partition must never stop for it.
        "I2D_COMMIT_ATTEMPTS": "100000",
        "I2D_ANNOUNCE_TIMEOUT_SECONDS": "5",
        "I2D_METRICS_PORT": "0",
    }


def log_of(proc: ServerProcess) -> str:
    try:
        return proc.log_path.read_text(errors="replace")
    except OSError:
        return ""


def owning(proc: ServerProcess) -> list[str]:
    """The appender's "owning <partition> at offset ..." log lines, one per assignment."""
    assert proc.alive(), f"appender died:\n{proc.log_tail(60)}"
    return [line for line in log_of(proc).splitlines() if "i2d_appender.service: owning" in line]


def owns_all(proc: ServerProcess) -> bool:
    """Whether the appender's log says it took every partition (it is alone in the group)."""
    lines = owning(proc)
    return all(any(f"partition={p})" in line for line in lines) for p in range(PARTITIONS))


def wait_exit(proc: ServerProcess, timeout: float) -> int:
    assert proc.proc is not None
    return proc.proc.wait(timeout)


def is_stopped(proc: ServerProcess) -> bool:
    """Whether the process is frozen by SIGSTOP (state T in /proc)."""
    try:
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def drained(index: Index, ledger: Ledger) -> bool:
    """Every partition's committed position is past its highest acknowledged offset."""
    for p, end in ledger.end_offsets().items():
        row = index.partition(APPEND_TOPIC, p)
        if row is None or row.next_offset < end:
            return False
    return True


def wait_drained(
    index: Index, ledger: Ledger, alive: list[ServerProcess], timeout: float, what: str
) -> None:
    def done() -> bool:
        for p in alive:
            assert p.alive(), f"appender died while draining ({what}):\n{p.log_tail(60)}"
        return drained(index, ledger)

    try:
        wait_until(done, timeout, f"the appender to commit every acknowledged record ({what})", 0.2)
    except TimeoutError as e:
        tails = "\n---\n".join(p.log_tail(40) for p in alive)
        raise TimeoutError(f"{e}\n{tails}") from e


@contextlib.contextmanager
def appenders(tmp_path: Path, env: dict[str, str]) -> Iterator[Appenders]:
    group = Appenders(tmp_path, env)
    try:
        yield group
    finally:
        group.stop_all()


class ClosedEvents:
    """Reads SEGMENT_CLOSED from its start as it grows: a plain consumer with an assignment
    (no group), so reading it changes nothing the appenders see."""

    def __init__(self, bootstrap: str, topic: str = "SEGMENT_CLOSED") -> None:
        self._consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "chaos-checker",
                "enable.auto.commit": False,
                "allow.auto.create.topics": False,
                "reconnect.backoff.max.ms": 500,
                "logger": logging.getLogger(__name__),  # not stderr: a restart is expected
            }
        )
        self._consumer.assign(
            [confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)]
        )
        self.events: dict[str, SegmentClosed] = {}
        self.count = 0

    def __call__(self) -> dict[str, SegmentClosed]:
        """Everything announced so far (reads until the topic has nothing more for a while)."""
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 1.0:
            msgs = self._consumer.consume(500, 0.2)
            for m in msgs:
                if m.error() is None:
                    ev = SegmentClosed.decode(m.value() or b"")
                    self.events[ev.segment_id] = ev
                    self.count += 1
            if msgs:
                quiet_since = time.monotonic()
        return dict(self.events)

    def close(self) -> None:
        self._consumer.close()
