"""Per-host politeness and isolation: the limiter's rules on a fake clock (no waiting), then a
dead host and a slow host next to a good one against the local servers: the good rows all
finish and the bad hosts' rows fail fast once the breaker opens, counted in connection
attempts and requests served."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Iterator

import pytest

from i2d_fetcher.http.client import HttpClient, download
from i2d_fetcher.http.hosts import CIRCUIT_OPEN_MESSAGE, CircuitOpen, HostLimiter
from i2d_fetcher.http.resolver import StaticLookup
from i2d_fetcher.options import FetchOptions
from i2d_fetcher.row import fetch_row
from i2d_imageserver import ImageServer
from i2d_segments.records import SampleStatus, UrlRow
from tests.fetcher.helpers import fresh_seed, local_options, run, run_here, with_session


class FakeTime:
    """A clock that only moves when the limiter sleeps; the sleeps are recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def limiter(t: FakeTime, **kw: float) -> HostLimiter:
    kw.setdefault("max_connections", 4)
    return HostLimiter(clock=t.clock, sleep=t.sleep, **kw)  # type: ignore[arg-type]


def test_concurrency_is_capped_per_host() -> None:
    async def main() -> tuple[int, int]:
        hosts = HostLimiter(max_connections=2)
        holding = Counter[str]()
        peak = Counter[str]()

        async def one(key: str) -> None:
            async with hosts.slot(key):
                holding[key] += 1
                peak[key] = max(peak[key], holding[key])
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                holding[key] -= 1

        await asyncio.gather(*(one(k) for k in ["a"] * 10 + ["b"] * 10))
        return peak["a"], peak["b"]

    assert run(main()) == (2, 2)


def test_rate_limit_spaces_request_starts() -> None:
    t = FakeTime()
    hosts = limiter(t, rate=4.0)

    async def main() -> list[float]:
        starts = []
        for _ in range(4):
            async with hosts.slot("a"):
                starts.append(t.now)
        async with hosts.slot("b"):  # another host has its own pace
            starts.append(t.now)
        return starts

    assert run(main()) == [0.0, 0.25, 0.5, 0.75, 0.75]


def test_retry_after_pauses_the_whole_host() -> None:
    t = FakeTime()
    hosts = limiter(t)

    async def main() -> None:
        async with hosts.slot("a"):
            hosts.pause("a", 7.5)  # a 429 / 503 with Retry-After: 7.5
        async with hosts.slot("b"):
            assert t.sleeps == []  # other hosts go on
        async with hosts.slot("a"):
            assert t.sleeps == [7.5]

    run(main())


def test_breaker_opens_after_consecutive_failures_and_probes_after_cooldown() -> None:
    t = FakeTime()
    hosts = limiter(t, failure_threshold=3, cooldown=60.0)

    async def fail(key: str) -> None:
        async with hosts.slot(key) as slot:
            slot.failed()

    async def main() -> None:
        await fail("a")
        await fail("a")
        async with hosts.slot("a") as slot:
            slot.answered()  # an answer resets the count: failures must be consecutive
        for _ in range(3):
            await fail("a")
        with pytest.raises(CircuitOpen):
            async with hosts.slot("a"):
                pass
        async with hosts.slot("b") as slot:  # other hosts are not affected
            slot.answered()
        t.now += 60.0
        async with hosts.slot("a") as probe:
            assert probe.probe
            with pytest.raises(CircuitOpen):  # one probe at a time
                async with hosts.slot("a"):
                    pass
            probe.failed()
        with pytest.raises(CircuitOpen):  # the probe failed: open again
            async with hosts.slot("a"):
                pass
        t.now += 60.0
        async with hosts.slot("a") as probe:
            probe.answered()
        async with hosts.slot("a") as slot:  # closed
            assert not slot.probe
            slot.answered()

    run(main())
    assert str(CircuitOpen()) == CIRCUIT_OPEN_MESSAGE


def test_hosts_without_anything_to_remember_are_forgotten() -> None:
    t = FakeTime()
    hosts = limiter(t, failure_threshold=2, cooldown=10.0)

    async def main() -> None:
        for n in range(100):
            async with hosts.slot(f"h{n}") as slot:
                slot.answered()
        assert len(hosts) == 0
        async with hosts.slot("bad") as slot:
            slot.failed()
        assert len(hosts) == 1  # its failure still counts
        t.now += 10.0
        async with hosts.slot("other") as slot:
            slot.answered()
        async with hosts.slot("bad") as slot:
            slot.answered()
        assert len(hosts) == 0

    run(main())


# --------------------------------------------------------------------------- against servers


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port where nothing listens: every connection is refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    yield port


def batch(client_opts: FetchOptions, rows: list[UrlRow], names: dict[str, list[str]]) -> list:
    async def main(client: HttpClient) -> list:
        return list(
            await asyncio.gather(*(fetch_row(client, r, client_opts, run_here) for r in rows))
        )

    return with_session(client_opts, main, StaticLookup(names))


def test_a_dead_host_fails_fast_and_the_good_one_is_untouched(
    image_server: ImageServer, dead_port: int
) -> None:
    opts = local_options(
        timeout=5,
        retries=0,  # each row's reason is then its one attempt's outcome
        max_connections_per_host=2,
        host_failure_threshold=3,
    )
    names = {"dead.test": ["127.0.0.1"], "good.test": ["127.0.0.1"]}
    good = [
        UrlRow(url=f"http://good.test:{image_server.port}/img/{fresh_seed()}_120x90.jpg")
        for _ in range(30)
    ]
    dead = [UrlRow(url=f"http://dead.test:{dead_port}/img/{n}.jpg") for n in range(30)]
    rows = [r for pair in zip(dead, good, strict=True) for r in pair]
    before = image_server.count("img")
    records = batch(opts, rows, names)
    by_url = {r.meta.url: r.meta for r in records}
    assert all(by_url[r.url].status is SampleStatus.SUCCESS for r in good)
    assert image_server.count("img") - before == len(good)  # each served once, none lost
    reasons = Counter(by_url[r.url].error_message for r in dead)
    refused = reasons["cannot connect: Connection refused"]
    # Connection attempts: the threshold, plus at most what was already in flight at the
    # host's cap when it opened; every other row (and retry) fails without connecting.
    assert 3 <= refused <= 3 + 2 - 1
    assert reasons[CIRCUIT_OPEN_MESSAGE] == len(dead) - refused


def test_a_slow_host_is_cut_off_and_the_good_one_is_untouched(image_server: ImageServer) -> None:
    opts = local_options(
        timeout=5, read_timeout=0.3, max_connections_per_host=2, host_failure_threshold=2
    )
    names = {"slow.test": ["127.0.0.1"], "good.test": ["127.0.0.1"]}
    port = image_server.port
    slow = [
        UrlRow(url=f"http://slow.test:{port}/fault/slow/{fresh_seed()}_120x90.jpg?delay=3")
        for _ in range(12)
    ]
    good = [UrlRow(url=f"http://good.test:{port}/img/{fresh_seed()}_120x90.jpg") for _ in range(12)]
    before = image_server.count("slow")
    records = batch(opts, [*slow, *good], names)
    by_url = {r.meta.url: r.meta for r in records}
    assert all(by_url[r.url].status is SampleStatus.SUCCESS for r in good)
    reasons = Counter(by_url[r.url].error_message for r in slow)
    assert reasons["read timed out: no data for 0.3s"] == image_server.count("slow") - before
    assert 2 <= image_server.count("slow") - before <= 2 + 2 - 1  # requests the slow host saw
    assert reasons[CIRCUIT_OPEN_MESSAGE] == len(slow) - (image_server.count("slow") - before)


def test_the_backoff_sleeps_without_the_hosts_slot(image_server: ImageServer) -> None:
    # One slot per host. Row A gets a 503 and sleeps ~1-2 s before its retry; row B, to the
    # same host, is served meanwhile: A's retry is still to come when B is done.
    opts = local_options(timeout=5, retries=1, retry_backoff=2.0, max_connections_per_host=1)
    a = image_server.url_for(fresh_seed(), 120, 90, fault="flaky")
    b = image_server.url_for(fresh_seed(), 120, 90)

    async def main(client: HttpClient) -> tuple[int, int]:
        first = asyncio.create_task(download(client, a, opts, max_bytes=1 << 20))
        while image_server.hits(a) == 0:
            await asyncio.sleep(0.01)
        await download(client, b, opts, max_bytes=1 << 20)
        seen = image_server.hits(a), image_server.hits(b)
        got = await first
        assert got.attempts == 2
        return seen

    assert with_session(opts, main) == (1, 1)


def test_retry_after_is_honoured_on_retry(image_server: ImageServer) -> None:
    opts = local_options(timeout=5, retries=1, retry_backoff=0.0)
    url = image_server.url_for(fresh_seed(), 120, 90, fault="flaky", retry_after=0.2)
    got = with_session(opts, lambda c: download(c, url, opts, max_bytes=1 << 20))
    assert got.attempts == 2
    too_long = image_server.url_for(fresh_seed(), 120, 90, fault="flaky", retry_after=3600)
    with pytest.raises(Exception, match="HTTP Error 503"):  # not worth a stalled row
        with_session(opts, lambda c: download(c, too_long, opts, max_bytes=1 << 20))
    assert image_server.hits(too_long) == 1
