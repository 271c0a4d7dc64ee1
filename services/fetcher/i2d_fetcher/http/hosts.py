"""Politeness and isolation per host: a concurrency cap, a request rate, Retry-After pauses and
a circuit breaker, so one dead or slow domain cannot take every slot of the fetcher.

A request to a host takes a slot (`async with hosts.slot(key) as slot`), which:

- fails fast with `CircuitOpen` while the host's breaker is open: after `failure_threshold`
  consecutive connection failures or timeouts, for `cooldown` seconds; then one probe request
  is let through, and its outcome closes the breaker or opens it again;
- waits while the host asked for a pause (429/503 with Retry-After, via `pause`);
- waits for one of the host's `max_connections` slots;
- spaces request starts to `rate` per second (0: no limit), or further apart when the
  request asks for a longer `interval` (the site's robots.txt Crawl-delay).

The slot covers one request only: a retry's backoff sleeps without it. State is kept per host
only while it matters (in use, paused, failing), so millions of hosts cost no memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType

CIRCUIT_OPEN_MESSAGE = "host circuit open: too many failures"
SWEEP_EVERY = 1024  # releases between sweeps of hosts whose state has expired


class CircuitOpen(Exception):
    def __str__(self) -> str:
        return CIRCUIT_OPEN_MESSAGE


@dataclass
class _Host:
    gate: asyncio.Semaphore
    users: int = 0  # holding or waiting for a slot
    next_start: float = 0.0  # rate limit: the earliest start of the next request
    paused_until: float = 0.0  # Retry-After
    failures: int = 0  # consecutive connection failures
    open_until: float = 0.0  # breaker open until then (when failures >= threshold)
    forget_at: float = 0.0  # failures older than a cool-down are forgotten
    probing: bool = False  # half-open: the one trial request is in flight


@dataclass
class Slot:
    """One request's hold on its host; report how the host behaved."""

    _limiter: HostLimiter
    _host: _Host
    probe: bool = False
    reported: bool = field(default=False)

    def answered(self) -> None:
        """The host answered (any HTTP status): it is alive."""
        self._limiter._answered(self)

    def failed(self) -> None:
        """Connection failure or timeout: counts towards the breaker."""
        self._limiter._failed(self)


class HostLimiter:
    def __init__(
        self,
        max_connections: int,
        rate: float = 0.0,
        failure_threshold: int = 5,
        cooldown: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.max_connections = max_connections
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        self._sleep = sleep
        self._hosts: dict[str, _Host] = {}
        self._releases = 0

    def __len__(self) -> int:
        """Hosts with state kept."""
        return len(self._hosts)

    def slot(self, key: str, interval: float = 0.0) -> _SlotHold:
        """Hold one of `key`'s slots (`async with`); its start waits at least `interval`
        seconds after the host's previous one (and at least 1 / rate)."""
        return _SlotHold(self, key, interval)

    def pause(self, key: str, seconds: float) -> None:
        """The host asked (Retry-After) that no request start for `seconds`."""
        host = self._hosts.get(key)
        if host is not None and seconds > 0:
            host.paused_until = max(host.paused_until, self._clock() + seconds)

    # ------------------------------------------------------------------ internals

    def _is_open(self, host: _Host, now: float) -> bool:
        return host.failures >= self.failure_threshold and (now < host.open_until or host.probing)

    def _admit(self, host: _Host, claim_probe: bool) -> bool:
        """Raise CircuitOpen while open; True when this request is the half-open probe."""
        if self._is_open(host, self._clock()):
            raise CircuitOpen
        if host.failures >= self.failure_threshold and claim_probe:
            host.probing = True
            return True
        return False

    async def _wait_pause(self, host: _Host) -> None:
        while (delay := host.paused_until - self._clock()) > 0:
            await self._sleep(delay)

    def _paused(self, host: _Host) -> bool:
        return host.paused_until > self._clock()

    async def _wait_rate(self, host: _Host, interval: float = 0.0) -> None:
        interval = max(self.interval, interval)
        if not interval:
            return
        now = self._clock()
        start = max(now, host.next_start)
        host.next_start = start + interval
        if start > now:
            await self._sleep(start - now)

    def _answered(self, slot: Slot) -> None:
        slot.reported = True
        host = slot._host
        host.failures = 0
        host.open_until = 0.0
        host.probing = False

    def _failed(self, slot: Slot) -> None:
        slot.reported = True
        host = slot._host
        host.failures += 1
        host.probing = False
        host.forget_at = self._clock() + self.cooldown
        if host.failures >= self.failure_threshold:
            host.open_until = host.forget_at

    def _release(self, key: str, host: _Host) -> None:
        if self._expired(host, self._clock()):
            self._hosts.pop(key, None)
        self._releases += 1
        if self._releases % SWEEP_EVERY == 0:
            now = self._clock()
            for k in [k for k, h in self._hosts.items() if self._expired(h, now)]:
                del self._hosts[k]

    def _expired(self, host: _Host, now: float) -> bool:
        """Nothing to remember: no request, no pause, no pacing, no failure still relevant."""
        if host.users or host.paused_until > now or host.next_start > now:
            return False
        # A cool-down after the last failure, a fresh start is fine (open or not).
        return not host.failures or now >= host.forget_at


class _SlotHold:
    """`async with limiter.slot(key, interval) as slot`. A class rather than an
    @asynccontextmanager generator, and the waits (pause, rate) only awaited when there is
    something to wait for: every request takes a slot, and this is most of what it costs."""

    __slots__ = ("_host", "_interval", "_key", "_limiter", "_slot")

    def __init__(self, limiter: HostLimiter, key: str, interval: float) -> None:
        self._limiter = limiter
        self._key = key
        self._interval = interval
        self._host: _Host | None = None
        self._slot: Slot | None = None

    async def __aenter__(self) -> Slot:
        limiter = self._limiter
        host = limiter._hosts.get(self._key)
        if host is None:
            host = limiter._hosts[self._key] = _Host(asyncio.Semaphore(limiter.max_connections))
        host.users += 1
        try:
            limiter._admit(host, claim_probe=False)  # fail fast, before queueing
            if limiter._paused(host):
                await limiter._wait_pause(host)
            await host.gate.acquire()
            try:
                # The breaker may have opened, or a pause begun, while this row was queued.
                slot = Slot(limiter, host, probe=limiter._admit(host, claim_probe=True))
                try:
                    if limiter._paused(host):
                        await limiter._wait_pause(host)
                    if limiter.interval or self._interval:
                        await limiter._wait_rate(host, self._interval)
                except BaseException:
                    _end_probe(slot)
                    raise
            except BaseException:
                host.gate.release()
                raise
        except BaseException:
            host.users -= 1
            limiter._release(self._key, host)
            raise
        self._host = host
        self._slot = slot
        return slot

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        host, slot = self._host, self._slot
        assert host is not None and slot is not None
        try:
            _end_probe(slot)
        finally:
            host.gate.release()
            host.users -= 1
            self._limiter._release(self._key, host)


def _end_probe(slot: Slot) -> None:
    if slot.probe and not slot.reported:
        slot._host.probing = False  # e.g. cancelled: let another probe try
