"""A fault-injecting HTTP proxy in front of the moto S3 server, for the chaos suite.

The appender's `I2D_S3_ENDPOINT_URL` points here; the checker talks to moto directly. Each
request is forwarded unchanged (boto3 signs the proxy's host, which moto does not verify)
unless the dice pick a fault:

    error       answer 500 or 503 with an S3 error body, without forwarding: a transient error
    lost_reply  forward it (S3 applies it) and answer 500: the client cannot tell it landed
    hang        hold the request `hang_seconds`, then close the connection without answering,
                as a timed-out request looks to the client (botocore retries it like a read
                timeout; the client's own timeout is a minute, too long to wait for here)
    slow        wait `slow_seconds`, then forward: a slow store

Faults are drawn per request with `rate` (0 = a clean proxy), from the modes enabled, so a
round can turn them on and off while the appender runs. Counters say what was injected.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

MODES = ("error", "lost_reply", "hang", "slow")
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
_ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>{code}</Code><Message>injected by the chaos proxy</Message>"
    "<RequestId>chaos</RequestId></Error>"
)


@dataclass
class FaultPlan:
    rate: float = 0.0
    modes: Sequence[str] = MODES
    methods: Sequence[str] = ("GET", "PUT", "POST", "HEAD", "DELETE")
    hang_seconds: float = 2.0
    slow_seconds: float = 0.5


@dataclass
class FaultProxy:
    upstream: str  # http://127.0.0.1:PORT of moto
    seed: int = 0
    plan: FaultPlan = field(default_factory=FaultPlan)
    injected: Counter[str] = field(default_factory=Counter)
    forwarded: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def endpoint_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def set_plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self.plan = plan

    def clear(self) -> None:
        self.set_plan(FaultPlan())

    def _draw(self, method: str) -> tuple[str | None, FaultPlan]:
        with self._lock:
            plan = self.plan
            if plan.rate <= 0 or method not in plan.methods or not plan.modes:
                return None, plan
            if self._rng.random() >= plan.rate:
                return None, plan
            mode = self._rng.choice(list(plan.modes))
            self.injected[mode] += 1
            return mode, plan

    def _count_forward(self) -> None:
        with self._lock:
            self.forwarded += 1

    def start(self) -> FaultProxy:
        proxy = self
        target = urlparse(self.upstream)
        assert target.hostname is not None and target.port is not None
        up_host, up_port = target.hostname, target.port

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive and Expect: 100-continue, as boto3 uses

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the test log is the appender's

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD" and body:
                    self.wfile.write(body)

            def _error(self, status: int) -> None:
                code = "InternalError" if status == 500 else "SlowDown"
                body = _ERROR_BODY.format(code=code).encode()
                self._send(status, [("Content-Type", "application/xml")], body)

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(up_host, up_port, timeout=60)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP
                    }
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    proxy._count_forward()
                    return resp.status, resp.getheaders(), data
                finally:
                    conn.close()

            def _handle(self) -> None:
                body = self._body()
                mode, plan = proxy._draw(self.command)
                if mode == "error":
                    self._error(proxy._rng.choice((500, 503)))
                    return
                if mode == "hang":
                    time.sleep(plan.hang_seconds)
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(2)
                    return
                if mode == "slow":
                    time.sleep(plan.slow_seconds)
                status, headers, data = self._forward(body)
                if mode == "lost_reply":
                    self._error(500)
                    return
                self._send(status, headers, data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextlib.contextmanager
def fault_proxy(upstream: str, seed: int = 0) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream, seed=seed).start()
    try:
        yield proxy
    finally:
        proxy.stop()
