"""robots.txt against local sites: one aiohttp server on 127.0.0.1 plays many sites (told
apart by the Host header; the client's name table points them all there), each with its
own robots.txt, and logs every request it gets with its time. The logs tell which urls were
never requested, how many robots.txt requests a site cost and how requests were spaced."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from aiohttp import web

from i2d_fetcher.http.client import Downloaded, FetchFailed, HttpClient, download, open_client
from i2d_fetcher.http.resolver import StaticLookup
from i2d_fetcher.http.robotscache import DISALLOWED_MESSAGE
from i2d_fetcher.options import FetchOptions
from tests.fetcher.helpers import local_options
from tests.servers.proc import free_port

T = TypeVar("T")
MB = 1 << 20
IMAGE = b"\xff\xd8\xff\xe0 not decoded here"
FAST = local_options(timeout=5, retry_backoff=0.01)


@dataclass
class Site:
    robots: str | None = None  # None: 404
    status: int = 200  # of /robots.txt
    delay: float = 0.0  # before /robots.txt answers
    hops: int = 0  # redirects before /robots.txt's body (/robots.txt -> /hop/<hops-1> ...)
    location: str | None = None  # /robots.txt redirects there
    image_delay: float = 0.0


@dataclass
class Sites:
    sites: dict[str, Site] = field(default_factory=dict)
    log: list[tuple[str, str, float]] = field(default_factory=list)  # host, path, time
    port: int = field(default_factory=free_port)  # known before serving: urls name it

    def url(self, host: str, path: str) -> str:
        return f"http://{host}:{self.port}{path}"

    def requests(self, host: str, path: str | None = None) -> list[float]:
        return [t for h, p, t in self.log if h == host and (path is None or p == path)]

    def robots_requests(self, host: str) -> int:
        return sum(1 for h, p, _ in self.log if h == host and (p == "/robots.txt" or "/hop/" in p))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        host = request.host.rsplit(":", 1)[0]
        self.log.append((host, request.path_qs, time.monotonic()))
        site = self.sites.setdefault(host, Site())
        path = request.path
        if path == "/robots.txt" or path.startswith("/hop/"):
            left = site.hops if path == "/robots.txt" else int(path.rsplit("/", 1)[1])
            if path == "/robots.txt" and site.location is not None:
                raise web.HTTPFound(site.location)
            if left > 0:
                raise web.HTTPMovedPermanently(f"/hop/{left - 1}")
            if site.delay:
                await asyncio.sleep(site.delay)
            if site.status != 200:
                return web.Response(status=site.status, text="no\n")
            if site.robots is None:
                raise web.HTTPNotFound()
            return web.Response(text=site.robots, content_type="text/plain")
        if path.startswith("/redirect"):
            raise web.HTTPFound(request.query["to"])
        if site.image_delay:
            await asyncio.sleep(site.image_delay)
        return web.Response(body=IMAGE, content_type="image/jpeg")


@asynccontextmanager
async def serving(sites: Sites) -> Any:
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", sites.handle)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", sites.port)
    await site.start()
    try:
        yield sites
    finally:
        await runner.cleanup()


def run_sites(
    sites: Sites,
    opts: FetchOptions,
    body: Callable[[HttpClient], Awaitable[T]],
    workers: int = 1,
) -> T:
    async def main() -> T:
        async with serving(sites):
            names = {name: ["127.0.0.1"] for name in [*sites.sites, "other.test"]}
            async with open_client(opts, 64, StaticLookup(names), workers=workers) as client:
                return await body(client)

    return asyncio.run(main())


async def outcome(client: HttpClient, url: str, opts: FetchOptions = FAST) -> str:
    """`ok`, or the failure's message."""
    try:
        got = await download(client, url, opts, max_bytes=MB)
    except FetchFailed as e:
        return e.message
    assert isinstance(got, Downloaded)
    return "ok"


def outcomes(sites: Sites, urls: list[str], opts: FetchOptions = FAST) -> list[str]:
    async def body(client: HttpClient) -> list[str]:
        return list(await asyncio.gather(*(outcome(client, u, opts) for u in urls)))

    return run_sites(sites, opts, body)


@pytest.fixture
def sites() -> Iterator[Sites]:
    yield Sites()


# --------------------------------------------------------------------------- what is allowed


def test_disallowed_urls_are_never_requested_and_a_site_costs_one_robots_request(
    sites: Sites,
) -> None:
    sites.sites["a.test"] = Site("User-agent: *\nDisallow: /private/\nAllow: /private/ok.jpg\n")
    sites.sites["b.test"] = Site()  # no robots.txt: 404, everything allowed
    paths = ["/1.jpg", "/2.jpg", "/private/x.jpg", "/private/ok.jpg"]
    paths.append("/redirect?to=/private/y.jpg")  # a redirect hop is checked too
    urls = [sites.url("a.test", p) for p in paths]
    urls += [sites.url("b.test", f"/private/{n}.jpg") for n in range(20)]
    got = outcomes(sites, urls)
    assert got[:5] == ["ok", "ok", DISALLOWED_MESSAGE, "ok", DISALLOWED_MESSAGE]
    assert got[5:] == ["ok"] * 20
    assert sites.requests("a.test", "/private/x.jpg") == []
    assert sites.requests("a.test", "/private/y.jpg") == []
    assert sites.robots_requests("a.test") == 1
    assert sites.robots_requests("b.test") == 1  # 20 rows arriving at once: one request


def test_groups_naming_our_tokens_and_wildcards(sites: Sites) -> None:
    sites.sites["tool.test"] = Site(
        "User-agent: *\nAllow: /\n\nUser-agent: img2dataset\nDisallow: /\n"
    )
    sites.sites["mine.test"] = Site("User-agent: MyBot\nDisallow: /mine/\n")
    sites.sites["wild.test"] = Site("User-agent: *\nDisallow: /*.png$\nDisallow: /tmp*/\n")
    urls = [
        sites.url("tool.test", "/a.jpg"),
        sites.url("mine.test", "/mine/a.jpg"),
        sites.url("wild.test", "/a.png"),
        sites.url("wild.test", "/a.png?size=large"),
        sites.url("wild.test", "/tmp42/a.jpg"),
        sites.url("wild.test", "/a.jpg"),
    ]
    no = DISALLOWED_MESSAGE
    assert outcomes(sites, urls) == [no, "ok", no, "ok", no, "ok"]
    mine = FAST.model_copy(update={"user_agent_token": "mybot"})
    assert outcomes(sites, [sites.url("mine.test", "/mine/a.jpg")], mine) == [DISALLOWED_MESSAGE]


def test_respect_robots_txt_false_never_asks(sites: Sites) -> None:
    sites.sites["a.test"] = Site("User-agent: *\nDisallow: /\n")
    off = FAST.model_copy(update={"respect_robots_txt": False})
    assert outcomes(sites, [sites.url("a.test", "/x.jpg")], off) == ["ok"]
    assert sites.robots_requests("a.test") == 0


# --------------------------------------------------------------------------- when it fails


def test_a_robots_txt_that_times_out_disallows_the_site_for_a_while(sites: Sites) -> None:
    sites.sites["slow.test"] = Site("User-agent: *\nAllow: /\n", delay=5)
    opts = FAST.model_copy(update={"timeout": 0.5, "host_cooldown": 0.6})
    urls = [sites.url("slow.test", f"/{n}.jpg") for n in range(5)]

    async def body(client: HttpClient) -> tuple[list[str], float, list[str]]:
        t0 = time.monotonic()
        first = list(await asyncio.gather(*(outcome(client, u, opts) for u in urls)))
        elapsed = time.monotonic() - t0
        sites.sites["slow.test"].delay = 0
        await asyncio.sleep(0.7)  # the site's unreachable verdict expires: it is asked again
        return first, elapsed, [await outcome(client, urls[0], opts)]

    first, elapsed, later = run_sites(sites, opts, body)
    unreachable = "disallowed by robots.txt (unreachable: timed out after 0.5s)"
    assert sorted(first) == [unreachable] * 4 + ["timed out after 0.5s"]
    assert elapsed < 2.5  # one robots.txt timeout, not one per row
    assert later == ["ok"]
    assert sites.robots_requests("slow.test") == 2
    assert len(sites.requests("slow.test", "/0.jpg")) == 1  # only once allowed


def test_waiting_for_robots_txt_is_not_counted_against_the_row_timeout(sites: Sites) -> None:
    sites.sites["a.test"] = Site("User-agent: *\nAllow: /\n", delay=0.6, image_delay=0.6)
    opts = FAST.model_copy(update={"timeout": 1.0})
    assert outcomes(sites, [sites.url("a.test", "/x.jpg")], opts) == ["ok"]


def test_a_5xx_robots_txt_disallows_for_a_while_then_it_is_asked_again(sites: Sites) -> None:
    sites.sites["err.test"] = Site("User-agent: *\nAllow: /\n", status=500)
    opts = FAST.model_copy(update={"host_cooldown": 0.5})
    urls = [sites.url("err.test", f"/{n}.jpg") for n in range(6)]

    async def body(client: HttpClient) -> tuple[list[str], list[str]]:
        first = list(await asyncio.gather(*(outcome(client, u, opts) for u in urls)))
        sites.sites["err.test"].status = 200
        await asyncio.sleep(0.6)
        return first, [await outcome(client, u, opts) for u in urls[:2]]

    first, later = run_sites(sites, opts, body)
    message = "disallowed by robots.txt (unreachable: HTTP Error 500: Internal Server Error)"
    assert first == [message] * 6
    assert later == ["ok", "ok"]
    assert sites.robots_requests("err.test") == 2
    assert len([p for h, p, _ in sites.log if h == "err.test" and p.endswith(".jpg")]) == 2


# --------------------------------------------------------------------------- redirects, size


def test_redirects_are_followed_up_to_five(sites: Sites) -> None:
    rules = "User-agent: *\nDisallow: /x\n"
    sites.sites["five.test"] = Site(rules, hops=5)
    sites.sites["six.test"] = Site(rules, hops=6)  # one too many: "unavailable", all allowed
    sites.sites["moved.test"] = Site(location="/hop/0")
    sites.sites["far.test"] = Site()  # its robots.txt is five.test's
    urls = [sites.url(h, "/x.jpg") for h in ("five.test", "six.test", "moved.test", "far.test")]
    sites.sites["moved.test"].robots = rules
    sites.sites["far.test"].location = sites.url("five.test", "/hop/0")
    no = DISALLOWED_MESSAGE
    assert outcomes(sites, urls) == [no, "ok", no, no]
    assert sites.robots_requests("five.test") == 7  # its 6, and far.test's last hop
    assert sites.robots_requests("six.test") == 6  # /robots.txt and 5 hops followed


def test_a_huge_robots_txt_is_read_up_to_500_kib(sites: Sites) -> None:
    padding = "".join(f"# comment line {n:06d} {'x' * 40}\n" for n in range(12_000))  # ~650 KB
    text = "User-agent: *\nDisallow: /early/\n" + padding + "Disallow: /late/\n"
    sites.sites["big.test"] = Site(text)
    urls = [sites.url("big.test", "/early/a.jpg"), sites.url("big.test", "/late/a.jpg")]
    assert outcomes(sites, urls) == [DISALLOWED_MESSAGE, "ok"]


# --------------------------------------------------------------------------- over time


def test_a_site_changing_its_robots_txt_mid_run_keeps_the_cached_answer(sites: Sites) -> None:
    sites.sites["a.test"] = Site("User-agent: *\nAllow: /\n")

    async def body(client: HttpClient) -> list[str]:
        first = await outcome(client, sites.url("a.test", "/1.jpg"))
        sites.sites["a.test"].robots = "User-agent: *\nDisallow: /\n"
        return [first, await outcome(client, sites.url("a.test", "/2.jpg"))]

    assert run_sites(sites, FAST, body) == ["ok", "ok"]
    assert sites.robots_requests("a.test") == 1


@pytest.mark.parametrize(
    ("crawl_delay", "rate", "workers", "gap"),
    [
        (0.2, 0.0, 1, 0.2),  # the Crawl-delay spaces the requests
        (0.2, 2.0, 1, 0.5),  # host_rate_limit stays the upper bound on the rate
        (0.2, 0.0, 2, 0.4),  # one of 2 workers: its part of the site's rate
    ],
)
def test_crawl_delay_spaces_a_hosts_requests(
    sites: Sites, crawl_delay: float, rate: float, workers: int, gap: float
) -> None:
    sites.sites["polite.test"] = Site(f"User-agent: *\nCrawl-delay: {crawl_delay}\n")
    sites.sites["other.test"] = Site()  # another host is not slowed down
    opts = FAST.model_copy(update={"host_rate_limit": rate})
    urls = [sites.url("polite.test", f"/{n}.jpg") for n in range(3)]
    if not rate:
        urls += [sites.url("other.test", f"/{n}.jpg") for n in range(8)]

    async def body(client: HttpClient) -> list[str]:
        return list(await asyncio.gather(*(outcome(client, u, opts) for u in urls)))

    t0 = time.monotonic()
    assert run_sites(sites, opts, body, workers=workers) == ["ok"] * len(urls)
    assert time.monotonic() - t0 < 3 * gap + 2.0
    times = sorted(t for h, p, t in sites.log if h == "polite.test" and p.endswith(".jpg"))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Starts are spaced by `gap`; arrivals jitter with the loops' lag (a busy machine).
    assert len(gaps) == 2 and min(gaps) >= 0.75 * gap and sum(gaps) >= 1.8 * gap, gaps
    other = sorted(t for h, p, t in sites.log if h == "other.test" and p.endswith(".jpg"))
    if not rate:
        assert len(other) == 8 and other[-1] - other[0] < gap  # no Crawl-delay there
