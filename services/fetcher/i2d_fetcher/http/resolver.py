"""An asynchronous, caching DNS resolver for aiohttp that only hands out allowed addresses.

DNS is the first bottleneck of img2dataset at scale: aiohttp's default resolver runs
getaddrinfo in a thread pool, so a few hundred slow lookups of a list with millions of domains
queue behind each other. Lookups here run on the event loop through c-ares (aiodns), and
answers are cached:

- positive answers for their record TTL, at least MIN_TTL and at most `dns_cache_ttl`;
- failures (NXDOMAIN, SERVFAIL, timeouts) for `dns_negative_ttl`, so a dead domain listed a
  million times costs one query per interval, not one per row;
- concurrent lookups of one name share a single query;
- at most MAX_ENTRIES names, least recently used evicted first, so memory stays bounded.

The address policy is applied to each answer inside `resolve`, the call the connector takes
its addresses from: what the connector connects to is exactly what was checked.

The lookup is injectable (`Lookup`): tests use `StaticLookup`, a fixed name table, so they
never query real DNS.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from aiohttp.abc import AbstractResolver, ResolveResult

from i2d_fetcher.http.netguard import AddressPolicy, BlockedAddress, IPAddress, literal_address

MIN_TTL = 1.0  # seconds: a TTL-0 record still serves the burst of rows that asked for it
MAX_ENTRIES = 100_000
_NUMERIC = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


@dataclass(frozen=True, slots=True)
class Answer:
    address: IPAddress
    ttl: float | None = None  # seconds; None: unknown, the cache's maximum applies


class Lookup(Protocol):
    """Name to addresses; raises OSError when the name does not resolve."""

    async def __call__(self, host: str) -> list[Answer]: ...

    async def close(self) -> None: ...


class AiodnsLookup:
    """c-ares through aiodns: asynchronous, and it reports each record's TTL."""

    def __init__(
        self, timeout: float = 2.0, tries: int = 2, nameservers: list[str] | None = None
    ) -> None:
        import aiodns  # imported here: tests inject a StaticLookup and never load it

        # c-ares' defaults (5 s, 4 tries) would let one dead name server hold a row 20 s.
        # `nameservers` (default: the system's) as "ip" or "ip:port".
        self._resolver = aiodns.DNSResolver(nameservers, timeout=timeout, tries=tries)
        self._error = aiodns.error.DNSError

    async def __call__(self, host: str) -> list[Answer]:
        try:
            result = await self._resolver.getaddrinfo(
                host,
                family=socket.AF_UNSPEC,
                type=socket.SOCK_STREAM,
                flags=getattr(socket, "AI_ADDRCONFIG", 0),
            )
        except self._error as e:
            message = e.args[1] if len(e.args) > 1 else "DNS lookup failed"
            raise OSError(None, str(message)) from None
        answers = []
        for node in result.nodes:
            address = node.addr[0]
            text = address.decode("ascii") if isinstance(address, bytes) else str(address)
            answers.append(Answer(literal_or_fail(text), float(node.ttl)))
        return answers

    async def close(self) -> None:
        close = getattr(self._resolver, "close", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                await result


class StaticLookup:
    """A fixed table name -> addresses (for tests: names mapped to loopback addresses).
    Unknown names fail as NXDOMAIN would; `queries` counts the lookups that reached it."""

    def __init__(self, table: Mapping[str, Iterable[str]], ttl: float | None = None) -> None:
        self.table = {k.lower(): [literal_or_fail(a) for a in v] for k, v in table.items()}
        self.ttl = ttl
        self.queries: list[str] = []

    async def __call__(self, host: str) -> list[Answer]:
        self.queries.append(host)
        addresses = self.table.get(host.lower().rstrip("."))
        if not addresses:
            raise OSError(None, "Name or service not known")
        return [Answer(a, self.ttl) for a in addresses]

    async def close(self) -> None:
        return None


def literal_or_fail(text: str) -> IPAddress:
    address = literal_address(text)
    if address is None:
        raise ValueError(f"not an IP address: {text!r}")
    return address


@dataclass(slots=True)
class _Entry:
    expires: float
    addresses: tuple[IPAddress, ...] = ()
    error: str | None = None


class CachingResolver(AbstractResolver):
    """aiohttp resolver: cached lookups, filtered by `policy` (None: no filtering, for a
    proxied session where the only name resolved here is the proxy's own)."""

    def __init__(
        self,
        lookup: Lookup,
        policy: AddressPolicy | None,
        *,
        max_ttl: float,
        negative_ttl: float,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lookup = lookup
        self.policy = policy
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[_Entry]] = {}

    async def addresses(self, host: str) -> tuple[IPAddress, ...]:
        """Every address of `host` (unfiltered); OSError when it does not resolve. An IP
        literal in any form is its own answer and never reaches DNS."""
        literal = literal_address(host)
        if literal is not None:
            return (literal,)
        name = host.lower()
        entry = self._cache.get(name)
        if entry is not None and entry.expires > self._clock():
            self._cache.move_to_end(name)
        else:
            entry = await self._query(name)
        if entry.error is not None:
            raise OSError(None, entry.error)
        return entry.addresses

    async def _query(self, name: str) -> _Entry:
        # The query runs as its own task, shared by every row asking for the name meanwhile;
        # a row that gives up (cancelled) leaves it running for the others and the cache.
        task = self._inflight.get(name)
        if task is None:
            task = asyncio.ensure_future(self._fresh(name))
            self._inflight[name] = task
            task.add_done_callback(lambda t: self._store(name, t))
        return await asyncio.shield(task)

    def _store(self, name: str, task: asyncio.Future[_Entry]) -> None:
        self._inflight.pop(name, None)
        if task.cancelled() or task.exception() is not None:
            return
        self._cache[name] = task.result()
        self._cache.move_to_end(name)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    async def _fresh(self, name: str) -> _Entry:
        now = self._clock()
        try:
            answers = await self.lookup(name)
        except OSError as e:
            return _Entry(now + self.negative_ttl, error=e.strerror or "DNS lookup failed")
        if not answers:
            return _Entry(now + self.negative_ttl, error="DNS lookup failed")
        ttls = [a.ttl for a in answers if a.ttl is not None]
        ttl = min([self.max_ttl, *ttls])
        return _Entry(now + max(MIN_TTL, ttl), addresses=tuple(a.address for a in answers))

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        candidates = [
            a
            for a in await self.addresses(host)
            if family == socket.AF_UNSPEC or _family(a) == family
        ]
        if not candidates:
            raise OSError(None, "no address of the requested family")
        if self.policy is not None:
            allowed = [a for a in candidates if self.policy.blocked(a) is None]
            if not allowed:
                raise BlockedAddress(self.policy.blocked(candidates[0]) or "refused")
            candidates = allowed
        return [
            ResolveResult(
                hostname=host,
                host=str(a),
                port=port,
                family=_family(a),
                proto=0,
                flags=_NUMERIC,
            )
            for a in candidates
        ]

    async def close(self) -> None:
        await self.lookup.close()


def _family(address: IPAddress) -> socket.AddressFamily:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6
