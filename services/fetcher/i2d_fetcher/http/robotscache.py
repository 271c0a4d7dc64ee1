"""robots.txt, read once per site and kept: whether a url may be fetched, and the site's
Crawl-delay.

A site is a scheme, host and port (RFC 9309 2.3). The first row of a site asks for its
`/robots.txt`; the site's other rows wait for that one request (one fetch in flight per site),
holding no host slot and no body memory meanwhile, and without spending their own timeout.
The fetch itself goes through the fetcher's client (client.py `fetch_robots`): the address
guard, the DNS cache, the host's slots, rate and circuit breaker, its own timeout
(`--timeout`), at most 5 redirects, at most 500 KiB read (what was read is parsed).

What an answer means (RFC 9309 2.3.1):

- 2xx: its rules (robotstxt.py), kept for the answer's HTTP cache lifetime (Cache-Control
  max-age, or Expires), at least `MIN_TTL` and at most a day (the default);
- 4xx but 429 ("unavailable"), a redirect chain longer than 5 or one that leads nowhere
  usable: everything allowed, kept as long;
- 5xx, 429, or no answer within the timeout ("unreachable"): everything disallowed for
  `unreachable_ttl` seconds (the fetcher's `--host_cooldown`), then asked again. A copy kept
  from an earlier answer is used instead when there is one (RFC 9309 allows it);
- no answer at all but quickly (refused, reset, DNS, TLS, blocked address): nothing is kept.
  The row that asked fails with that reason, as its own download would have, and the next
  row asks again: this costs what the downloads would have cost, and the host's circuit
  breaker counts these failures and bounds them as it bounds downloads.

Memory: entries are kept in LRU order within `max_bytes` (a parsed file holds only the groups
that apply to us) and `max_entries`. One cache per event loop (a worker process, or the
inline fetcher); its counts go to /metrics with the rows' figures (`take_counts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import math
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from yarl import URL

from i2d_fetcher.http.errors import FetchFailed
from i2d_fetcher.http.robotstxt import ALLOW_ALL, Robots, parse, product_token

log = logging.getLogger(__name__)

DISALLOWED_MESSAGE = "disallowed by robots.txt"
UNREACHABLE_MESSAGE = "disallowed by robots.txt (unreachable: {})"
DAY = 86_400.0
MIN_TTL = 300.0  # a robots.txt served with no-cache is still not asked for per row
MAX_CRAWL_DELAY = 60.0  # seconds; larger Crawl-delay values are honoured as this
DEFAULT_MAX_BYTES = 32 << 20
DEFAULT_MAX_ENTRIES = 200_000
_ENTRY_OVERHEAD = 256
_MAX_AGE = re.compile(r"(?:^|[,\s])(s-maxage|max-age)\s*=\s*\"?(\d+)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|[,\s])(no-store|no-cache)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class RobotsAnswer:
    """What a robots.txt request got: the final status (after redirects), the body read (at
    most MAX_ROBOTS_BYTES) and the headers."""

    status: int
    body: bytes
    headers: Mapping[str, str]
    reason: str = ""  # for a failure status: "HTTP Error 503: Service Unavailable"


FetchRobots = Callable[[URL], Awaitable[RobotsAnswer]]


@dataclass(slots=True)
class _Entry:
    robots: Robots | None  # None: unreachable, everything disallowed
    message: str | None  # why unreachable
    expires: float
    size: int
    answered: bool  # from a 2xx or 4xx answer: usable as a stale copy when a refresh fails


@dataclass(frozen=True, slots=True)
class _Refresh:
    entry: _Entry | None  # None: nothing kept (a quick failure)
    failure: FetchFailed | None  # what the row that asked fails with, if not the entry


def agent_tokens(user_agent_token: str | None) -> tuple[str, ...]:
    """The product tokens robots.txt groups may name us by."""
    tokens = ["img2dataset", "img2dataset-segments"]
    if user_agent_token:
        token = product_token(user_agent_token)
        if token and token != "*" and token not in tokens:
            tokens.append(token)
    return tuple(tokens)


def site_of(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme.lower(), (url.raw_host or "").lower(), url.port)


class RobotsCache:
    def __init__(
        self,
        fetch: FetchRobots,
        tokens: Iterable[str],
        *,
        unreachable_ttl: float = 60.0,
        share: int = 1,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch
        self.tokens = tuple(t.lower() for t in tokens)
        self.unreachable_ttl = unreachable_ttl
        # The Crawl-delay is shared by this many fetchers (worker processes) of one site:
        # each spaces its own requests by `share` times the delay.
        self.share = max(1, share)
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._clock = clock
        self._wall_clock = wall_clock
        self._entries: OrderedDict[tuple[str, str, int | None], _Entry] = OrderedDict()
        self._bytes = 0
        self._inflight: dict[tuple[str, str, int | None], asyncio.Task[_Refresh]] = {}
        self._counts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._entries)

    def take_counts(self) -> dict[str, int] | None:
        """Lookups and fetches since the last call (`hit`, `miss`, `fetch:<result>`)."""
        if not self._counts:
            return None
        counts = dict(self._counts)
        self._counts.clear()
        return counts

    def check_cached(self, url: URL) -> float | None:
        """`check` without waiting, when the site's robots.txt is cached (nearly every row):
        the interval, or FetchFailed; None when it must be fetched (then await `check`)."""
        key = site_of(url)
        entry = self._entries.get(key)
        if entry is None or entry.expires <= self._clock():
            return None
        self._counts["hit"] += 1
        self._entries.move_to_end(key)
        return self._apply(entry, url)

    async def check(self, url: URL) -> float:
        """The least interval between two requests to `url`'s host this fetcher keeps (its part
        of the site's Crawl-delay; 0 for none); FetchFailed if `url` may not be fetched."""
        cached = self.check_cached(url)
        if cached is not None:
            return cached
        key = site_of(url)
        entry = self._entries.get(key)
        self._counts["miss"] += 1
        while True:
            task = self._inflight.get(key)
            mine = task is None
            if task is None:
                task = asyncio.get_running_loop().create_task(self._refresh(key, url, entry))
                self._inflight[key] = task
            # Shielded: the fetch serves every row of the site, not only the one that started it.
            result = await asyncio.shield(task)
            if mine and result.failure is not None:
                raise result.failure
            if result.entry is not None:
                return self._apply(result.entry, url)
            # Nothing kept, and this row did not ask: it asks again (one fetch at a time).

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ internals

    def _apply(self, entry: _Entry, url: URL) -> float:
        robots = entry.robots
        if robots is None:
            raise FetchFailed(UNREACHABLE_MESSAGE.format(entry.message), transient=False)
        if robots.rulesets:
            path = url.raw_path or "/"
            if url.raw_query_string:
                path += "?" + url.raw_query_string
            if not robots.allowed(path):
                raise FetchFailed(DISALLOWED_MESSAGE, transient=False)
            delay = robots.crawl_delay
            if delay:
                return min(delay, MAX_CRAWL_DELAY) * self.share
        return 0.0

    async def _refresh(
        self, key: tuple[str, str, int | None], url: URL, stale: _Entry | None
    ) -> _Refresh:
        try:
            return await self._ask(key, url, stale)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must cost this site's rows, not the fetcher
            log.exception("unexpected error reading robots.txt for %s", url.origin())
            return _Refresh(None, FetchFailed(f"robots.txt: {type(e).__name__}", transient=False))
        finally:
            if self._inflight.get(key) is asyncio.current_task():
                del self._inflight[key]

    async def _ask(
        self, key: tuple[str, str, int | None], url: URL, stale: _Entry | None
    ) -> _Refresh:
        try:
            answer = await self._fetch(url.origin().with_path("/robots.txt"))
        except FetchFailed as e:
            if stale is not None and stale.answered:
                self._counts["fetch:stale"] += 1
                return _Refresh(self._keep(key, stale, self.unreachable_ttl), None)
            if e.timed_out:
                self._counts["fetch:timeout"] += 1
                entry = self._new(key, None, e.message, self.unreachable_ttl, answered=False)
                return _Refresh(entry, e)  # the row that waited a whole timeout fails with it
            self._counts["fetch:error"] += 1
            return _Refresh(None, e)
        status = answer.status
        if 200 <= status < 300:
            self._counts["fetch:ok"] += 1
            robots = parse(answer.body, self.tokens)
            return _Refresh(self._new(key, robots, None, self._ttl(answer.headers)), None)
        if status == 429 or status >= 500:
            if stale is not None and stale.answered:
                self._counts["fetch:stale"] += 1
                return _Refresh(self._keep(key, stale, self.unreachable_ttl), None)
            self._counts["fetch:unreachable"] += 1
            message = answer.reason or f"HTTP Error {status}"
            entry = self._new(key, None, message, self.unreachable_ttl, answered=False)
            return _Refresh(entry, None)
        # 4xx, or redirects that lead nowhere: "unavailable", everything is allowed.
        self._counts["fetch:unavailable"] += 1
        return _Refresh(self._new(key, ALLOW_ALL, None, self._ttl(answer.headers)), None)

    def _ttl(self, headers: Mapping[str, str]) -> float:
        """The answer's HTTP cache lifetime, within [MIN_TTL, a day]; a day when it has none."""
        lifetime: float | None = None
        control = headers.get("Cache-Control", "")
        if control:
            ages = {k.lower(): int(v) for k, v in _MAX_AGE.findall(control)}
            if "s-maxage" in ages or "max-age" in ages:
                lifetime = ages.get("s-maxage", ages.get("max-age"))
            elif _NO_CACHE.search(control):
                lifetime = 0.0
        if lifetime is None and "Expires" in headers:
            lifetime = self._expires_in(headers)
        if lifetime is None:
            return DAY
        return min(DAY, max(MIN_TTL, lifetime))

    def _expires_in(self, headers: Mapping[str, str]) -> float | None:
        try:
            expires = email.utils.parsedate_to_datetime(headers["Expires"]).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return 0.0  # an invalid Expires means already expired (RFC 9111 5.3)
        now = self._wall_clock()
        date = headers.get("Date")
        if date:
            with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
                now = email.utils.parsedate_to_datetime(date).timestamp()
        lifetime = expires - now
        return lifetime if math.isfinite(lifetime) else None

    def _new(
        self,
        key: tuple[str, str, int | None],
        robots: Robots | None,
        message: str | None,
        ttl: float,
        answered: bool = True,
    ) -> _Entry:
        size = _ENTRY_OVERHEAD + (robots.size() if robots is not None else len(message or ""))
        entry = _Entry(robots, message, self._clock() + ttl, size, answered)
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        self._entries[key] = entry
        self._bytes += size
        while len(self._entries) > 1 and (
            self._bytes > self.max_bytes or len(self._entries) > self.max_entries
        ):
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size
        return entry

    def _keep(self, key: tuple[str, str, int | None], stale: _Entry, ttl: float) -> _Entry:
        """An earlier answer, used again for `ttl` seconds while the site is unreachable."""
        return self._new(key, stale.robots, stale.message, ttl, stale.answered)
