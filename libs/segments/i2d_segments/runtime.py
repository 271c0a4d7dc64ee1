"""What every long-running service shares: health state, the /metrics + health endpoint, signals.

- `/healthz` (liveness): the service loop has beaten within `stall_seconds`; a wedged loop gets
  restarted by the orchestrator.
- `/readyz` (readiness): the service is built (`Health.started()`: its checks are registered)
  and every registered check passes (dependencies reachable, partitions assigned, no partition
  stopped on a permanent error); it answers JSON with each check. The server starts before the
  service is built (liveness and /metrics answer during a slow start-up), so until then, and
  with no check at all, the answer is 503.
- `/metrics`: prometheus-client's registry, plus `img2dataset_ready` and
  `img2dataset_readiness_check{check}` computed from the same checks at scrape time, so an
  alert can say which dependency made a service not ready.
- Signals (`stop_event_on_signals`, from `signals`): the first SIGTERM or SIGINT sets a stop
  event (the loop finishes the work in flight and commits it); a second one exits at once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from i2d_segments.signals import stop_event_on_signals

__all__ = [
    "Health",
    "HealthServer",
    "ReadinessCollector",
    "retry_call",
    "stop_event_on_signals",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


class Health:
    """Liveness beats from the service loop and named readiness checks."""

    def __init__(self, stall_seconds: float = 120.0) -> None:
        self.stall_seconds = stall_seconds
        self._last_beat = time.monotonic()
        self._checks: dict[str, Callable[[], bool]] = {}
        self._lock = threading.Lock()
        self._started = False

    def started(self) -> None:
        """The service is built and has registered its own checks: from now on readiness is
        theirs. Before this, whatever checks exist (a dependency registered by the runner),
        the service is not ready."""
        self._started = True

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self._last_beat < self.stall_seconds

    def add_check(self, name: str, check: Callable[[], bool]) -> None:
        with self._lock:
            self._checks[name] = check

    def readiness(self) -> dict[str, bool]:
        with self._lock:
            checks = dict(self._checks)
        out: dict[str, bool] = {}
        for name, check in checks.items():
            try:
                out[name] = bool(check())
            except Exception:  # a failing probe is "not ready", never a crash
                log.debug("readiness check %s raised", name, exc_info=True)
                out[name] = False
        return out

    def ready(self, checks: dict[str, bool] | None = None) -> bool:
        """Started, with at least one check, and every check passing (`checks`: a result of
        `readiness()` to judge instead of asking again)."""
        if checks is None:
            checks = self.readiness()
        return self._started and bool(checks) and all(checks.values())

    def ready_body(self) -> tuple[bool, dict[str, object]]:
        """/readyz's verdict and JSON body: `ready`, `started` and each check."""
        checks = self.readiness()
        ok = self.ready(checks)
        return ok, {"ready": ok, "started": self._started, "checks": checks}


class ReadinessCollector(Collector):
    """`img2dataset_ready` (what /readyz answers, 1 or 0) and `img2dataset_readiness_check`
    per check, evaluated when scraped."""

    def __init__(self, health: Health) -> None:
        self.health = health

    def collect(self) -> Iterator[Metric]:
        checks = self.health.readiness()
        ready = GaugeMetricFamily(
            "img2dataset_ready", "1 when the service is ready (as /readyz answers), else 0."
        )
        ready.add_metric([], 1.0 if self.health.ready(checks) else 0.0)
        yield ready
        per_check = GaugeMetricFamily(
            "img2dataset_readiness_check",
            "Each readiness check of the service: 1 passing, 0 failing.",
            labels=["check"],
        )
        for name, ok in sorted(checks.items()):
            per_check.add_metric([name], 1.0 if ok else 0.0)
        yield per_check


class _Handler(BaseHTTPRequestHandler):
    health: Health  # set on the per-server subclass
    readiness: CollectorRegistry  # the health's ReadinessCollector, per server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = generate_latest(REGISTRY) + generate_latest(self.readiness)
            self._send(200, body, CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok = self.health.alive()
            self._send(200 if ok else 503, b"ok\n" if ok else b"stalled\n", "text/plain")
        elif path == "/readyz":
            ok, verdict = self.health.ready_body()
            self._send(200 if ok else 503, json.dumps(verdict).encode(), "application/json")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http %s", format % args)


class HealthServer:
    """Serves /metrics, /healthz and /readyz from a daemon thread."""

    def __init__(self, health: Health, host: str, port: int) -> None:
        readiness = CollectorRegistry(auto_describe=False)
        readiness.register(ReadinessCollector(health))
        handler = type("Handler", (_Handler,), {"health": health, "readiness": readiness})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def retry_call(
    fn: Callable[[], T],
    *,
    what: str,
    retry_on: tuple[type[BaseException], ...],
    never_retry: tuple[type[BaseException], ...] = (),
    attempts: int = 6,
    base_delay: float = 0.2,
    max_delay: float = 10.0,
    stop: threading.Event | None = None,
) -> T:
    """Call `fn`, retrying transient errors with bounded exponential backoff; the last error
    propagates, so a permanent failure stops the caller loudly instead of skipping data.
    `never_retry` names subclasses of `retry_on` that are answers, not accidents (a fenced
    commit will never succeed)."""
    delay = base_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except never_retry:
            raise
        except retry_on as e:
            if attempt == attempts or (stop is not None and stop.is_set()):
                raise
            log.warning("%s failed (attempt %d/%d): %s; retrying", what, attempt, attempts, e)
            if stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)
            delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")
