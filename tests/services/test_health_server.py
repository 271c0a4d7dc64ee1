"""/readyz answers 503 until the service is built and its own checks pass: the health server
starts first (liveness and /metrics during a slow start-up), and a Kubernetes probe must not
take a pod whose service does not exist yet for a ready one."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import i2d_cli.serve as serve_module
import i2d_segments.boot as boot
from i2d_appender.service import AppenderService
from i2d_appender.settings import AppenderSettings
from i2d_segments.bus.memory import MemoryBus
from i2d_segments.index import Index
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.runtime import Health, HealthServer
from i2d_segments.settings import ConnectionSettings
from i2d_segments.store.local import LocalStore
from tests.servers.proc import free_port, wait_for_port, wait_until


def get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    return status, json.loads(body) if path == "/readyz" else body


@pytest.fixture
def server() -> Iterator[tuple[Health, int]]:
    health = Health()
    srv = HealthServer(health, "127.0.0.1", 0).start()
    yield health, srv.port
    srv.stop()


def test_no_check_registered_is_not_ready(server: tuple[Health, int]) -> None:
    health, port = server
    assert get(port, "/readyz") == (503, {"ready": False, "started": False, "checks": {}})
    assert get(port, "/healthz")[0] == 200  # alive all the same: starting is not stalling
    health.started()  # even a service that says it is built needs a check to be ready
    assert get(port, "/readyz") == (503, {"ready": False, "started": True, "checks": {}})


def test_ready_once_started_and_every_check_passes(server: tuple[Health, int]) -> None:
    health, port = server
    index_ok = threading.Event()
    index_ok.set()
    health.add_check("index", index_ok.is_set)  # the runner's own check, before the service
    assert get(port, "/readyz") == (
        503,
        {"ready": False, "started": False, "checks": {"index": True}},
    )
    held = threading.Event()
    health.add_check("partitions", held.is_set)
    health.started()
    assert get(port, "/readyz") == (
        503,
        {"ready": False, "started": True, "checks": {"index": True, "partitions": False}},
    )
    held.set()
    assert get(port, "/readyz") == (
        200,
        {"ready": True, "started": True, "checks": {"index": True, "partitions": True}},
    )
    index_ok.clear()
    assert get(port, "/readyz")[0] == 503


def test_metrics_say_ready_and_each_check_as_readyz_does(server: tuple[Health, int]) -> None:
    """What an alert on "a service not ready" reads: the same verdict at scrape time."""
    health, port = server
    held = threading.Event()
    health.add_check("partitions", held.is_set)
    health.add_check("index", lambda: True)
    health.started()

    def series() -> dict[str, float]:
        text = get(port, "/metrics")[1].decode()
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(("img2dataset_ready", "img2dataset_readiness_check"))
        }

    assert series() == {
        "img2dataset_ready": 0.0,
        'img2dataset_readiness_check{check="index"}': 1.0,
        'img2dataset_readiness_check{check="partitions"}': 0.0,
    }
    held.set()
    assert series()["img2dataset_ready"] == 1.0
    assert get(port, "/metrics")[1].count(b"# TYPE img2dataset_ready gauge") == 1


def test_a_check_that_raises_is_not_ready(server: tuple[Health, int]) -> None:
    health, port = server

    def broken() -> bool:
        raise RuntimeError("index unreachable")

    health.add_check("index", broken)
    health.started()
    assert get(port, "/readyz") == (
        503,
        {"ready": False, "started": True, "checks": {"index": False}},
    )


def test_serve_answers_503_until_the_service_is_built_and_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`img2dataset serve appender`: its health server answers while the index connection and
    the service's construction are still under way; /readyz is 503 through both, and 200 only
    once the appender exists and holds its partition."""
    index_reached, service_built = threading.Event(), threading.Event()
    bus = MemoryBus()
    opened: list[Index] = []

    def slow_index(_settings: ConnectionSettings) -> Index:
        assert index_reached.wait(30)
        index = SqliteIndex.open(tmp_path / "index.sqlite")
        opened.append(index)
        return index

    class SlowAppender(AppenderService):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            assert service_built.wait(30)
            super().__init__(*args, **kwargs)

    stop = threading.Event()
    monkeypatch.setattr(boot, "open_kafka_bus", lambda _s: bus)
    monkeypatch.setattr(boot, "store_from", lambda _s: LocalStore(tmp_path))
    monkeypatch.setattr(boot, "index_from", slow_index)
    monkeypatch.setattr(serve_module, "stop_event_on_signals", lambda: stop)
    monkeypatch.setattr("i2d_appender.service.AppenderService", SlowAppender)
    port = free_port()
    settings = AppenderSettings(
        metrics_host="127.0.0.1", metrics_port=port, append_partitions=1, owner="test"
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            serve_module.serve("appender", settings)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run, name="serve-appender")
    thread.start()
    try:
        wait_for_port(port, 30)
        # Connecting to the index: nothing registered yet.
        assert get(port, "/readyz") == (503, {"ready": False, "started": False, "checks": {}})
        index_reached.set()
        # The index answers, the appender is still being built: its checks do not exist yet.
        wait_until(lambda: get(port, "/readyz")[1]["checks"] == {"index": True}, 30, "index")
        assert get(port, "/readyz") == (
            503,
            {"ready": False, "started": False, "checks": {"index": True}},
        )
        service_built.set()
        wait_until(lambda: get(port, "/readyz")[0] == 200, 30, "ready")
        _, body = get(port, "/readyz")
        assert body["started"] and body["checks"] == {
            "index": True,
            "partition_loop": True,
            "partitions": True,
            "partitions_owned": True,
        }
    finally:
        index_reached.set()
        service_built.set()
        stop.set()
        thread.join(30)
        for index in opened:
            index.close()
    assert not thread.is_alive() and not errors, errors
