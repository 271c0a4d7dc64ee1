"""The caching resolver: answers kept for their TTL (bounded), failures for a short while, one
query per name however many rows ask at once, literals never sent to DNS, refused addresses
never handed to the connector. A fixed name table stands in for DNS; the c-ares adapter is
exercised against the loopback only."""

from __future__ import annotations

import asyncio
import socket

import pytest

from i2d_fetcher.http.netguard import AddressPolicy, BlockedAddress
from i2d_fetcher.http.resolver import (
    AiodnsLookup,
    Answer,
    CachingResolver,
    StaticLookup,
    literal_or_fail,
)
from tests.fetcher.helpers import run
from tests.servers.proc import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver(
    lookup: StaticLookup, clock: Clock, policy: AddressPolicy | None = None, **kw: float
) -> CachingResolver:
    kw.setdefault("max_ttl", 300)
    kw.setdefault("negative_ttl", 30)
    return CachingResolver(lookup, policy, clock=clock, **kw)  # type: ignore[arg-type]


def test_answers_are_cached_for_their_ttl_within_the_bound() -> None:
    lookup = StaticLookup({"a.test": ["127.0.0.5"]}, ttl=60)
    clock = Clock()
    r = resolver(lookup, clock)

    async def main() -> None:
        got = await r.resolve("a.test", 80, socket.AF_UNSPEC)
        assert [(x["host"], x["port"], x["hostname"]) for x in got] == [("127.0.0.5", 80, "a.test")]
        await r.resolve("A.TEST", 443)
        clock.now += 59
        await r.resolve("a.test")
        assert lookup.queries == ["a.test"]
        clock.now += 2  # past the record's TTL
        await r.resolve("a.test")
        assert lookup.queries == ["a.test", "a.test"]

    run(main())


def test_the_cache_bound_caps_long_ttls() -> None:
    lookup = StaticLookup({"a.test": ["127.0.0.5"]}, ttl=86400)
    clock = Clock()
    r = resolver(lookup, clock, max_ttl=300)

    async def main() -> None:
        await r.resolve("a.test")
        clock.now += 299
        await r.resolve("a.test")
        clock.now += 2
        await r.resolve("a.test")
        assert len(lookup.queries) == 2

    run(main())


def test_failures_are_cached_briefly() -> None:
    lookup = StaticLookup({})
    clock = Clock()
    r = resolver(lookup, clock, negative_ttl=30)

    async def main() -> None:
        for _ in range(3):
            with pytest.raises(OSError, match="Name or service not known"):
                await r.resolve("dead.test")
        assert lookup.queries == ["dead.test"]
        clock.now += 31
        with pytest.raises(OSError):
            await r.resolve("dead.test")
        assert len(lookup.queries) == 2

    run(main())


def test_concurrent_lookups_of_one_name_share_a_query() -> None:
    gate = asyncio.Event()
    queries: list[str] = []

    class Slow:
        async def __call__(self, host: str) -> list[Answer]:
            queries.append(host)
            await gate.wait()
            return [Answer(literal_or_fail("127.0.0.5"), 60)]

        async def close(self) -> None:
            return None

    async def main() -> None:
        r = CachingResolver(Slow(), None, max_ttl=300, negative_ttl=30)
        rows = [asyncio.create_task(r.resolve("busy.test")) for _ in range(50)]
        await asyncio.sleep(0)
        rows[0].cancel()  # a row giving up does not fail the others
        gate.set()
        results = await asyncio.gather(*rows[1:])
        assert all(res[0]["host"] == "127.0.0.5" for res in results)
        assert queries == ["busy.test"]

    run(main())


def test_ip_literals_in_any_form_never_reach_dns() -> None:
    lookup = StaticLookup({})
    r = resolver(lookup, Clock())

    async def main() -> None:
        for host in ("127.0.0.9", "0x7f000009", "2130706441", "::1"):
            got = await r.resolve(host, 80, socket.AF_UNSPEC)
            assert len(got) == 1
        assert lookup.queries == []

    run(main())


def test_refused_answers_are_never_handed_out() -> None:
    lookup = StaticLookup({"mixed.test": ["127.0.0.2", "127.0.0.1"], "evil.test": ["10.1.2.3"]})
    r = resolver(lookup, Clock(), AddressPolicy(["127.0.0.1/32"]))

    async def main() -> None:
        got = await r.resolve("mixed.test", 80, socket.AF_UNSPEC)
        assert [x["host"] for x in got] == ["127.0.0.1"]
        with pytest.raises(BlockedAddress) as info:
            await r.resolve("evil.test", 80, socket.AF_UNSPEC)
        assert str(info.value) == "blocked address: private network"

    run(main())


def test_the_cache_is_bounded() -> None:
    lookup = StaticLookup({n: ["127.0.0.5"] for n in ("a.test", "b.test", "c.test")}, ttl=60)
    r = resolver(lookup, Clock(), max_entries=2)

    async def main() -> None:
        for name in ("a.test", "b.test", "a.test", "c.test", "a.test", "b.test"):
            await r.resolve(name)
        # b was least recently used when c came: evicted, asked again; a stayed
        assert lookup.queries == ["a.test", "b.test", "c.test", "b.test"]

    run(main())


def test_c_ares_adapter_on_the_loopback_only() -> None:
    async def main() -> None:
        # A name server on a closed loopback port: the query fails, nothing leaves the host.
        lookup = AiodnsLookup(timeout=0.2, tries=1, nameservers=[f"127.0.0.1:{free_port()}"])
        try:
            with pytest.raises(OSError):
                await lookup("nothing-here.test")
            got = await lookup("127.0.0.7")  # numeric: answered without a query
            assert [str(a.address) for a in got] == ["127.0.0.7"]
        finally:
            await lookup.close()

    run(main())
