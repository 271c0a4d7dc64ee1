"""download(): timeouts, size caps, X-Robots-Tag before the body, retries only when they can
help (server counters tell), an honest User-Agent; against the local image server."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from i2d_fetcher.http.client import (
    Downloaded,
    FetchFailed,
    backoff_delay,
    download,
    open_client,
)
from i2d_fetcher.http.resolver import StaticLookup
from i2d_fetcher.http.robots import DISALLOWED_MESSAGE, is_disallowed
from i2d_fetcher.options import FetchOptions
from i2d_fetcher.reasons import one_line
from i2d_imageserver import ImageServer
from tests.fetcher.helpers import fresh_seed, local_options, run, with_session
from tests.servers.proc import free_port

FAST = local_options(timeout=5, retry_backoff=0.01)
MB = 1 << 20


def fetch(url: str, opts: FetchOptions = FAST, max_bytes: int = 16 * MB) -> Downloaded:
    return with_session(opts, lambda s: download(s, url, opts, max_bytes=max_bytes))


def failure(url: str, opts: FetchOptions = FAST, max_bytes: int = 16 * MB) -> FetchFailed:
    with pytest.raises(FetchFailed) as info:
        fetch(url, opts, max_bytes)
    return info.value


def raw(server: ImageServer, url: str) -> bytes:
    """The bytes the server serves for the same image without a fault."""
    seed_part = url.rsplit("/", 1)[1].split("?")[0]
    return fetch(f"{server.base_url}/img/{seed_part}").data


# --------------------------------------------------------------------------- success


def test_downloads_the_exact_bytes(image_server: ImageServer) -> None:
    url = image_server.url_for(fresh_seed(), 640, 480)
    got = fetch(url)
    assert got.status == 200
    assert got.content_type == "image/jpeg"
    assert got.final_url == url
    assert got.attempts == 1
    assert got.data[:2] == b"\xff\xd8"
    assert len(got.data) == int(got.headers["Content-Length"])
    assert fetch(url).data == got.data


def test_follows_redirects_and_reports_the_final_url(image_server: ImageServer) -> None:
    seed = fresh_seed()
    got = fetch(image_server.url_for(seed, 300, 200, fault="redirect"))
    assert got.final_url == image_server.url_for(seed, 300, 200)
    assert got.data == fetch(image_server.url_for(seed, 300, 200)).data


def test_user_agent_is_honest_and_carries_the_token(image_server: ImageServer) -> None:
    fetch(image_server.url_for(fresh_seed(), 200, 200))
    ua = image_server.last_headers["User-Agent"]
    assert ua == "img2dataset-segments/0.1.0 (+https://github.com/rom1504/img2dataset)"
    opts = FAST.model_copy(update={"user_agent_token": "mybot"})
    fetch(image_server.url_for(fresh_seed(), 200, 200), opts)
    assert image_server.last_headers["User-Agent"].endswith("(compatible; mybot)")
    assert "Mozilla" not in image_server.last_headers["User-Agent"]


def test_session_is_pooled_and_ignores_the_environment() -> None:
    async def check() -> None:
        async with open_client(FetchOptions(), 37, StaticLookup({})) as client:
            session = client.session
            connector = session.connector
            assert isinstance(connector, aiohttp.TCPConnector)
            assert connector.limit == 37
            assert session.trust_env is False
            assert isinstance(session.cookie_jar, aiohttp.DummyCookieJar)
            assert session.timeout.total == 10

    run(check())


# --------------------------------------------------------------------------- retries


def test_404_is_never_retried(image_server: ImageServer) -> None:
    url = image_server.url_for(fresh_seed(), 300, 200, fault="missing")
    err = failure(url, FAST.model_copy(update={"retries": 3}))
    assert (err.message, err.transient) == ("HTTP Error 404: Not Found", False)
    assert image_server.hits(url) == 1


@pytest.mark.parametrize(("kind", "status"), [("unavailable", 503), ("error", 500)])
@pytest.mark.parametrize("retries", [0, 2])
def test_5xx_is_retried_retries_times(
    image_server: ImageServer, kind: str, status: int, retries: int
) -> None:
    url = image_server.url_for(fresh_seed(), 300, 200, fault=kind)
    err = failure(url, FAST.model_copy(update={"retries": retries}))
    assert err.message.startswith(f"HTTP Error {status}: ")
    assert err.transient
    assert image_server.hits(url) == retries + 1


def test_a_retry_can_succeed(image_server: ImageServer) -> None:
    url = image_server.url_for(fresh_seed(), 300, 200, fault="flaky")
    got = fetch(url, FAST.model_copy(update={"retries": 1}))
    assert got.attempts == 2
    assert got.data == raw(image_server, url)
    other = image_server.url_for(fresh_seed(), 300, 200, fault="flaky")
    assert failure(other).message == "HTTP Error 503: Service Unavailable"  # retries=0


def test_connection_reset_is_transient_and_retried(image_server: ImageServer) -> None:
    once = image_server.url_for(fresh_seed(), 300, 200, fault="reset")
    err = failure(once)
    assert (err.message, err.transient) == ("connection error: server disconnected", True)
    # aiohttp itself resends an idempotent request once when the server drops the connection
    # (RFC 9112 9.3.1); each of our attempts may thus reach the server twice.
    per_attempt = image_server.hits(once)
    assert per_attempt in (1, 2)
    twice = image_server.url_for(fresh_seed(), 300, 200, fault="reset")
    failure(twice, FAST.model_copy(update={"retries": 1}))
    assert image_server.hits(twice) == 2 * per_attempt


def test_connection_refused_is_transient() -> None:
    err = failure(f"http://127.0.0.1:{free_port()}/img/1.jpg")
    # stable text, without host or port: users count failures by message
    assert (err.message, err.transient) == ("cannot connect: Connection refused", True)


@pytest.mark.parametrize("url", ["not a url", "http://", "//127.0.0.1/x.jpg"])
def test_invalid_urls_fail_without_retry(url: str) -> None:
    err = failure(url, FAST.model_copy(update={"retries": 2}))
    assert (err.message, err.transient) == ("invalid url", False)


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x.jpg", "file:///etc/passwd", "gopher://127.0.0.1:70/_x"]
)
def test_only_http_and_https_are_fetched(url: str) -> None:
    err = failure(url, FAST.model_copy(update={"retries": 2}))
    assert (err.message, err.transient) == ("unsupported url scheme", False)


def test_backoff_grows_exponentially_with_jitter() -> None:
    for attempt in (1, 2, 3, 4):
        full = 0.5 * 2 ** (attempt - 1)
        delays = [backoff_delay(0.5, attempt) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len(set(delays)) > 1
    assert backoff_delay(0.5, 1, retry_after=3.0) == 3.0


# --------------------------------------------------------------------------- time and size


def test_slow_headers_are_cut_by_the_timeout(image_server: ImageServer) -> None:
    url = image_server.url_for(fresh_seed(), 300, 200, fault="slow", delay=15)
    t0 = time.monotonic()
    err = failure(url, FAST.model_copy(update={"timeout": 0.5}))
    assert time.monotonic() - t0 < 5.0  # far below the 15 s the headers take, on a busy machine
    assert (err.message, err.transient) == ("timed out after 0.5s", True)


def test_dripping_body_is_cut_by_the_timeout_for_the_whole_attempt(
    image_server: ImageServer,
) -> None:
    # 100 chunks 0.2 s apart (20 s): each read is quick, only a whole-attempt timeout stops it.
    url = image_server.url_for(fresh_seed(), 300, 200, fault="drip", interval=0.2, chunks=100)
    t0 = time.monotonic()
    err = failure(url, FAST.model_copy(update={"timeout": 1.0}))
    assert time.monotonic() - t0 < 6.0
    assert err.message == "timed out after 1s"


def test_truncated_body_fails(image_server: ImageServer) -> None:
    url = image_server.url_for(fresh_seed(), 400, 300, fault="truncated")
    err = failure(url)
    assert err.message == "incomplete body: fewer bytes than Content-Length"
    assert err.transient


def test_body_over_the_cap_fails(image_server: ImageServer) -> None:
    url = image_server.url_for(fresh_seed(), 640, 480)
    size = len(fetch(url).data)
    assert len(fetch(url, max_bytes=size).data) == size  # exactly at the cap is fine
    err = failure(url, max_bytes=size - 1)
    assert err.message == f"body larger than max_body_bytes ({size - 1} bytes)"
    assert not err.transient


def test_cap_counts_decoded_bytes(image_server: ImageServer) -> None:
    # 64 MB of zeros gzip to ~64 KB: the transferred size is small, the decoded one is not.
    bomb = image_server.url_for(fresh_seed(), 300, 200, fault="gzipbomb", mb=64)
    t0 = time.monotonic()
    err = failure(bomb, max_bytes=2 * MB)
    assert "body larger than max_body_bytes" in err.message
    assert time.monotonic() - t0 < 3.0
    small = image_server.url_for(fresh_seed(), 300, 200, fault="gzipbomb", mb=1)
    assert fetch(small, max_bytes=2 * MB).data == bytes(MB)  # decoded, not the gzip stream
    assert gzip.compress(bytes(1)) != fetch(small, max_bytes=2 * MB).data


# --------------------------------------------------------------------------- X-Robots-Tag


def test_noai_is_honoured_before_the_body_is_read(image_server: ImageServer) -> None:
    # The body drips for ~20 s: failing fast proves it was never read.
    url = image_server.url_for(fresh_seed(), 300, 200, fault="noai", interval=0.5)
    t0 = time.monotonic()
    err = failure(url)
    assert time.monotonic() - t0 < 5.0
    assert (err.message, err.transient) == (DISALLOWED_MESSAGE, False)
    assert image_server.hits(url) == 1


def test_noai_can_be_ignored_on_request(image_server: ImageServer) -> None:
    url = image_server.url_for(fresh_seed(), 300, 200, fault="noai")
    got = fetch(url, FAST.model_copy(update={"disallowed_header_directives": ()}))
    assert got.data == raw(image_server, url)


@pytest.mark.parametrize(
    ("tags", "token", "disallowed"),
    [
        (["otherbot: noai"], None, False),  # scoped to another agent
        (["otherbot: noai"], "otherbot", True),  # scoped to our token
        (["OtherBot: NoAI"], "otherbot", True),  # case-insensitive
        (["img2dataset: noimageai"], None, True),  # scoped to the tool itself
        (["nofollow", "noarchive"], None, False),
        (["nofollow", "noindex"], None, True),  # every header value counts
        (["noindex, unavailable_after: 25 Jun 2010 15:00:00 PST"], None, True),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], None, False),
    ],
)
def test_x_robots_tag_scoping(
    image_server: ImageServer, tags: list[str], token: str | None, disallowed: bool
) -> None:
    url = image_server.url_for(fresh_seed(), 300, 200, fault="robots", tag=tags)
    opts = FAST.model_copy(update={"user_agent_token": token})
    if disallowed:
        assert failure(url, opts).message == DISALLOWED_MESSAGE
    else:
        assert fetch(url, opts).data[:2] == b"\xff\xd8"


def test_is_disallowed_uses_the_configured_directives() -> None:
    assert is_disallowed(["noindex"], ["noindex"])
    assert not is_disallowed(["noindex"], ["noai"])
    assert not is_disallowed(["noai"], [])
    assert is_disallowed(["mybot: noai"], ["noai"], "MyBot")


# --------------------------------------------------------------------------- connect and read


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: a new connection's SYN is dropped and the
    connect hangs, as with a firewalled host."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    filler = socket.create_connection(("127.0.0.1", port))  # takes the one queue place
    try:
        yield port
    finally:
        filler.close()
        listener.close()


def test_a_connect_that_hangs_is_cut_by_connect_timeout(unanswered_port: int) -> None:
    opts = FAST.model_copy(update={"connect_timeout": 0.3, "timeout": 5})
    err = failure(f"http://127.0.0.1:{unanswered_port}/img/1.jpg", opts)
    assert (err.message, err.transient) == ("connect timed out after 0.3s", True)


def test_a_silent_server_is_cut_by_read_timeout(image_server: ImageServer) -> None:
    # Headers at once, then one chunk per second: under the total, over the read timeout.
    url = image_server.url_for(fresh_seed(), 300, 200, fault="drip", interval=1.0, chunks=10)
    err = failure(url, FAST.model_copy(update={"read_timeout": 0.3, "timeout": 5}))
    assert (err.message, err.transient) == ("read timed out: no data for 0.3s", True)


# --------------------------------------------------------------------------- proxies and TLS


def test_proxies_from_the_environment_are_ignored(
    image_server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # a proxy there would refuse every request
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, nowhere)
    assert fetch(image_server.url_for(fresh_seed(), 200, 200)).status == 200


def test_the_proxy_option_sends_every_request_through_the_proxy(
    image_server: ImageServer,
) -> None:
    # The image server answers absolute-form requests too: it stands in for the proxy. The
    # name is resolved by the proxy, never here (the client's name table is empty).
    opts = FAST.model_copy(update={"proxy": image_server.base_url})
    path = f"/img/{fresh_seed()}_200x200.jpg"
    got = fetch(f"http://images.example{path}", opts)
    assert got.data[:2] == b"\xff\xd8"
    assert image_server.hits(path) == 1
    assert failure("http://127.0.0.2/x.jpg", opts).message == "blocked address: loopback"


def _self_signed(folder: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


def test_tls_is_verified_unless_ignore_ssl_certificate(tmp_path: Path) -> None:
    context = _self_signed(tmp_path)

    async def main() -> tuple[FetchFailed, Downloaded]:
        app = web.Application()

        async def ok(request: web.Request) -> web.Response:
            return web.Response(body=b"\xff\xd8hello", content_type="image/jpeg")

        app.router.add_get("/x.jpg", ok)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = runner.addresses[0][1]
        url = f"https://127.0.0.1:{port}/x.jpg"
        try:
            async with open_client(FAST, 4, StaticLookup({})) as client:
                with pytest.raises(FetchFailed) as info:
                    await download(client, url, FAST, max_bytes=MB)
            lax = FAST.model_copy(update={"ignore_ssl_certificate": True})
            async with open_client(lax, 4, StaticLookup({})) as client:
                got = await download(client, url, lax, max_bytes=MB)
        finally:
            await runner.cleanup()
        return info.value, got

    err, got = run(main())
    assert (err.message, err.transient) == ("TLS error: invalid certificate or handshake", False)
    assert got.data == b"\xff\xd8hello"


def test_a_malformed_response_is_a_short_reason() -> None:
    """What the server sent is not quoted into the sample's error (a header of 9000 bytes
    would otherwise be copied into every metadata row and the failures-by-reason list)."""

    async def main() -> FetchFailed:
        app = web.Application()

        async def big_header(request: web.Request) -> web.Response:
            return web.Response(body=b"\xff\xd8", headers={"X-Big": "a" * 9000})

        app.router.add_get("/x.jpg", big_header)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/x.jpg"
        try:
            async with open_client(FAST, 4, StaticLookup({})) as client:
                with pytest.raises(FetchFailed) as info:
                    await download(client, url, FAST, max_bytes=MB)
        finally:
            await runner.cleanup()
        return info.value

    err = run(main())
    assert err.message == "bad response: Got more than 8190 bytes when reading"
    assert not err.transient


def test_a_reason_is_one_line_whatever_the_server_sent() -> None:
    """A header with line breaks in its value must not put them into the sample's error (the
    parser's message quotes it: `Empty Content-Length:\\n\\n `); it stays one line."""

    async def main() -> FetchFailed:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: \n\n 1\r\n\r\n\xff\xd8")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x.jpg"
        try:
            async with open_client(FAST, 4, StaticLookup({})) as client:
                with pytest.raises(FetchFailed) as info:
                    await download(client, url, FAST, max_bytes=MB)
        finally:
            server.close()
            await server.wait_closed()
        return info.value

    err = run(main())
    assert err.message.startswith("bad response: ")
    assert err.message == err.message.strip()
    assert not any(c in err.message for c in "\r\n\t\x0b")


def test_one_line_folds_whitespace_and_bounds_length() -> None:
    assert one_line("Invalid character in Content-Length:\n\n ") == (
        "Invalid character in Content-Length:"
    )
    assert one_line("a\r\n\tb\x00c") == "a b c"
    long = one_line("x" * 1000)
    assert len(long) == 160 and long.endswith("...")
