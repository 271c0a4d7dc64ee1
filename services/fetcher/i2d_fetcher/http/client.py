"""Download one URL with aiohttp: bounded in time and size, polite, safe from hostile URLs,
retried only when a retry can help.

- Addresses: only public ones, unless in `allowed_networks` (netguard.py), checked on the URL,
  on every resolved address the connector gets (resolver.py) and on the socket; redirects are
  followed here, not by aiohttp, so each hop is checked again (http/https only, at most
  `max_redirects`).
- Timeout: `timeout` seconds for a whole attempt (DNS, connect, headers and body, over every
  redirect hop), not per socket read as in img2dataset, where a server dripping bytes can hold
  a worker forever; within it `connect_timeout` to connect and `read_timeout` between reads.
- Per host (hosts.py): a concurrency cap, a rate limit, Retry-After pauses for the whole host
  and a circuit breaker. Time waiting for the host is not counted against the timeout.
- Size: bodies are counted as decoded (after Content-Encoding), reading stops past
  `max_bytes`, and a declared Content-Length over the cap fails before any body is read.
- Memory: with a `Reservation` (budget.py), the body's bytes are reserved before they are
  read, from the worker's budget of body bytes in flight; waiting for them is not counted
  against the timeout either (the server is not the one being slow).
- robots.txt (robotscache.py): each site's is read once, through this same client (guard,
  DNS cache, host slots), before the first request to it; a url it disallows is never
  requested, and its Crawl-delay spaces the host's requests. Checked on every redirect hop.
  The wait for it is not counted against the timeout: the robots.txt fetch has its own.
- X-Robots-Tag is checked as soon as the headers arrive; a disallowed body is never read.
- Retries: only for transient failures (timeouts, connection errors, truncated bodies, 408,
  429, 5xx), with exponential backoff and jitter, honouring a short Retry-After. Never for a
  404 or other definite answers. The backoff sleeps without holding the host's slot.
- User-Agent: honest and current, `img2dataset-segments/<version> (+project url)`, plus the
  user's token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import os
import random
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from aiohttp import http_exceptions
from aiohttp.client_proto import ResponseHandler
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from i2d_fetcher.http.budget import BASE_RESERVATION, ByteBudget, Reservation
from i2d_fetcher.http.errors import FetchFailed
from i2d_fetcher.http.hosts import CIRCUIT_OPEN_MESSAGE, CircuitOpen, HostLimiter
from i2d_fetcher.http.netguard import BLOCKED_PREFIX, AddressPolicy, BlockedAddress, literal_address
from i2d_fetcher.http.resolver import AiodnsLookup, CachingResolver, Lookup
from i2d_fetcher.http.robots import DISALLOWED_MESSAGE, is_disallowed
from i2d_fetcher.http.robotscache import RobotsAnswer, RobotsCache, agent_tokens
from i2d_fetcher.http.robotstxt import MAX_ROBOTS_BYTES
from i2d_fetcher.options import FetchOptions
from i2d_fetcher.reasons import one_line
from i2d_segments import __version__

PROJECT_URL = "https://github.com/rom1504/img2dataset"
ACCEPT = "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8,*/*;q=0.5"
TRANSIENT_STATUSES = frozenset({408, 429})
PAUSING_STATUSES = frozenset({429, 503})  # their Retry-After pauses the whole host
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
SCHEMES = frozenset({"http", "https"})
MAX_RETRY_AFTER = 30.0  # seconds; a server asking for longer gets a failure, not a stalled slot
ROBOTS_MAX_REDIRECTS = 5  # RFC 9309 2.3.1.2
ROBOTS_ACCEPT = "text/plain,*/*;q=0.5"
# robots.txt bodies being read at once, per client: their own budget, so that a site's rows
# never wait behind images for the memory of its robots.txt (nor images behind robots.txt).
ROBOTS_BYTES_IN_FLIGHT = 4 * 1024 * 1024
# Hosts whose literal-address verdict is remembered (`HttpClient.literal_verdict`), at most.
LITERAL_CACHE = 4096
# aiohttp's read buffer per response (its default is 64 KiB): a connection stops reading once
# twice this much waits unread. A worker's loop also decodes images, so bodies wait there
# meanwhile. At 64 KiB, 18% of the bench's photos (83 KB on average, 160 KB at p90) paused
# their connection and had it resumed later (32 rows in flight, 3 ms of decoding per image);
# none did at 256 KiB. 256 KiB: 1-12% less wall clock and CPU per image in each of 5
# alternating pairs (2,000 photos, 2 workers). What waits unread before its row reserves it
# (`_BodyMemory`) is at most 512 KiB per connection.
READ_BUFSIZE = 1 << 18

__all__ = ["Downloaded", "FetchFailed", "HttpClient", "download", "fetch_robots", "open_client"]


@dataclass(frozen=True, slots=True)
class Downloaded:
    data: bytes
    content_type: str | None
    headers: Mapping[str, str]
    final_url: str  # after redirects
    status: int
    attempts: int


def user_agent(opts: FetchOptions) -> str:
    ua = f"img2dataset-segments/{__version__} (+{PROJECT_URL})"
    if opts.user_agent_token:
        ua += f" (compatible; {opts.user_agent_token})"
    return ua


def client_timeout(opts: FetchOptions, total: float | None = None) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=opts.timeout if total is None else total,
        sock_connect=opts.connect_timeout,
        sock_read=opts.read_timeout,
    )


class HttpClient:
    """The fetcher's HTTP side: one aiohttp session whose connector can only reach addresses
    the policy allows, the caching resolver behind it, the per-host limiter, and the budget
    of body bytes in flight."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        resolver: CachingResolver,
        policy: AddressPolicy,
        hosts: HostLimiter,
        proxy: str | None,
        budget: ByteBudget,
    ) -> None:
        self.session = session
        self.budget = budget
        self.resolver = resolver
        self.policy = policy
        self.hosts = hosts
        self.proxy = proxy
        self.robots: RobotsCache | None = None  # set by open_client
        self.robots_budget = ByteBudget(ROBOTS_BYTES_IN_FLIGHT)
        # host -> None (a name), "" (an allowed address), or why the address is refused
        self._literals: dict[str, str | None] = {}

    def literal_verdict(self, url: URL) -> bool:
        """For a host written as an IP address: FetchFailed if it is refused, else True;
        False for a name (to resolve: `check`). Remembered per host: parsing the address
        and matching the networks cost more than the rest of a 404's bookkeeping."""
        host = url.raw_host or ""
        if host in self._literals:
            verdict = self._literals[host]
        else:
            literal = literal_address(host)
            verdict = None if literal is None else (self.policy.blocked(literal) or "")
            if len(self._literals) >= LITERAL_CACHE:
                self._literals.clear()
            self._literals[host] = verdict
        if verdict:
            raise FetchFailed(BLOCKED_PREFIX + verdict, transient=False)
        return verdict is not None

    async def check(self, url: URL) -> None:
        """FetchFailed if `url`'s host is, or resolves only to, a refused address. The
        connector enforces the same on what it connects to; this gives the clear reason
        before a host slot is taken."""
        if self.literal_verdict(url):
            return
        host = url.raw_host or ""
        if self.proxy is not None:
            return  # the proxy resolves names, and its egress rules apply
        try:
            await self.resolver.resolve(host, url.port or 0, family=socket.AF_UNSPEC)
        except BlockedAddress as e:
            raise FetchFailed(str(e), transient=False) from None
        except OSError as e:
            raise FetchFailed(f"DNS resolution failed: {_reason(e)}", transient=False) from None

    async def close(self) -> None:
        if self.robots is not None:
            await self.robots.close()
        await self.session.close()
        await self.resolver.close()  # a resolver passed in is not closed by the connector

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def open_client(
    opts: FetchOptions, concurrency: int, lookup: Lookup | None = None, *, workers: int = 1
) -> HttpClient:
    """One client per fetcher: a pooled connector sized to the concurrency, the caching
    resolver (DNS is the first bottleneck at scale; `lookup` replaces real DNS in tests), no
    proxies or netrc from the environment, no cookie jar (millions of hosts, nothing to
    remember), redirects left to `download`, the robots.txt cache. `workers` is how many
    such clients share the per-host limits (a site's Crawl-delay is split across them). Call
    it inside the running event loop."""
    policy = AddressPolicy(opts.allowed_networks)
    direct = opts.proxy is None
    # Through a proxy the connector only ever reaches the proxy, which the operator chose.
    resolver = CachingResolver(
        lookup if lookup is not None else AiodnsLookup(),
        policy if direct else None,
        max_ttl=opts.dns_cache_ttl,
        negative_ttl=opts.dns_negative_ttl,
    )
    connector = aiohttp.TCPConnector(
        limit=max(1, concurrency),
        limit_per_host=0,  # the host limiter caps per target host, through a proxy too
        use_dns_cache=False,  # the resolver caches, with TTLs and negative answers
        resolver=resolver,
        socket_factory=policy.socket_factory if direct else None,
        ssl=not opts.ignore_ssl_certificate,  # False: accept any certificate
    )
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=client_timeout(opts),
        headers={"User-Agent": user_agent(opts), "Accept": ACCEPT},
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=True,
        raise_for_status=False,
        read_bufsize=READ_BUFSIZE,
    )
    hosts = HostLimiter(
        opts.max_connections_per_host,
        opts.host_rate_limit,
        opts.host_failure_threshold,
        opts.host_cooldown,
    )
    budget = ByteBudget(opts.max_body_bytes_in_flight)
    client = HttpClient(session, resolver, policy, hosts, opts.proxy, budget)

    async def robots_of(url: URL) -> RobotsAnswer:
        return await fetch_robots(client, url, opts)

    client.robots = RobotsCache(
        robots_of,
        agent_tokens(opts.user_agent_token),
        unreachable_ttl=opts.host_cooldown,
        share=workers,
    )
    return client


async def download(
    client: HttpClient,
    url: str,
    opts: FetchOptions,
    *,
    max_bytes: int,
    reservation: Reservation | None = None,
) -> Downloaded:
    """The body of `url`, or FetchFailed; transient failures are tried `opts.retries` more
    times. With a `reservation`, the body's bytes are reserved in it as they are read."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await _attempt(client, url, opts, max_bytes, attempt, reservation)
        except FetchFailed as e:
            if reservation is not None:
                reservation.release()  # nothing is held while backing off
            if not e.transient or attempt > opts.retries:
                raise
            if e.retry_after is not None and e.retry_after > MAX_RETRY_AFTER:
                raise
            # No host slot is held here: other rows of the host go on meanwhile.
            await asyncio.sleep(backoff_delay(opts.retry_backoff, attempt, e.retry_after))


def backoff_delay(base: float, attempt: int, retry_after: float | None = None) -> float:
    """Exponential backoff with "equal jitter" (half fixed, half random, so retries of many
    rows hitting one host spread out), never shorter than the server's Retry-After."""
    delay = base * 2 ** (attempt - 1)
    delay = delay / 2 + random.uniform(0, delay / 2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


async def _attempt(
    client: HttpClient,
    url: str,
    opts: FetchOptions,
    max_bytes: int,
    attempt: int,
    reservation: Reservation | None,
) -> Downloaded:
    # Spent by DNS and requests; not by waiting for a host slot or for memory.
    budget = opts.timeout
    target = parse_url(url)
    for hop in itertools.count():
        started = time.monotonic()
        try:
            if not client.literal_verdict(target):  # an address is checked at once
                async with asyncio.timeout(budget):
                    await client.check(target)
        except TimeoutError:
            raise _timed_out(opts) from None
        budget -= time.monotonic() - started
        if budget <= 0:
            raise _timed_out(opts)
        interval = 0.0  # the site's Crawl-delay (our part of it)
        if opts.respect_robots_txt and client.robots is not None:
            # Not the server's time: not counted. Awaited only when the site's is not cached.
            cached = client.robots.check_cached(target)
            interval = cached if cached is not None else await client.robots.check(target)
        key = f"{target.raw_host}:{target.port}"
        try:
            async with client.hosts.slot(key, interval) as slot:
                started = time.monotonic()
                waited = reservation.waited if reservation is not None else 0.0
                try:
                    result = await _request(client, target, opts, max_bytes, budget, reservation)
                except FetchFailed as e:
                    slot.failed() if e.host_failure else slot.answered()
                    if e.retry_after and e.status in PAUSING_STATUSES:
                        client.hosts.pause(key, min(e.retry_after, MAX_RETRY_AFTER))
                    raise
                slot.answered()
                budget -= time.monotonic() - started
                if reservation is not None:
                    budget += reservation.waited - waited
        except CircuitOpen:
            raise FetchFailed(CIRCUIT_OPEN_MESSAGE, transient=False) from None
        if isinstance(result, Downloaded):
            # Made with attempts=1: the first attempt (nearly every row) needs no copy.
            return result if attempt == 1 else dataclasses.replace(result, attempts=attempt)
        if reservation is not None:
            reservation.release()  # nothing is held while waiting for the next hop's slot
        if hop >= opts.max_redirects:
            raise FetchFailed("too many redirects", transient=False)
        if budget <= 0:
            raise _timed_out(opts)
        target = parse_url(result)
    raise AssertionError("unreachable")


async def fetch_robots(client: HttpClient, url: URL, opts: FetchOptions) -> RobotsAnswer:
    """GET a `/robots.txt` as a download is made (address guard, DNS cache, the host's slot,
    rate and breaker; `opts.timeout` for the whole of it, not counting waits for a slot), with
    up to ROBOTS_MAX_REDIRECTS redirects and at most MAX_ROBOTS_BYTES of body read: what
    was read is kept, cut at its last complete line. FetchFailed when no answer came; a
    redirect chain that is too long or leads to no http(s) url ends as the redirect's own
    answer (no body), which the cache takes as "unavailable"."""
    budget = opts.timeout
    target = url
    status = 0  # of the last redirect
    for hop in itertools.count():
        started = time.monotonic()
        try:
            async with asyncio.timeout(budget):
                await client.check(target)
        except TimeoutError:
            raise _timed_out(opts) from None
        except FetchFailed as e:
            if hop == 0:
                raise
            # A redirect to a refused address or a name that does not resolve leads nowhere.
            return RobotsAnswer(status, b"", {}, e.message)
        budget -= time.monotonic() - started
        if budget <= 0:
            raise _timed_out(opts)
        key = f"{target.raw_host}:{target.port}"
        try:
            async with client.hosts.slot(key) as slot, client.robots_budget.reservation() as memory:
                started = time.monotonic()
                try:
                    result = await _robots_request(client, target, opts, budget, memory)
                except FetchFailed as e:
                    slot.failed() if e.host_failure else slot.answered()
                    raise
                slot.answered()
                budget -= time.monotonic() - started - memory.waited
        except CircuitOpen:
            raise FetchFailed(CIRCUIT_OPEN_MESSAGE, transient=False) from None
        if isinstance(result, RobotsAnswer):
            return result
        location, status = result
        if hop >= ROBOTS_MAX_REDIRECTS:
            return RobotsAnswer(status, b"", {}, "too many redirects")
        if budget <= 0:
            raise _timed_out(opts)
        try:
            target = parse_url(location)
        except FetchFailed as e:
            return RobotsAnswer(status, b"", {}, e.message)
    raise AssertionError("unreachable")


async def _robots_request(
    client: HttpClient,
    url: URL,
    opts: FetchOptions,
    budget: float,
    reservation: Reservation,
) -> RobotsAnswer | tuple[URL, int]:
    """One hop of a robots.txt fetch: the answer, or where a redirect points."""
    try:
        async with asyncio.timeout(budget) as deadline:
            memory = _BodyMemory(reservation, deadline)
            async with client.session.get(
                url,
                allow_redirects=False,
                timeout=_hop_timeout(opts),
                proxy=client.proxy,
                headers={"Accept": ROBOTS_ACCEPT},
            ) as resp:
                memory.response = resp
                location = resp.headers.get("Location")
                if resp.status in REDIRECT_STATUSES and location:
                    try:
                        return resp.url.join(URL(location)), resp.status
                    except ValueError:
                        return RobotsAnswer(resp.status, b"", {}, "invalid redirect location")
                headers = _copy(resp.headers)
                if not 200 <= resp.status < 300:
                    reason = _bounded(f"HTTP Error {resp.status}: {resp.reason}")
                    return RobotsAnswer(resp.status, b"", headers, reason)
                data = bytearray()
                async for chunk in resp.content.iter_any():
                    room = MAX_ROBOTS_BYTES - len(data)
                    if len(chunk) >= room:
                        data += chunk[:room]
                        resp.close()  # the rest is not read (RFC 9309 2.5)
                        cut = data.rfind(b"\n")  # a rule cut in the middle is no rule
                        del data[cut + 1 :]
                        break
                    data += chunk
                    await memory.need(len(data), grow=min(MAX_ROBOTS_BYTES, 2 * len(data)))
                return RobotsAnswer(resp.status, bytes(data), headers)
    except FetchFailed:
        raise
    except Exception as e:
        raise classify(e, opts) from None


def parse_url(url: str | URL) -> URL:
    """An absolute http(s) URL, or FetchFailed."""
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        scheme, host = parsed.scheme.lower(), parsed.raw_host
    except (ValueError, TypeError):  # yarl raises ValueError for some malformed urls
        raise FetchFailed("invalid url", transient=False) from None
    if scheme and scheme not in SCHEMES:
        raise FetchFailed("unsupported url scheme", transient=False)
    if not scheme or not host:
        raise FetchFailed("invalid url", transient=False)
    return parsed


async def _request(
    client: HttpClient,
    url: URL,
    opts: FetchOptions,
    max_bytes: int,
    budget: float,
    reservation: Reservation | None,
) -> Downloaded | URL:
    """One hop: the body, or where a redirect points. The hop has `budget` seconds, plus
    whatever it spends waiting for its body's memory (the deadline moves by that much)."""
    try:
        async with asyncio.timeout(budget) as deadline:
            # The base reservation is taken here, with the host slot held: a row that holds
            # memory is always one that is downloading (or waiting to grow), never one that
            # waits for a slot held by rows that wait for its memory.
            memory = _BodyMemory(reservation, deadline)
            await memory.need(BASE_RESERVATION)
            async with client.session.get(
                url,
                allow_redirects=False,  # followed by _attempt, each hop checked
                timeout=_hop_timeout(opts),
                proxy=client.proxy,
            ) as resp:
                memory.response = resp
                location = resp.headers.get("Location")
                if resp.status in REDIRECT_STATUSES and location:
                    try:
                        return resp.url.join(URL(location))
                    except ValueError:
                        raise FetchFailed("invalid redirect location", transient=False) from None
                if not 200 <= resp.status < 300:
                    raise FetchFailed(
                        _http_error(resp.status, resp.reason),
                        transient=resp.status in TRANSIENT_STATUSES or resp.status >= 500,
                        retry_after=_retry_after(resp.headers),
                        status=resp.status,
                    )
                if is_disallowed(
                    resp.headers.getall("X-Robots-Tag", ()),
                    opts.disallowed_header_directives,
                    opts.user_agent_token,
                ):
                    resp.close()  # drop the connection: the body must not be read at all
                    raise FetchFailed(DISALLOWED_MESSAGE, transient=False)
                declared = resp.content_length
                encoded = resp.headers.get("Content-Encoding", "identity").lower() != "identity"
                if declared is not None and declared > max_bytes and not encoded:
                    resp.close()
                    raise FetchFailed(_too_large(max_bytes), transient=False)
                if declared is not None and not encoded:
                    await memory.need(declared)
                # Decoded chunks (after Content-Encoding): a gzip bomb is stopped at the cap.
                # Kept as they come and joined once (one copy of the body, none for a body
                # read in one chunk), not grown in a bytearray then copied out.
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_any():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > max_bytes:
                        resp.close()  # stop now: nothing more of this body is wanted
                        raise FetchFailed(_too_large(max_bytes), transient=False)
                    await memory.need(size, grow=min(max_bytes, 2 * size))
                whole = len(chunks) == 1 and type(chunks[0]) is bytes
                return Downloaded(
                    data=chunks[0] if whole else b"".join(chunks),
                    content_type=resp.headers.get("Content-Type"),
                    headers=resp.headers,  # immutable, and independent of the connection
                    final_url=str(resp.url),
                    status=resp.status,
                    attempts=1,
                )
    except FetchFailed:
        raise
    except Exception as e:
        raise classify(e, opts) from None


def _hop_timeout(opts: FetchOptions) -> aiohttp.ClientTimeout:
    """A hop's total is the deadline `_request` keeps (it moves while waiting for memory);
    aiohttp only watches connecting and the gaps between reads."""
    return _hop_timeout_of(opts.connect_timeout, opts.read_timeout)


@functools.lru_cache(maxsize=16)
def _hop_timeout_of(connect: float, read: float) -> aiohttp.ClientTimeout:
    # One (immutable) object per setting, not one per request.
    return aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)


def _http_error(status: int, reason: str | None) -> str:
    """img2dataset's text of an HTTP error status, bounded. Remembered: a run answers the
    same few (`HTTP Error 404: Not Found`) for many rows."""
    if reason is not None and len(reason) > 256:
        return _bounded(f"HTTP Error {status}: {reason}")
    return _http_error_cached(status, reason)


@functools.lru_cache(maxsize=1024)
def _http_error_cached(status: int, reason: str | None) -> str:
    return _bounded(f"HTTP Error {status}: {reason}")


class _BodyMemory:
    """A body's bytes, reserved in the row's reservation before they are held. Waiting for
    them is ours, not the server's: the hop's deadline stops meanwhile, and so does aiohttp's
    `sock_read` timer (it would take a server that sent everything while we waited for a
    silent one)."""

    def __init__(self, reservation: Reservation | None, deadline: asyncio.Timeout) -> None:
        self.reservation = reservation
        self.deadline = deadline
        self.response: aiohttp.ClientResponse | None = None

    async def need(self, n: int, grow: int | None = None) -> None:
        r = self.reservation
        if r is None or n <= r.held:
            return
        if r.reserve_now(max(n, grow or n)):
            return  # nothing to wait for (most rows): no deadline or timer to touch
        when = self.deadline.when()
        if r.fits(max(n, grow or n)) or when is None:
            await r.reserve(max(n, grow or n))
            return
        loop = asyncio.get_running_loop()
        left = when - loop.time()
        self.deadline.reschedule(None)  # the clock stops while we wait for our own memory
        protocol = _protocol_of(self.response)
        read_timeout = protocol.read_timeout if protocol is not None else None
        if protocol is not None:
            protocol.read_timeout = None
            protocol.start_timeout()  # with no timeout: cancels the pending sock_read timer
        try:
            await r.reserve(max(n, grow or n))
        finally:
            self.deadline.reschedule(loop.time() + left)
            if protocol is not None:
                protocol.read_timeout = read_timeout
                protocol.start_timeout()


def _protocol_of(resp: aiohttp.ClientResponse | None) -> ResponseHandler | None:
    """The connection's protocol, which runs the `sock_read` timer. aiohttp may have released
    the connection while the body is still being decoded from what it buffered (a gzip body
    arrives whole) and its timer still runs: then the payload's own reference is the way."""
    if resp is None:
        return None
    if resp.connection is not None:
        return resp.connection.protocol
    protocol = getattr(resp.content, "_protocol", None)
    return protocol if isinstance(protocol, ResponseHandler) else None


def _timed_out(opts: FetchOptions) -> FetchFailed:
    message = f"timed out after {opts.timeout:g}s"
    return FetchFailed(message, transient=True, host_failure=True, timed_out=True)


def classify(e: Exception, opts: FetchOptions) -> FetchFailed:
    """A client exception as a failure with a stable message (no host, port or byte counts:
    users count failures by message), whether trying again may help, and whether it tells
    that the host is not answering."""
    os_error = getattr(e, "os_error", None)
    if isinstance(os_error, BlockedAddress):  # refused by the resolver or the socket factory
        return FetchFailed(str(os_error), transient=False)
    if isinstance(e, aiohttp.SocketTimeoutError):  # sock_read
        message = f"read timed out: no data for {opts.read_timeout:g}s"
        return FetchFailed(message, transient=True, host_failure=True, timed_out=True)
    if isinstance(e, aiohttp.ConnectionTimeoutError):  # sock_connect
        message = f"connect timed out after {opts.connect_timeout:g}s"
        return FetchFailed(message, transient=True, host_failure=True, timed_out=True)
    if isinstance(e, TimeoutError):  # the attempt's total
        return _timed_out(opts)
    if isinstance(e, aiohttp.ClientPayloadError):
        cause = e.__cause__ or e.__context__
        if isinstance(cause, http_exceptions.ContentLengthError):
            return FetchFailed("incomplete body: fewer bytes than Content-Length", transient=True)
        if isinstance(cause, http_exceptions.ContentEncodingError):
            return FetchFailed("undecodable body: bad Content-Encoding", transient=False)
        if isinstance(cause, http_exceptions.TransferEncodingError):
            return FetchFailed("incomplete body: broken chunked encoding", transient=True)
        return FetchFailed("incomplete body", transient=True)
    if isinstance(e, aiohttp.ClientConnectorDNSError):
        return FetchFailed(f"DNS resolution failed: {_reason(e.os_error)}", transient=False)
    if isinstance(e, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return FetchFailed("TLS error: invalid certificate or handshake", transient=False)
    if isinstance(e, aiohttp.ClientConnectorError):
        message = f"cannot connect: {_reason(e.os_error)}"
        return FetchFailed(message, transient=True, host_failure=True)
    if isinstance(e, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError | ValueError):
        # yarl raises ValueError for some malformed urls
        return FetchFailed("invalid url", transient=False)
    if isinstance(e, aiohttp.ServerDisconnectedError):
        message = "connection error: server disconnected"
        return FetchFailed(message, transient=True, host_failure=True)
    if isinstance(e, aiohttp.ClientConnectionError | OSError):
        return FetchFailed(f"connection error: {_reason(e)}", transient=True, host_failure=True)
    if isinstance(e, aiohttp.ClientResponseError):  # a malformed response
        return FetchFailed(f"bad response: {_bounded(e.message)}", transient=False)
    return FetchFailed(_bounded(f"{type(e).__name__}: {e}"), transient=False)


def _bounded(message: str) -> str:
    """A parser's message may quote what the server sent (8 KiB of header bytes): an error
    message stays a short reason, and says nothing of libraries to install."""
    message = message.split(". Please install", 1)[0]
    message = re.split(r":? b['\"]", message, maxsplit=1)[0]  # the bytes it quotes
    return one_line(message)


def _reason(e: BaseException) -> str:
    """ "Connection refused", not "Cannot connect to host 10.1.2.3:80 ssl:default [...]"."""
    errno = getattr(e, "errno", None)
    if isinstance(errno, int) and errno > 0:
        try:
            return os.strerror(errno)
        except ValueError:
            pass
    if isinstance(e, OSError) and e.strerror:  # a gaierror, or the resolver's own text
        return e.strerror
    return type(e).__name__


def _too_large(max_bytes: int) -> str:
    return f"body larger than max_body_bytes ({max_bytes} bytes)"


def _retry_after(headers: CIMultiDictProxy[str]) -> float | None:
    """Retry-After in seconds (the HTTP-date form is rare for images and ignored)."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _copy(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict(headers)
