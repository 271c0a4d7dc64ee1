"""The aiohttp application: dashboard, REST API, /metrics, /healthz, /readyz on one port.

Read-only. Figures are recomputed by one background task every `refresh_seconds` (also the
rate observations and the charts' history) and served from memory, so a hundred open
dashboards cost the index the same as one; `/api/index`, `/api/queue` and `/api/segments`
query on demand. All blocking
adapter calls run on a single worker thread: the adapters are not built for concurrent use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from i2d_segments.runtime import Health, ReadinessCollector
from i2d_status.metrics import status_registry
from i2d_status.schema import HistoryPoint, HistoryResponse, StatusResponse, json_schema
from i2d_status.source import StatusSource

log = logging.getLogger(__name__)
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DASHBOARD = resources.files("i2d_status").joinpath("dashboard.html").read_bytes()


def _json(model: BaseModel | dict[str, Any], status: int = 200) -> web.Response:
    body = model.model_dump_json() if isinstance(model, BaseModel) else json.dumps(model)
    return web.Response(
        text=body,
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


class StatusApp:
    def __init__(self, source: StatusSource, health: Health | None = None) -> None:
        self.source = source
        self.refresh_seconds = source.settings.refresh_seconds
        self.health = health or Health(stall_seconds=max(30.0, 10 * self.refresh_seconds))
        self.latest: StatusResponse | None = None
        self.history: deque[HistoryPoint] = deque(maxlen=source.settings.history_points)
        self.last_error: str | None = None
        self.registry = status_registry(lambda: self.latest)
        self.registry.register(ReadinessCollector(self.health))
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="status-io")
        self._task: asyncio.Task[None] | None = None
        self.health.add_check("index", lambda: source.index_ok)
        self.health.add_check("bus", lambda: source.bus_ok)
        self.health.add_check("refreshed", lambda: self.latest is not None)
        self.health.started()  # every check of this service is registered

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def refresh(self) -> StatusResponse:
        snapshot = await self._call(self.source.status)
        self.latest, self.last_error = snapshot, None
        p, r = snapshot.progress, snapshot.rates
        self.history.append(
            HistoryPoint(
                at=snapshot.generated_at,
                samples=p.samples,
                successes=p.successes,
                failures=p.failures,
                images_per_second=r.images_per_second,
                samples_per_second=r.samples_per_second,
                failures_per_second=r.failures_per_second,
            )
        )
        return snapshot

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as e:  # the index may be briefly down: report, keep trying
                self.last_error = str(e)
                log.warning("status refresh failed: %s", e)
            self.health.beat()
            await asyncio.sleep(self.refresh_seconds)

    async def _start(self, _: web.Application) -> None:
        self._task = asyncio.create_task(self._refresh_loop())

    async def _stop(self, _: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    # -- handlers ---------------------------------------------------------------------------

    async def dashboard(self, _: web.Request) -> web.Response:
        return web.Response(body=DASHBOARD, content_type="text/html", charset="utf-8")

    async def api_status(self, _: web.Request) -> web.Response:
        snapshot = self.latest or await self.refresh()
        return _json(snapshot)

    async def api_history(self, _: web.Request) -> web.Response:
        if not self.history:
            await self.refresh()
        return _json(
            HistoryResponse(refresh_seconds=self.refresh_seconds, points=list(self.history))
        )

    async def api_index(self, _: web.Request) -> web.Response:
        return _json(await self._call(self.source.index_view))

    async def api_queue(self, _: web.Request) -> web.Response:
        return _json(await self._call(self.source.queue))

    async def api_segments(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "50"))
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            return _json({"error": "limit and offset must be integers"}, status=400)
        return _json(await self._call(self.source.segments_page, limit, offset))

    async def api_schema(self, _: web.Request) -> web.Response:
        return _json(json_schema())

    async def metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, _: web.Request) -> web.Response:
        ok = self.health.alive()
        return web.Response(text="ok\n" if ok else "stalled\n", status=200 if ok else 503)

    async def readyz(self, _: web.Request) -> web.Response:
        ok, body = self.health.ready_body()
        if self.last_error:
            body["error"] = self.last_error
        return _json(body, status=200 if ok else 503)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A dependency failing mid-request is a 503 with its reason, not a stack trace."""
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as e:
            log.warning("%s failed: %s", request.path, e)
            return _json({"error": str(e)}, status=503)

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.router.add_get("/", self.dashboard)
        app.router.add_get("/api/status", self.api_status)
        app.router.add_get("/api/history", self.api_history)
        app.router.add_get("/api/index", self.api_index)
        app.router.add_get("/api/queue", self.api_queue)
        app.router.add_get("/api/segments", self.api_segments)
        app.router.add_get("/api/schema", self.api_schema)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app
