"""The aiohttp application: photos under /img/, the same photos with faults under /fault/,
and a /robots.txt when one is set (404 otherwise)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDict

from i2d_imageserver import synth
from i2d_imageserver.corpus import DEFAULT_MEMORY_BYTES, Corpus
from i2d_imageserver.urls import (
    BOMB_SIZE,
    EXTENSIONS,
    FAULTS,
    MAX_BOMB_SIDE,
    BadPath,
    ImageName,
    parse_name,
)

# What `python -m i2d_imageserver` serves as /robots.txt unless told otherwise: every image
# and fault path allowed, the rest not, so a crawler that reads it matches each url against
# a rule of each kind (as on a real site) and fetches every url of a list.
BENCH_ROBOTS_TXT = """\
# i2d image server
User-agent: *
Allow: /img/
Allow: /fault/
Disallow: /
"""


@dataclass
class RobotsFile:
    """The /robots.txt served (None: 404); it may change while the server runs."""

    text: str | None = None
    requests: int = 0  # how many were served (404s included)


@dataclass(frozen=True)
class ServerConfig:
    corpus: Path | None = None
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    slow_delay: float = 2.0  # below img2dataset's default timeout (10 s): slow, yet succeeds
    drip_interval: float = 0.5
    drip_chunks: int = 40  # so a dripped body takes ~20 s: longer than any sane timeout


@dataclass
class Stats:
    """Requests seen, by kind ("img", a fault kind, or "unknown") and by path.

    Written on the server's loop, read from tests on another thread: hence the lock."""

    by_kind: Counter[str] = field(default_factory=Counter)
    by_path: Counter[str] = field(default_factory=Counter)
    last_headers: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, request: web.Request) -> None:
        with self.lock:
            self.by_kind[kind] += 1
            self.by_path[request.path] += 1
            self.last_headers = dict(request.headers)

    def reset(self) -> None:
        with self.lock:
            self.by_kind.clear()
            self.by_path.clear()
            self.last_headers = {}


STATS = web.AppKey("stats", Stats)
ROBOTS = web.AppKey("robots", RobotsFile)
CORPUS = web.AppKey("corpus", Corpus)
CONFIG = web.AppKey("config", ServerConfig)

Handler = Callable[[web.Request, ImageName], Awaitable[web.StreamResponse]]


def make_app(
    config: ServerConfig, stats: Stats | None = None, robots: RobotsFile | None = None
) -> web.Application:
    app = web.Application()
    app[CONFIG] = config
    app[STATS] = stats or Stats()
    app[ROBOTS] = robots or RobotsFile()
    app[CORPUS] = Corpus(config.corpus, config.memory_bytes)
    app.router.add_get("/", index)
    app.router.add_get("/robots.txt", robots_txt)
    app.router.add_get("/img/{name}", image)
    app.router.add_get("/fault/{kind}/{name}", fault)

    async def close_corpus(app: web.Application) -> None:
        app[CORPUS].close()

    app.on_cleanup.append(close_corpus)
    return app


async def index(request: web.Request) -> web.Response:
    lines = [
        "i2d image server",
        "  /img/<seed>[_<w>x<h>].<jpg|png|webp>",
        *(f"  /fault/{kind}/<seed>[_<w>x<h>].<ext>: {what}" for kind, what in FAULTS.items()),
    ]
    return web.Response(text="\n".join(lines) + "\n")


async def robots_txt(request: web.Request) -> web.Response:
    """Counted apart from the images (`ImageServer.robots_requests`): tests count image
    requests, and a crawler adds one robots.txt request per site."""
    robots = request.app[ROBOTS]
    robots.requests += 1
    if robots.text is None:
        raise web.HTTPNotFound(text="no robots.txt\n")
    return web.Response(text=robots.text, content_type="text/plain")


async def photo_bytes(request: web.Request, name: ImageName, variant: str = "photo") -> bytes:
    return await request.app[CORPUS].get(f"{variant}-{name.file_name}", _maker(variant, name))


async def image(request: web.Request) -> web.StreamResponse:
    stats = request.app[STATS]
    try:
        name = parse_name(request.match_info["name"])
    except BadPath as e:
        stats.record("unknown", request)
        raise web.HTTPNotFound(text=str(e)) from e
    stats.record("img", request)
    data = await photo_bytes(request, name)
    return await send(request, data, EXTENSIONS[name.ext])


async def fault(request: web.Request) -> web.StreamResponse:
    stats = request.app[STATS]
    kind = request.match_info["kind"]
    handler = FAULT_HANDLERS.get(kind)
    try:
        if handler is None:
            raise BadPath(f"unknown fault kind {kind!r}")
        if kind == "bomb":
            name = parse_name(
                request.match_info["name"], default_size=BOMB_SIZE, max_side=MAX_BOMB_SIDE
            )
        elif kind in _NO_BODY:
            # Their handlers serve no photo: the seed's size (numpy's generator, a quarter of
            # the server's CPU per 404) is not computed.
            name = parse_name(request.match_info["name"], default_size=NO_PHOTO_SIZE)
        else:
            name = parse_name(request.match_info["name"])
    except BadPath as e:
        stats.record("unknown", request)
        raise web.HTTPNotFound(text=str(e)) from e
    stats.record(kind, request)
    return await handler(request, name)


async def send(
    request: web.Request, data: bytes, content_type: str, headers: CIMultiDict[str] | None = None
) -> web.StreamResponse:
    """The body at once, or dripped when the url asks (?interval=) so a test can tell whether
    a client read it at all."""
    if "interval" in request.query:
        return await drip(request, data, content_type, headers)
    out = CIMultiDict(headers or {})
    out["Content-Type"] = content_type
    return web.Response(body=data, headers=out)


async def drip(
    request: web.Request, data: bytes, content_type: str, headers: CIMultiDict[str] | None = None
) -> web.StreamResponse:
    config = request.app[CONFIG]
    interval = float(request.query.get("interval", config.drip_interval))
    chunks = max(1, int(request.query.get("chunks", config.drip_chunks)))
    resp = web.StreamResponse(headers=CIMultiDict(headers or {}))
    resp.content_type = content_type
    resp.content_length = len(data)
    await resp.prepare(request)
    step = -(-len(data) // chunks)
    with contextlib.suppress(ConnectionError):
        for start in range(0, len(data), step):
            await resp.write(data[start : start + step])
            await asyncio.sleep(interval)
        await resp.write_eof()
    return resp


def _close(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


# --------------------------------------------------------------------------- fault handlers


async def f_missing(request: web.Request, name: ImageName) -> web.StreamResponse:
    raise web.HTTPNotFound(text="no such image\n")


async def f_error(request: web.Request, name: ImageName) -> web.StreamResponse:
    raise web.HTTPInternalServerError(text="server error\n")


def _retry_after(request: web.Request) -> CIMultiDict[str]:
    value = request.query.get("retry_after")
    return CIMultiDict({"Retry-After": value} if value is not None else {})


async def f_unavailable(request: web.Request, name: ImageName) -> web.StreamResponse:
    raise web.HTTPServiceUnavailable(text="try again later\n", headers=_retry_after(request))


async def f_flaky(request: web.Request, name: ImageName) -> web.StreamResponse:
    stats = request.app[STATS]
    with stats.lock:
        first = stats.by_path[request.path] <= 1
    if first:
        raise web.HTTPServiceUnavailable(text="try again later\n", headers=_retry_after(request))
    return await send(request, await photo_bytes(request, name), EXTENSIONS[name.ext])


async def f_slow(request: web.Request, name: ImageName) -> web.StreamResponse:
    delay = float(request.query.get("delay", request.app[CONFIG].slow_delay))
    data = await photo_bytes(request, name)
    await asyncio.sleep(delay)
    return await send(request, data, EXTENSIONS[name.ext])


async def f_drip(request: web.Request, name: ImageName) -> web.StreamResponse:
    return await drip(request, await photo_bytes(request, name), EXTENSIONS[name.ext])


async def f_truncated(request: web.Request, name: ImageName) -> web.StreamResponse:
    data = await photo_bytes(request, name)
    resp = web.StreamResponse()
    resp.content_type = EXTENSIONS[name.ext]
    resp.content_length = len(data)  # promised; only half is sent
    await resp.prepare(request)
    with contextlib.suppress(ConnectionError):
        await resp.write(data[: len(data) // 2])  # returns once the transport took it
    _close(request)
    return resp


async def f_reset(request: web.Request, name: ImageName) -> web.StreamResponse:
    _close(request)
    return web.Response(status=204)  # never reaches the client


async def f_notimage(request: web.Request, name: ImageName) -> web.StreamResponse:
    return await send(request, synth.NOT_AN_IMAGE, "image/jpeg")


async def f_noai(request: web.Request, name: ImageName) -> web.StreamResponse:
    data = await photo_bytes(request, name)
    return await send(request, data, EXTENSIONS[name.ext], CIMultiDict({"X-Robots-Tag": "noai"}))


async def f_robots(request: web.Request, name: ImageName) -> web.StreamResponse:
    headers: CIMultiDict[str] = CIMultiDict()
    for value in request.query.getall("tag", []):
        headers.add("X-Robots-Tag", value)
    return await send(request, await photo_bytes(request, name), EXTENSIONS[name.ext], headers)


async def f_alpha(request: web.Request, name: ImageName) -> web.StreamResponse:
    return await send(request, await photo_bytes(request, name, "alpha"), "image/png")


async def f_exif(request: web.Request, name: ImageName) -> web.StreamResponse:
    return await send(request, await photo_bytes(request, name, "exif"), "image/jpeg")


async def f_datamining(request: web.Request, name: ImageName) -> web.StreamResponse:
    value = request.query.get("value", "DMI-PROHIBITED-AIMLTRAINING")
    data = synth.jpeg_with_xmp(await photo_bytes(request, name), synth.xmp_data_mining(value))
    return await send(request, data, "image/jpeg")


async def f_bomb(request: web.Request, name: ImageName) -> web.StreamResponse:
    return await send(request, await photo_bytes(request, name, "bomb"), "image/png")


async def f_gzipbomb(request: web.Request, name: ImageName) -> web.StreamResponse:
    megabytes = int(request.query.get("mb", "64"))
    body = await request.app[CORPUS].get(
        f"gzipbomb-{megabytes}mb.gz", lambda: synth.gzip_bomb(megabytes << 20)
    )
    headers = CIMultiDict({"Content-Encoding": "gzip"})
    return await send(request, body, EXTENSIONS[name.ext], headers)


async def f_redirect(request: web.Request, name: ImageName) -> web.StreamResponse:
    raise web.HTTPFound(location=request.query.get("to", f"/img/{name.file_name}"))


FAULT_HANDLERS: dict[str, Handler] = {
    "missing": f_missing,
    "error": f_error,
    "unavailable": f_unavailable,
    "flaky": f_flaky,
    "slow": f_slow,
    "drip": f_drip,
    "truncated": f_truncated,
    "reset": f_reset,
    "notimage": f_notimage,
    "noai": f_noai,
    "robots": f_robots,
    "alpha": f_alpha,
    "exif": f_exif,
    "datamining": f_datamining,
    "bomb": f_bomb,
    "gzipbomb": f_gzipbomb,
    "redirect": f_redirect,
}
assert set(FAULT_HANDLERS) == set(FAULTS), "every documented fault has a handler"


_VARIANT_OF_FAULT = {"alpha": "alpha", "exif": "exif", "bomb": "bomb"}
# Faults that serve no photo of their name (the size in their ImageName is NO_PHOTO_SIZE).
_NO_BODY = {"missing", "error", "unavailable", "reset", "notimage", "gzipbomb"}
NO_PHOTO_SIZE = (1, 1)


async def warm(app: web.Application, paths: list[str], concurrency: int = 8) -> int:
    """Generate the bodies behind `paths` ahead of time (benchmarks measure serving, not
    generation). Returns how many bodies were made or found."""
    corpus = app[CORPUS]
    jobs: list[tuple[str, Callable[[], bytes]]] = []
    for path in paths:
        parts = path.split("?", 1)[0].strip("/").split("/")
        variant = "photo"
        if parts[0] == "fault" and len(parts) == 3:
            if parts[1] in _NO_BODY:
                continue
            variant = _VARIANT_OF_FAULT.get(parts[1], "photo")
        elif not (parts[0] == "img" and len(parts) == 2):
            continue
        try:
            if variant == "bomb":
                name = parse_name(parts[-1], default_size=BOMB_SIZE, max_side=MAX_BOMB_SIDE)
            else:
                name = parse_name(parts[-1])
        except BadPath:
            continue
        jobs.append((f"{variant}-{name.file_name}", _maker(variant, name)))
    gate = asyncio.Semaphore(concurrency)

    async def one(key: str, make: Callable[[], bytes]) -> None:
        async with gate:
            await corpus.get(key, make)

    await asyncio.gather(*(one(k, m) for k, m in jobs))
    return len(jobs)


def _maker(variant: str, name: ImageName) -> Callable[[], bytes]:
    if variant == "alpha":
        return lambda: synth.with_alpha(name.seed, name.width, name.height)
    if variant == "exif":
        return lambda: synth.photo_with_exif(name.seed, name.width, name.height)
    if variant == "bomb":
        return lambda: synth.png_bomb(name.width, name.height)
    return lambda: synth.photo(name.seed, name.width, name.height, name.ext)
