"""Download one URL with aiohttp: bounded in time and size, polite, retried only when a retry
can help.

- Timeout: `timeout` seconds for a whole attempt (connect, headers and body), not per socket
  read as in img2dataset, where a server dripping bytes can hold a worker forever.
- Size: bodies are counted as decoded (after Content-Encoding), reading stops past
  `max_bytes`, and a declared Content-Length over the cap fails before any body is read.
- X-Robots-Tag is checked as soon as the headers arrive; a disallowed body is never read.
- Retries: only for transient failures (timeouts, connection errors, truncated bodies, 408,
  429, 5xx), with exponential backoff and jitter, honouring a short Retry-After. Never for a
  404 or other definite answers.
- User-Agent: honest and current, `img2dataset-segments/<version> (+project url)`, plus the
  user's token.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import http_exceptions
from multidict import CIMultiDict, CIMultiDictProxy

from i2d_fetcher.options import FetchOptions
from i2d_fetcher.robots import DISALLOWED_MESSAGE, is_disallowed
from i2d_segments import __version__

PROJECT_URL = "https://github.com/rom1504/img2dataset"
ACCEPT = "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8,*/*;q=0.5"
TRANSIENT_STATUSES = frozenset({408, 429})
MAX_RETRY_AFTER = 30.0  # seconds; a server asking for longer gets a failure, not a stalled slot
DNS_CACHE_SECONDS = 300


class FetchFailed(Exception):
    """The download failed with `message`; `transient` failures may succeed if tried again."""

    def __init__(self, message: str, transient: bool, retry_after: float | None = None) -> None:
        super().__init__(message, transient, retry_after)
        self.message = message
        self.transient = transient
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


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


def client_timeout(opts: FetchOptions) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=opts.timeout, sock_connect=opts.timeout, sock_read=opts.timeout
    )


def make_session(opts: FetchOptions, concurrency: int) -> aiohttp.ClientSession:
    """One session per fetcher: a pooled connector sized to the concurrency, a DNS cache (DNS
    is the first bottleneck at scale), no proxies or netrc from the environment, no cookie
    jar (millions of hosts, nothing to remember). Call it inside the running event loop."""
    connector = aiohttp.TCPConnector(
        limit=max(1, concurrency),
        limit_per_host=0,
        use_dns_cache=True,
        ttl_dns_cache=DNS_CACHE_SECONDS,
        ssl=not opts.ignore_ssl_certificate,  # False: accept any certificate
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=client_timeout(opts),
        headers={"User-Agent": user_agent(opts), "Accept": ACCEPT},
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=True,
        raise_for_status=False,
    )


async def download(
    session: aiohttp.ClientSession, url: str, opts: FetchOptions, *, max_bytes: int
) -> Downloaded:
    """The body of `url`, or FetchFailed; transient failures are tried `opts.retries` more
    times."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await _attempt(session, url, opts, max_bytes, attempt)
        except FetchFailed as e:
            if not e.transient or attempt > opts.retries:
                raise
            if e.retry_after is not None and e.retry_after > MAX_RETRY_AFTER:
                raise
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
    session: aiohttp.ClientSession, url: str, opts: FetchOptions, max_bytes: int, attempt: int
) -> Downloaded:
    try:
        async with session.get(url, timeout=client_timeout(opts)) as resp:
            if not 200 <= resp.status < 300:
                raise FetchFailed(
                    f"HTTP Error {resp.status}: {resp.reason}",
                    transient=resp.status in TRANSIENT_STATUSES or resp.status >= 500,
                    retry_after=_retry_after(resp.headers),
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
            data = bytearray()
            async for chunk in resp.content.iter_any():
                data += chunk
                if len(data) > max_bytes:
                    resp.close()  # stop now: nothing more of this body is wanted
                    raise FetchFailed(_too_large(max_bytes), transient=False)
            return Downloaded(
                data=bytes(data),
                content_type=resp.headers.get("Content-Type"),
                headers=_copy(resp.headers),
                final_url=str(resp.url),
                status=resp.status,
                attempts=attempt,
            )
    except FetchFailed:
        raise
    except Exception as e:
        raise classify(e, opts) from None


def classify(e: Exception, opts: FetchOptions) -> FetchFailed:
    """A client exception as a failure with a stable message (no host, port or byte counts:
    users count failures by message) and whether trying again may help."""
    if isinstance(e, TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return FetchFailed(f"timed out after {opts.timeout:g}s", transient=True)
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
        return FetchFailed(f"cannot connect: {_reason(e.os_error)}", transient=True)
    if isinstance(e, aiohttp.TooManyRedirects):
        return FetchFailed("too many redirects", transient=False)
    if isinstance(e, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError | ValueError):
        # yarl raises ValueError for some malformed urls
        return FetchFailed("invalid url", transient=False)
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return FetchFailed("connection error: server disconnected", transient=True)
    if isinstance(e, aiohttp.ClientConnectionError | OSError):
        return FetchFailed(f"connection error: {_reason(e)}", transient=True)
    if isinstance(e, aiohttp.ClientResponseError):  # a malformed response
        return FetchFailed(f"bad response: {e.message}", transient=False)
    return FetchFailed(f"{type(e).__name__}: {e}", transient=False)


def _reason(e: BaseException) -> str:
    """ "Connection refused", not "Cannot connect to host 10.1.2.3:80 ssl:default [...]"."""
    errno = getattr(e, "errno", None)
    if isinstance(errno, int) and errno > 0:
        try:
            return os.strerror(errno)
        except ValueError:
            pass
    if isinstance(e, socket.gaierror) and e.strerror:
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
