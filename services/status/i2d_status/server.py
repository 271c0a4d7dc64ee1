"""Running the status app: in its own thread and event loop (tests, embedding) or as the
`img2dataset serve status` process until a stop event (SIGTERM)."""

from __future__ import annotations

import asyncio
import logging
import threading

from aiohttp import web

from i2d_status.app import StatusApp
from i2d_status.settings import StatusSettings
from i2d_status.source import StatusSource

log = logging.getLogger(__name__)


class StatusServer:
    """The app on `host:port` (port 0: a free one, see `.port`) served from a daemon thread."""

    def __init__(self, app: StatusApp, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="status-http", daemon=True)

    @property
    def port(self) -> int:
        return self._port

    def start(self, timeout: float = 30.0) -> StatusServer:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the status server did not start")
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._setup())
        except BaseException as e:  # reported to start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._teardown())
        self._loop.close()

    async def _setup(self) -> None:
        self._runner = web.AppRunner(self.app.build(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def _teardown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)


def serve_status(settings: StatusSettings, stop: threading.Event) -> None:
    """`img2dataset serve status`: serve until `stop` is set."""
    source = StatusSource.open(settings)
    try:
        server = StatusServer(StatusApp(source), settings.http_host, settings.http_port).start()
        log.info("status (%s) on http://%s:%d/", source.mode, settings.http_host, server.port)
        try:
            stop.wait()
        finally:
            server.stop()
    finally:
        source.close()
