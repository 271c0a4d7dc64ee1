"""The image's healthcheck script, against a real service health endpoint: Docker marks a
container unhealthy exactly when the service says it is stalled or not ready."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from i2d_segments.runtime import Health, HealthServer
from tests.deploy.helpers import ROOT
from tests.servers.proc import free_port

SCRIPT = ROOT / "deploy/docker/healthcheck.py"


def healthcheck(*args: str, env: dict[str, str] | None = None) -> int:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, env=env, timeout=30
    )
    return run.returncode


@pytest.fixture
def served() -> Iterator[tuple[Health, int]]:
    health = Health(stall_seconds=60)
    health.add_check("partitions", lambda: True)
    health.started()
    server = HealthServer(health, "127.0.0.1", 0).start()
    try:
        yield health, server.port
    finally:
        server.stop()


def test_healthy_service_passes(served: tuple[Health, int]) -> None:
    _, port = served
    assert healthcheck("--port", str(port)) == 0
    assert healthcheck("--port", str(port), "--path", "/readyz") == 0


def test_port_comes_from_the_metrics_port_setting(served: tuple[Health, int]) -> None:
    _, port = served
    assert healthcheck(env={"I2D_METRICS_PORT": str(port)}) == 0


def test_stalled_loop_fails_liveness(served: tuple[Health, int]) -> None:
    health, port = served
    health.stall_seconds = 0.0
    assert healthcheck("--port", str(port)) == 1


def test_failing_readiness_check_fails_readyz_only(served: tuple[Health, int]) -> None:
    health, port = served
    health.add_check("index", lambda: False)
    assert healthcheck("--port", str(port), "--path", "/readyz") == 1
    assert healthcheck("--port", str(port)) == 0


def test_a_service_not_built_yet_fails_readyz_only() -> None:
    health = Health(stall_seconds=60)
    health.add_check("index", lambda: True)  # the runner's check; the service's come later
    server = HealthServer(health, "127.0.0.1", 0).start()
    try:
        assert healthcheck("--port", str(server.port), "--path", "/readyz") == 1
        assert healthcheck("--port", str(server.port)) == 0
    finally:
        server.stop()


def test_nothing_listening_fails() -> None:
    assert healthcheck("--port", str(free_port()), "--timeout", "1") == 1
