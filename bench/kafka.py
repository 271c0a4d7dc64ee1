"""The `kafka` tool of `make bench`: the distributed mode on this machine, timed as a user of
it sees a list go through.

One PostgreSQL cluster for the whole bench (as the tests start theirs: tests/servers/postgres.py
via bench.scale), a fresh database per run; per run a fresh Tansu broker (Kafka-compatible, in
memory, on a free loopback port, as tests/servers/kafka.py starts it) and the three services as
`img2dataset serve fetcher|appender|materializer` processes, as tests/e2e/test_distributed.py
runs them: the fetcher with `download`'s fetch flags (same worker processes, same rows in
flight), the appender with its segment size, the store a local folder (the run's output
folder). One partition per topic, as the embedded pipeline has.

The measure starts once every service answers /readyz (the fetcher holds its partition: a
service runs before a list comes) with `img2dataset enqueue --url_list LIST --wait`, and ends
when it returns: every row recorded in the index. The services then get SIGTERM and must exit 0
within SERVICE_STOP_SECONDS (not timed). CPU is that of the services, the enqueue, the broker
and PostgreSQL over the measure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg

from bench.harness import (
    SERVICE_STOP_SECONDS,
    RunResult,
    Settings,
    TreeSampler,
    enqueue_command,
    fetch_flags,
    shard_flags,
)
from bench.scale import postgres_cluster
from i2d_segments.index.postgres import PostgresIndex
from tests.servers.kafka import KAFKA_TEST_CONFIG, start_tansu
from tests.servers.postgres import PostgresServer
from tests.servers.proc import ServerProcess, free_port, wait_until

SERVICES = ("fetcher", "appender", "materializer")
# Services that do not answer /readyz in this long fail the run (a group join on Tansu takes
# about half the session timeout: ~1 s with the test config).
READY_SECONDS = 60.0


class KafkaTool:
    """Runs lists through the distributed mode; `with KafkaTool(...)` holds its PostgreSQL."""

    def __init__(self, binary: str, extra: Sequence[str], idle_seconds: float):
        self.binary = binary
        self.extra = list(extra)
        self.idle_seconds = idle_seconds
        self._stack = contextlib.ExitStack()
        self.postgres: PostgresServer | None = None

    def __enter__(self) -> KafkaTool:
        self.postgres = self._stack.enter_context(postgres_cluster(keep=False))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def run(self, url_list: Path, out: Path, s: Settings, corpus: str, round_: int) -> RunResult:
        assert self.postgres is not None, "use `with KafkaTool(...)`"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        with (
            tempfile.TemporaryDirectory(prefix="i2d-bench-kafka-") as tmp,
            start_tansu(Path(tmp)) as broker,
            _database(self.postgres) as dsn,
        ):
            env = {
                "I2D_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
                "I2D_KAFKA_CONFIG": json.dumps(dict(KAFKA_TEST_CONFIG)),
                "I2D_STORE_URL": str(out),
                "I2D_INDEX_URL": dsn,
                "I2D_URLS_PARTITIONS": "1",
                "I2D_APPEND_PARTITIONS": "1",
            }
            flags = {
                "fetcher": fetch_flags(s, self.extra),
                "appender": [*shard_flags(s), "--segment_idle_seconds", str(self.idle_seconds)],
                "materializer": [],
            }
            ports = {name: free_port() for name in SERVICES}
            for name in SERVICES:  # ServerProcess appends to its log: a fresh one per run
                out.with_suffix(f".{name}.log").unlink(missing_ok=True)
            procs = {
                name: ServerProcess(
                    [self.binary, "serve", name, *flags[name]],
                    out.with_suffix(f".{name}.log"),
                    env={**env, "I2D_METRICS_PORT": str(ports[name])},
                )
                for name in SERVICES
            }
            try:
                for p in procs.values():
                    p.start()
                for name, port in ports.items():
                    _wait_ready(name, procs[name], port)
                servers = [broker.server.pid, self.postgres.process.pid]
                wall, sampler = _timed_enqueue(
                    enqueue_command(self.binary, url_list, None, s),
                    out.with_suffix(".enqueue.log"),
                    env,
                    [p.pid for p in procs.values()] + servers,
                    procs,
                )
                _stop_all(procs)
            finally:
                for p in procs.values():
                    p.kill()  # nothing left running if the run failed
            result = RunResult("kafka", corpus, round_, 0, 0, wall, wall)
            result.statuses = _status_counts(dsn)
            result.rows = sum(result.statuses.values())
            result.successes = result.statuses.get("success", 0)
            result.cpu_seconds = sampler.cpu_seconds
            result.peak_rss_main_mb = sampler.main_kb / 1024
            result.peak_rss_tree_mb = sampler.tree_kb / 1024
            return result


@contextlib.contextmanager
def _database(server: PostgresServer) -> Iterator[str]:
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with server.admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.dsn(name)
    finally:
        with contextlib.suppress(psycopg.Error), server.admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _wait_ready(name: str, proc: ServerProcess, port: int) -> None:
    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(f"serve {name} exited before it was ready:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    try:
        wait_until(ready, READY_SECONDS, f"serve {name} /readyz", interval=0.05)
    except TimeoutError as e:
        raise RuntimeError(f"{e}\n{proc.log_tail()}") from e


def _timed_enqueue(
    cmd: Sequence[str],
    log_path: Path,
    env: dict[str, str],
    sampled: list[int],
    procs: dict[str, ServerProcess],
) -> tuple[float, TreeSampler]:
    """Run the enqueue to completion while the services run: (wall seconds, sampler). The
    sampler's first process is the fetcher (its peak RSS is the run's main figure)."""
    with log_path.open("w") as log:
        started = time.monotonic()
        enqueue = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
        sampler = TreeSampler(*sampled, enqueue.pid, from_now=True)
        try:
            while enqueue.poll() is None:
                for name, p in procs.items():
                    if not p.alive():
                        raise RuntimeError(f"serve {name} died during the run:\n{p.log_tail()}")
                time.sleep(0.005)
            wall = time.monotonic() - started
        finally:
            sampler.stop()
            if enqueue.poll() is None:
                enqueue.kill()
                enqueue.wait()
    if enqueue.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"enqueue exited with {enqueue.returncode}; log {log_path}:\n{tail}")
    return wall, sampler


def _stop_all(procs: dict[str, ServerProcess]) -> None:
    """SIGTERM each service (the fetcher first, as the pipeline stops them); each must exit 0
    within SERVICE_STOP_SECONDS."""
    for p in procs.values():
        p.signal(signal.SIGTERM)
    for name, p in procs.items():
        assert p.proc is not None
        try:
            code = p.proc.wait(SERVICE_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"serve {name} did not exit within {SERVICE_STOP_SECONDS:.0f}s of SIGTERM:\n"
                f"{p.log_tail()}"
            ) from None
        if code != 0:
            raise RuntimeError(f"serve {name} exited with {code} on SIGTERM:\n{p.log_tail()}")


def _status_counts(dsn: str) -> dict[str, int]:
    index = PostgresIndex(dsn)
    try:
        return dict(index.status_counts())
    finally:
        index.close()
