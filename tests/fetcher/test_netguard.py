"""The address guard: which addresses are refused and why (pure, on ipaddress objects), and that
a hostile url cannot reach them, whether named by IP literal in any form, by a hostname, or by
a redirect hop, even past the pre-check.

The "internal" target is a second image server on 127.0.0.2, outside the allow-list
(127.0.0.1/32): were the guard to fail, the request would reach it and its counter would show.
Names resolve through a fixed table: nothing here queries DNS or leaves the loopback."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from i2d_fetcher.http.client import Downloaded, FetchFailed, HttpClient, download
from i2d_fetcher.http.netguard import AddressPolicy, BlockedAddress, category, literal_address
from i2d_fetcher.http.resolver import StaticLookup
from i2d_fetcher.options import FetchOptions
from i2d_fetcher.row import fetch_row
from i2d_imageserver import ImageServer
from i2d_segments.records import SampleStatus, UrlRow
from tests.fetcher.helpers import fresh_seed, local_options, with_session

FAST = local_options(timeout=5, retry_backoff=0.01)
NAMES = {
    "good.test": ["127.0.0.1"],
    "evil.test": ["127.0.0.2"],
    "mixed.test": ["127.0.0.2", "127.0.0.1"],  # one refused answer, one allowed
}
MB = 1 << 20


@pytest.fixture(scope="module")
def internal() -> Iterator[ImageServer]:
    """Stands in for a private service: listening, reachable, and not allowed."""
    with ImageServer(host="127.0.0.2") as server:
        yield server


def _lookup() -> StaticLookup:  # a fresh table per call: it counts its queries
    return StaticLookup(NAMES)


def fetch(url: str, opts: FetchOptions = FAST) -> Downloaded:
    return with_session(opts, lambda c: download(c, url, opts, max_bytes=16 * MB), _lookup())


def failure(url: str, opts: FetchOptions = FAST) -> FetchFailed:
    with pytest.raises(FetchFailed) as info:
        fetch(url, opts)
    return info.value


# --------------------------------------------------------------------------- the policy


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private network"),
        ("172.16.0.1", "private network"),
        ("172.31.255.255", "private network"),
        ("192.168.1.1", "private network"),
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("fe80::1", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.255", "carrier-grade NAT"),
        ("fc00::1", "unique local"),
        ("fd12:3456::1", "unique local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("255.255.255.255", "reserved"),
        ("240.0.0.1", "reserved"),
        ("::ffff:127.0.0.1", "ipv4-mapped"),
        ("::ffff:8.8.8.8", "ipv4-mapped"),
        ("64:ff9b::10.0.0.1", "private network"),  # NAT64 of a private address
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("192.0.2.1", "special-purpose"),  # documentation
        ("198.18.0.1", "special-purpose"),  # benchmarking
        ("2001:db8::1", "special-purpose"),
        # Forms that carry an IPv4 address a translator or an old stack would reach.
        ("64:ff9b:1::7f00:1", "local-use NAT64"),  # RFC 8215, prefix length unknown
        ("64:ff9b:1:7f00:1::", "local-use NAT64"),
        ("64:ff9b:1::808:808", "local-use NAT64"),  # even a public IPv4 behind it
        ("fec0::1", "site-local"),
        ("::127.0.0.1", "ipv4-compatible"),
        ("::8.8.8.8", "ipv4-compatible"),
        ("::ffff:0:127.0.0.1", "ipv4-translated"),
        ("::ffff:0:8.8.8.8", "ipv4-translated"),
    ],
)
def test_non_public_addresses_are_refused_with_their_reason(address: str, reason: str) -> None:
    ip = ipaddress.ip_address(address)
    assert category(ip) == reason
    assert AddressPolicy().blocked(ip) == reason


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "172.32.0.1",
        "100.128.0.1",
        "2606:4700::1111",
        "64:ff9b::8.8.8.8",  # the well-known NAT64 prefix of a public address
        "2002:808:808::1",  # 6to4 of a public address
    ],
)
def test_public_addresses_pass(address: str) -> None:
    assert category(ipaddress.ip_address(address)) is None


def test_the_allow_list_is_the_only_way_through() -> None:
    policy = AddressPolicy(["10.0.0.0/8", "127.0.0.1", "fd00::/8"])
    assert policy.blocked(ipaddress.ip_address("10.20.30.40")) is None
    assert policy.blocked(ipaddress.ip_address("127.0.0.1")) is None
    assert policy.blocked(ipaddress.ip_address("fd00::5")) is None
    assert policy.blocked(ipaddress.ip_address("127.0.0.2")) == "loopback"
    assert policy.blocked(ipaddress.ip_address("192.168.0.1")) == "private network"
    # the mapped form of an allowed address is still another address
    assert policy.blocked(ipaddress.ip_address("::ffff:127.0.0.1")) == "ipv4-mapped"
    with pytest.raises(BlockedAddress, match=r"^blocked address: link-local$"):
        policy.check(ipaddress.ip_address("169.254.169.254"))


def test_allowed_networks_option_forms() -> None:
    assert FetchOptions().allowed_networks == ()
    assert FetchOptions(allowed_networks="127.0.0.1, 10.1.2.3/8").allowed_networks == (
        "127.0.0.1/32",
        "10.0.0.0/8",
    )
    assert FetchOptions(allowed_networks=["::1"]).allowed_networks == ("::1/128",)
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 network"):
        FetchOptions(allowed_networks="intranet")


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),  # decimal
        ("0x7f000001", "127.0.0.1"),  # hex
        ("0177.0.0.1", "127.0.0.1"),  # octal
        ("127.1", "127.0.0.1"),  # short
        ("0x7f.1", "127.0.0.1"),
        ("::ffff:7f00:1", "::ffff:127.0.0.1"),
        ("[::1]", "::1"),
    ],
)
def test_every_numeric_form_is_an_address(host: str, address: str) -> None:
    assert literal_address(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize("host", ["example.com", "cafe.be", "1e100.net", "0x7f000001.evil"])
def test_names_are_not_addresses(host: str) -> None:
    assert literal_address(host) is None


def test_yarl_leaves_legacy_forms_to_the_guard() -> None:
    # Why the guard parses numbers itself: the url library keeps them as they are.
    assert URL("http://2130706433/").raw_host == "2130706433"
    assert URL("http://0x7f000001/").raw_host == "0x7f000001"
    assert URL("http://0177.0.0.1/").raw_host == "0177.0.0.1"
    assert URL("http://[::ffff:127.0.0.1]/").raw_host == "::ffff:7f00:1"


def test_the_socket_factory_refuses_before_a_socket_exists() -> None:
    policy = AddressPolicy(["127.0.0.1/32"])
    with pytest.raises(BlockedAddress, match="loopback"):
        policy.socket_factory((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", 80)))
    sock = policy.socket_factory((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80)))
    sock.close()


# --------------------------------------------------------------------------- against servers


def test_ip_literal_targets_are_refused(internal: ImageServer) -> None:
    url = internal.url_for(fresh_seed(), 200, 200)
    err = failure(url, FAST.model_copy(update={"retries": 2}))
    assert (err.message, err.transient) == ("blocked address: loopback", False)
    assert internal.hits(url) == 0


@pytest.mark.parametrize("host", ["2130706434", "0x7f000002", "0177.0.0.2", "127.2"])
def test_numeric_forms_are_refused(internal: ImageServer, host: str) -> None:
    path = f"/img/{fresh_seed()}_200x200.jpg"
    assert failure(f"http://{host}:{internal.port}{path}").message == "blocked address: loopback"
    assert internal.hits(path) == 0


@pytest.mark.parametrize(
    ("host", "reason"),
    [("[::ffff:127.0.0.2]", "ipv4-mapped"), ("[::1]", "loopback"), ("0.0.0.0", "unspecified")],
)
def test_other_literal_forms_are_refused(host: str, reason: str) -> None:
    assert failure(f"http://{host}:8080/x.jpg").message == f"blocked address: {reason}"


def test_hostnames_are_judged_by_what_they_resolve_to(
    image_server: ImageServer, internal: ImageServer
) -> None:
    path = f"/img/{fresh_seed()}_200x200.jpg"
    err = failure(f"http://evil.test:{internal.port}{path}")
    assert (err.message, err.transient) == ("blocked address: loopback", False)
    assert internal.hits(path) == 0
    good = fetch(f"http://good.test:{image_server.port}{path}")
    assert good.data[:2] == b"\xff\xd8"
    assert failure("http://unknown.test/x.jpg").message.startswith("DNS resolution failed: ")


def test_only_checked_addresses_are_connected(internal: ImageServer) -> None:
    # mixed.test resolves to 127.0.0.2 (refused) and 127.0.0.1 (allowed), same port on both:
    # the connection goes to the allowed one only.
    with ImageServer(host="127.0.0.1", port=internal.port) as allowed:
        path = f"/img/{fresh_seed()}_200x200.jpg"
        for _ in range(3):
            assert fetch(f"http://mixed.test:{internal.port}{path}").data[:2] == b"\xff\xd8"
        assert allowed.hits(path) == 3
        assert internal.hits(path) == 0


def test_the_connector_refuses_even_without_the_pre_check(internal: ImageServer) -> None:
    """Were `download`'s own check skipped (a bug), the session itself cannot connect."""
    path = f"/img/{fresh_seed()}_200x200.jpg"

    async def direct(client: HttpClient) -> list[BaseException]:
        errors: list[BaseException] = []
        for url in (internal.base_url + path, f"http://evil.test:{internal.port}{path}"):
            with pytest.raises(aiohttp.ClientConnectorError) as info:
                async with client.session.get(url):
                    pass
            errors.append(info.value.os_error)
        return errors

    errors = with_session(FAST, direct, _lookup())
    assert [str(e) for e in errors] == ["blocked address: loopback"] * 2
    assert all(isinstance(e, BlockedAddress) for e in errors)
    assert internal.hits(path) == 0


def test_a_refused_url_is_a_failed_sample(internal: ImageServer) -> None:
    row = UrlRow(url="http://169.254.169.254/latest/meta-data/")

    async def run_cpu(*_args: Any) -> Any:
        raise AssertionError("nothing to decode")

    rec = with_session(FAST, lambda c: fetch_row(c, row, FAST, run_cpu), _lookup())
    assert rec.meta.status is SampleStatus.FAILED_TO_DOWNLOAD
    assert rec.meta.error_message == "blocked address: link-local"


# --------------------------------------------------------------------------- redirects


def test_each_redirect_hop_is_checked(image_server: ImageServer, internal: ImageServer) -> None:
    seed = fresh_seed()
    target = internal.url_for(seed, 200, 200)
    by_ip = image_server.url_for(seed, 200, 200, fault="redirect", to=target)
    assert failure(by_ip).message == "blocked address: loopback"
    by_name = f"http://evil.test:{internal.port}/img/{seed}_200x200.jpg"
    hop = image_server.url_for(seed, 200, 200, fault="redirect", to=by_name)
    assert failure(hop).message == "blocked address: loopback"
    metadata = image_server.url_for(seed, 200, 200, fault="redirect", to="http://169.254.169.254/")
    assert failure(metadata).message == "blocked address: link-local"
    assert internal.hits(target) == 0
    assert image_server.hits(by_ip) == 3  # the redirects themselves were served


def test_redirects_to_other_schemes_are_refused(image_server: ImageServer) -> None:
    url = image_server.url_for(fresh_seed(), 200, 200, fault="redirect", to="file:///etc/passwd")
    assert failure(url).message == "unsupported url scheme"


def test_redirects_are_followed_up_to_max_redirects(image_server: ImageServer) -> None:
    seed = fresh_seed()
    final = image_server.url_for(seed, 200, 200)
    # a chain of three redirects ending at the image
    chain = final
    for _ in range(3):
        chain = image_server.url_for(seed, 200, 200, fault="redirect", to=chain)
    assert fetch(chain, FAST.model_copy(update={"max_redirects": 3})).final_url == final
    err = failure(chain, FAST.model_copy(update={"max_redirects": 2}))
    assert (err.message, err.transient) == ("too many redirects", False)


def test_a_long_chain_stops_after_max_redirects(image_server: ImageServer) -> None:
    seed = fresh_seed()
    final = image_server.url_for(seed, 200, 200)
    chain = final
    for _ in range(8):
        chain = image_server.url_for(seed, 200, 200, fault="redirect", to=chain)
    before = image_server.count("redirect")
    err = failure(chain, FAST.model_copy(update={"max_redirects": 4}))
    assert err.message == "too many redirects"
    assert image_server.count("redirect") - before == 5  # the first request, four followed
    assert image_server.hits(final) == 0


def test_pre_check_and_connector_share_one_lookup(image_server: ImageServer) -> None:
    lookup = StaticLookup(NAMES)
    path = f"/img/{fresh_seed()}_200x200.jpg"

    async def twice(client: HttpClient) -> None:
        for _ in range(2):
            await download(
                client, f"http://good.test:{image_server.port}{path}", FAST, max_bytes=MB
            )

    with_session(FAST, twice, lookup)
    assert lookup.queries == ["good.test"]
    assert image_server.hits(path) == 2
