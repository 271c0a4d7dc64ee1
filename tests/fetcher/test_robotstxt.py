"""robots.txt as RFC 9309 reads it (http/robotstxt.py): groups, longest match, wildcards,
percent-encoding, Crawl-delay; and the cache's rules on a fake clock (http/robotscache.py):
lifetimes, unreachable sites, stale copies, one fetch per site, bounded memory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import pytest
from yarl import URL

from i2d_fetcher.http.errors import FetchFailed
from i2d_fetcher.http.robotscache import (
    DAY,
    DISALLOWED_MESSAGE,
    MIN_TTL,
    RobotsAnswer,
    RobotsCache,
    agent_tokens,
)
from i2d_fetcher.http.robotstxt import MAX_ROBOTS_BYTES, normalize, parse, product_token
from i2d_fetcher.reasons import is_transient, reason_of

OURS = agent_tokens(None)


def allowed(robots_txt: str, path: str, tokens: tuple[str, ...] = OURS) -> bool:
    return parse(robots_txt.encode(), tokens).allowed(path)


# --------------------------------------------------------------------------- groups


def test_the_group_naming_us_replaces_the_star_group() -> None:
    txt = "User-agent: *\nDisallow: /private/\n\nUser-agent: img2dataset\nDisallow: /ai/\n"
    assert allowed(txt, "/private/x.jpg")  # the * group does not apply to us any more
    assert not allowed(txt, "/ai/x.jpg")
    assert not allowed("User-agent: *\nDisallow: /private/\n", "/private/x.jpg")
    assert allowed("User-agent: otherbot\nDisallow: /\n", "/x.jpg")
    assert allowed("", "/x.jpg") and allowed("# nothing\n", "/x.jpg")


@pytest.mark.parametrize(
    "agent",
    ["img2dataset", "IMG2DATASET", "img2dataset/1.4 (+https://x)", "img2dataset-segments"],
)
def test_our_tokens_are_matched_case_insensitively(agent: str) -> None:
    assert not allowed(f"User-agent: {agent}\nDisallow: /\n", "/a.jpg")


def test_the_users_token_is_ours_too_and_an_opt_out_of_the_tool_still_holds() -> None:
    mine = agent_tokens("MyBot/2.0")
    assert mine == ("img2dataset", "img2dataset-segments", "mybot")
    txt = "User-agent: mybot\nDisallow: /mine/\n"
    assert not allowed(txt, "/mine/a.jpg", mine)
    assert allowed(txt, "/mine/a.jpg")
    # The site allows the user's token but opts out of img2dataset: the opt-out holds.
    both = "User-agent: mybot\nAllow: /\n\nUser-agent: img2dataset\nDisallow: /\n"
    assert not allowed(both, "/a.jpg", mine)
    assert product_token("  Foo-Bot/1.0 extra ") == "foo-bot"


def test_groups_naming_the_same_agent_are_combined_and_one_group_may_name_several() -> None:
    txt = (
        "User-agent: img2dataset\nDisallow: /a/\n\n"
        "User-agent: otherbot\nUser-agent: IMG2DATASET\nDisallow: /b/\n"
        "Sitemap: https://example.com/sitemap.xml\nDisallow: /c/\n"
    )
    assert not allowed(txt, "/a/1") and not allowed(txt, "/b/1") and not allowed(txt, "/c/1")
    assert allowed(txt, "/d/1")


def test_rules_before_any_user_agent_and_unknown_lines_are_ignored() -> None:
    txt = "\ufeffDisallow: /\nfoo: bar\nUser-agent: * # all\nDisallow: /x # no x\nnonsense\n"
    assert allowed(txt, "/y") and not allowed(txt, "/x/1")


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("rules", "path", "expected"),
    [
        ("Disallow: /fish", "/fish.html", False),
        ("Disallow: /fish", "/Fish.asp", True),  # case-sensitive paths
        ("Disallow: /fish/", "/fish", True),
        ("Disallow: /*.php", "/index.php", False),
        ("Disallow: /*.php", "/folder/any.php.file.html", False),
        ("Disallow: /*.php$", "/filename.php", False),
        ("Disallow: /*.php$", "/filename.php?parameters", True),
        ("Disallow: /*.php$", "/filename.php5", True),
        ("Disallow: /fish*.php", "/fishheads/catfish.php?parameters", False),
        ("Disallow: /fish*.php", "/Fish.PHP", True),
        ("Disallow: /", "/", False),
        ("Disallow: /$", "/", False),
        ("Disallow: /$", "/page.htm", True),
        ("Disallow: *", "/anything?q=1", False),
        ("Disallow: /a*b*c$", "/a--b--c", False),
        ("Disallow: /a*b*c$", "/a--c--b", True),
        ("Disallow: /a$b", "/a$b", False),  # `$` anywhere but at the end is a character
        ("Disallow:", "/anything", True),  # an empty Disallow forbids nothing
        ("Disallow: nolead", "/nolead/x", False),  # a path missing its `/` gets one
        ("Disallow: /search", "/search?q=cats", False),  # the query counts
        ("Disallow: /*?", "/page?x=1", False),
        ("Disallow: /*?", "/page", True),
    ],
)
def test_path_patterns(rules: str, path: str, expected: bool) -> None:
    assert allowed(f"User-agent: *\n{rules}\n", path) is expected


@pytest.mark.parametrize(
    ("rules", "path", "expected"),
    [
        ("Allow: /p\nDisallow: /", "/page", True),  # the longer pattern wins
        ("Allow: /folder\nDisallow: /folder", "/folder/page", True),  # Allow wins a tie
        ("Allow: /page\nDisallow: /*.htm", "/page.htm", False),
        ("Allow: /page\nDisallow: /*.ph", "/page.php5", True),
        ("Allow: /$\nDisallow: /", "/", True),
        ("Allow: /$\nDisallow: /", "/page.htm", False),
        ("Disallow: /private/\nAllow: /private/ok.jpg", "/private/ok.jpg", True),
        ("Disallow: /private/\nAllow: /private/ok.jpg", "/private/no.jpg", False),
    ],
)
def test_the_longest_match_decides_and_allow_wins_ties(
    rules: str, path: str, expected: bool
) -> None:
    assert allowed(f"User-agent: *\n{rules}\n", path) is expected


def test_percent_encoding_is_normalised_on_both_sides() -> None:
    assert normalize("/%7efoo/%2fbar/%41") == "/~foo/%2Fbar/A"
    assert normalize("/foo/bär") == "/foo/b%C3%A4r"
    txt = "User-agent: *\nDisallow: /~joe/\nDisallow: /bär/\nDisallow: /a%2fb\n"
    assert not allowed(txt, "/%7Ejoe/x.jpg")
    assert not allowed(txt, "/b%C3%A4r/x.jpg")
    assert not allowed(txt, "/a%2Fb")
    assert allowed(txt, "/a/b")  # %2F is a reserved character: not the same as `/`
    assert allowed("User-agent: *\nDisallow: /\n", "/robots.txt")


def test_crawl_delay_of_the_groups_that_apply() -> None:
    txt = "User-agent: *\nCrawl-delay: 7\n\nUser-agent: img2dataset\nCrawl-delay: 2.5\n"
    assert parse(txt, OURS).crawl_delay == 2.5
    assert parse("User-agent: *\nCrawl-delay: 7\n", OURS).crawl_delay == 7
    assert parse("User-agent: *\nCrawl-delay: soon\n", OURS).crawl_delay is None
    assert parse("User-agent: *\nCrawl-delay: -1\nDisallow: /x\n", OURS).crawl_delay is None


def test_a_long_hostile_file_is_parsed_and_matched_quickly() -> None:
    # 500 KiB of rules whose wildcards would make a backtracking matcher explode.
    rule = "Disallow: /" + "a*" * 40 + "b$\n"
    txt = "User-agent: *\n" + rule * (MAX_ROBOTS_BYTES // len(rule))
    t0 = time.perf_counter()
    robots = parse(txt, OURS)
    parsed = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert robots.allowed("/" + "a" * 2000)
    assert not robots.allowed("/" + "a" * 100 + "b")
    assert parsed < 2.0 and time.perf_counter() - t0 < 1.0


# --------------------------------------------------------------------------- the cache


class FakeSite:
    """A fetch function answering from a script, counting its calls; time is a fake clock."""

    def __init__(self, *answers: RobotsAnswer | FetchFailed, delay: float = 0.0) -> None:
        self.answers = list(answers)
        self.calls: list[URL] = []
        self.delay = delay
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def fetch(self, url: URL) -> RobotsAnswer:
        self.calls.append(url)
        if self.delay:
            await asyncio.sleep(self.delay)
        answer = self.answers[0] if len(self.answers) == 1 else self.answers.pop(0)
        if isinstance(answer, FetchFailed):
            raise answer
        return answer

    def cache(self, **kw: Any) -> RobotsCache:
        return RobotsCache(self.fetch, OURS, clock=self.clock, wall_clock=self.clock, **kw)


def ok(txt: str, headers: Mapping[str, str] | None = None) -> RobotsAnswer:
    return RobotsAnswer(200, txt.encode(), headers or {})


def verdicts(cache: RobotsCache, *urls: str) -> list[str]:
    async def main() -> list[str]:
        out = []
        for u in urls:
            try:
                out.append(f"ok {await cache.check(URL(u)):g}")
            except FetchFailed as e:
                out.append(e.message)
        return out

    return asyncio.run(main())


def test_one_fetch_per_site_kept_a_day_by_default() -> None:
    site = FakeSite(ok("User-agent: *\nDisallow: /no/\n"))
    cache = site.cache()
    urls = ["http://a.test/x.jpg", "http://a.test/no/y.jpg", "http://A.TEST:80/z.jpg"]
    assert verdicts(cache, *urls) == ["ok 0", DISALLOWED_MESSAGE, "ok 0"]
    assert [str(u) for u in site.calls] == ["http://a.test/robots.txt"]
    # scheme, host and port make the site
    verdicts(cache, "https://a.test/x.jpg", "http://a.test:8080/x.jpg")
    assert [str(u) for u in site.calls[1:]] == [
        "https://a.test/robots.txt",
        "http://a.test:8080/robots.txt",
    ]
    site.now += DAY - 1
    verdicts(cache, "http://a.test/x.jpg")
    assert len(site.calls) == 3
    site.now += 2
    verdicts(cache, "http://a.test/x.jpg")
    assert len(site.calls) == 4
    assert cache.take_counts() == {"hit": 3, "miss": 4, "fetch:ok": 4}
    assert cache.take_counts() is None


@pytest.mark.parametrize(
    ("headers", "ttl"),
    [
        ({"Cache-Control": "public, max-age=3600"}, 3600),
        ({"Cache-Control": "max-age=60, s-maxage=7200"}, 7200),
        ({"Cache-Control": "max-age=999999"}, DAY),
        ({"Cache-Control": "no-cache"}, MIN_TTL),
        ({"Cache-Control": "max-age=0"}, MIN_TTL),
        (
            {"Expires": "Thu, 01 Jan 1970 02:00:00 GMT", "Date": "Thu, 01 Jan 1970 00:00:00 GMT"},
            7200,
        ),
        ({"Expires": "0"}, MIN_TTL),
        ({}, DAY),
    ],
)
def test_the_http_cache_lifetime_within_bounds(headers: dict[str, str], ttl: float) -> None:
    site = FakeSite(ok("User-agent: *\nDisallow: /no/\n", headers))
    cache = site.cache()
    verdicts(cache, "http://a.test/x")
    site.now += ttl - 1
    verdicts(cache, "http://a.test/x")
    assert len(site.calls) == 1
    site.now += 2
    verdicts(cache, "http://a.test/x")
    assert len(site.calls) == 2


def test_4xx_allows_everything_and_5xx_disallows_for_a_while() -> None:
    site = FakeSite(RobotsAnswer(404, b"", {}))
    assert verdicts(site.cache(), "http://a.test/x", "http://a.test/y") == ["ok 0", "ok 0"]
    assert len(site.calls) == 1
    site = FakeSite(
        RobotsAnswer(503, b"", {}, "HTTP Error 503: Service Unavailable"),
        ok("User-agent: *\nDisallow: /no\n"),
    )
    cache = site.cache(unreachable_ttl=60)
    unreachable = "disallowed by robots.txt (unreachable: HTTP Error 503: Service Unavailable)"
    assert verdicts(cache, "http://a.test/x", "http://a.test/y") == [unreachable] * 2
    assert reason_of(unreachable) == "robots_txt_unreachable" and is_transient(unreachable)
    assert reason_of(DISALLOWED_MESSAGE) == "robots_txt" and not is_transient(DISALLOWED_MESSAGE)
    site.now += 61  # then asked again
    assert verdicts(cache, "http://a.test/x", "http://a.test/no") == ["ok 0", DISALLOWED_MESSAGE]
    assert len(site.calls) == 2
    assert RobotsAnswer(429, b"", {}).status == 429
    site = FakeSite(RobotsAnswer(429, b"", {}))
    assert verdicts(site.cache(), "http://a.test/x") == [
        "disallowed by robots.txt (unreachable: HTTP Error 429)"
    ]


def test_a_failed_refresh_keeps_the_earlier_copy() -> None:
    site = FakeSite(
        ok("User-agent: *\nDisallow: /no\n"),
        RobotsAnswer(500, b"", {}, "HTTP Error 500"),
        FetchFailed("timed out after 10s", transient=True, host_failure=True, timed_out=True),
    )
    cache = site.cache(unreachable_ttl=60)
    verdicts(cache, "http://a.test/x")
    site.now += DAY + 1
    assert verdicts(cache, "http://a.test/x", "http://a.test/no") == ["ok 0", DISALLOWED_MESSAGE]
    site.now += 61
    assert verdicts(cache, "http://a.test/x") == ["ok 0"]
    assert cache.take_counts() == {"miss": 3, "hit": 1, "fetch:ok": 1, "fetch:stale": 2}


def test_a_quick_failure_is_not_kept_and_a_timeout_is() -> None:
    refused = FetchFailed("cannot connect: Connection refused", transient=True, host_failure=True)
    site = FakeSite(refused)
    cache = site.cache()
    assert verdicts(cache, "http://a.test/x", "http://a.test/y") == [refused.message] * 2
    assert len(site.calls) == 2  # each row asks, as its own download would have connected
    timeout = FetchFailed("timed out after 1s", transient=True, host_failure=True, timed_out=True)
    site = FakeSite(timeout)
    cache = site.cache(unreachable_ttl=60)
    assert verdicts(cache, "http://a.test/x", "http://a.test/y") == [
        "timed out after 1s",  # the row that waited for it
        "disallowed by robots.txt (unreachable: timed out after 1s)",
    ]
    assert len(site.calls) == 1


def test_rows_of_a_site_wait_for_one_fetch() -> None:
    site = FakeSite(ok("User-agent: *\nDisallow: /no\n"), delay=0.05)
    cache = site.cache()

    async def main() -> list[float | str]:
        async def one(u: str) -> float | str:
            try:
                return await cache.check(URL(u))
            except FetchFailed as e:
                return e.message

        urls = [f"http://a.test/{n}.jpg" for n in range(50)] + ["http://a.test/no/1.jpg"]
        urls += [f"http://b.test/{n}.jpg" for n in range(50)]
        return await asyncio.gather(*(one(u) for u in urls))

    got = asyncio.run(main())
    assert got.count(DISALLOWED_MESSAGE) == 1 and got.count(0.0) == 100
    assert sorted(str(u.host) for u in site.calls) == ["a.test", "b.test"]


def test_quick_failures_are_met_one_row_at_a_time() -> None:
    # Refused: nothing kept, the waiting rows ask again in turn (the host's breaker, not
    # the cache, bounds a dead host: see test_hosts).
    refused = FetchFailed("cannot connect: Connection refused", transient=True, host_failure=True)
    site = FakeSite(refused, refused, ok("User-agent: *\nDisallow: /no\n"), delay=0.01)
    cache = site.cache()

    async def main() -> list[float | str]:
        async def one(n: int) -> float | str:
            try:
                return await cache.check(URL(f"http://a.test/{n}.jpg"))
            except FetchFailed as e:
                return e.message

        return await asyncio.gather(*(one(n) for n in range(10)))

    got = asyncio.run(main())
    assert got.count(refused.message) == 2 and got.count(0.0) == 8
    assert len(site.calls) == 3


def test_crawl_delay_is_capped_and_shared_across_workers() -> None:
    site = FakeSite(ok("User-agent: *\nCrawl-delay: 2\n"))
    assert verdicts(site.cache(share=3), "http://a.test/x") == ["ok 6"]
    site = FakeSite(ok("User-agent: *\nCrawl-delay: 86400\n"))
    assert verdicts(site.cache(), "http://a.test/x") == ["ok 60"]


def test_the_cache_is_bounded() -> None:
    site = FakeSite(ok("User-agent: *\n" + "".join(f"Disallow: /{n}/\n" for n in range(100))))
    cache = site.cache(max_bytes=100_000)
    verdicts(cache, *(f"http://h{n}.test/x" for n in range(50)))
    assert 1 <= len(cache) < 50
    cache = site.cache(max_entries=10)
    verdicts(cache, *(f"http://h{n}.test/x" for n in range(50)))
    assert len(cache) == 10
