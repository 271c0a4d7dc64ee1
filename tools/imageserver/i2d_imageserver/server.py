"""`ImageServer`: the app on a loopback port, in a background thread with its own event loop,
so synchronous tests and benchmarks can use it as a context manager."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from aiohttp import web

from i2d_imageserver.app import RobotsFile, ServerConfig, Stats, make_app
from i2d_imageserver.corpus import DEFAULT_MEMORY_BYTES
from i2d_imageserver.urls import image_path


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving; returns the runner (to clean up) and the port actually bound."""
    # handler_cancellation: a client that gives up (a timeout test) ends its slow handler.
    # A short shutdown_timeout: stopping must not wait for dripping bodies to finish.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    bound = int(runner.addresses[0][1])
    return runner, bound


class ImageServer:
    """`with ImageServer() as server: server.url_for(7, 640, 480)`.

    `count(kind)` and `hits(url)` tell how many requests the server saw (e.g. that a 404 was
    not retried); `last_headers` holds the headers of the latest request. /robots.txt is 404
    unless `robots_txt` is given (or set later: `server.robots_txt = "..."`); its requests
    are counted apart, in `robots_requests`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        corpus: Path | None = None,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        slow_delay: float = 2.0,
        drip_interval: float = 0.5,
        drip_chunks: int = 40,
        robots_txt: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.config = ServerConfig(
            corpus=corpus,
            memory_bytes=memory_bytes,
            slow_delay=slow_delay,
            drip_interval=drip_interval,
            drip_chunks=drip_chunks,
        )
        self.stats = Stats()
        self.robots = RobotsFile(robots_txt)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ImageServer:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._run, name="imageserver", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError(f"image server failed to start: {self._error}") from self._error
        if not self._ready.is_set():
            raise RuntimeError("image server did not start within 30 s")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:  # reported to start(); the thread must not die silently
            self._error = e
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        runner, self.port = await start_site(
            make_app(self.config, self.stats, self.robots), self.host, self.port
        )
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        self._thread = None

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ urls and counters

    @property
    def base_url(self) -> str:
        if not self._ready.is_set():
            raise RuntimeError("the server is not started")
        return f"http://{self.host}:{self.port}"

    def url_for(
        self,
        seed: int,
        width: int | None = None,
        height: int | None = None,
        *,
        fault: str | None = None,
        ext: str | None = None,
        **query: str | float | list[str],
    ) -> str:
        """e.g. url_for(3, 640, 480), url_for(3, fault="slow", delay=5),
        url_for(3, fault="robots", tag=["otherbot: noai"])."""
        return self.base_url + image_path(seed, width, height, fault=fault, ext=ext, query=query)

    def count(self, kind: str | None = None) -> int:
        """Requests seen for one kind ("img", a fault kind, "unknown"), or in all."""
        with self.stats.lock:
            if kind is None:
                return sum(self.stats.by_kind.values())
            return self.stats.by_kind[kind]

    def counts(self) -> Mapping[str, int]:
        with self.stats.lock:
            return dict(self.stats.by_kind)

    def hits(self, url: str) -> int:
        """Requests seen for one url's path (the query is ignored)."""
        with self.stats.lock:
            return self.stats.by_path[urlsplit(url).path]

    @property
    def last_headers(self) -> Mapping[str, str]:
        with self.stats.lock:
            return dict(self.stats.last_headers)

    @property
    def robots_txt(self) -> str | None:
        return self.robots.text

    @robots_txt.setter
    def robots_txt(self, text: str | None) -> None:
        self.robots.text = text  # one attribute, read by the server's thread: atomic

    @property
    def robots_requests(self) -> int:
        return self.robots.requests

    def reset_counters(self) -> None:
        self.stats.reset()
