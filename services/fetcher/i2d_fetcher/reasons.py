"""Failure messages folded into a bounded set of reasons, for a metric label.

A sample's `error_message` is free text (img2dataset's strings, exception texts, sizes,
header values), fine in the metadata but unbounded as a Prometheus label. The reason is its
kind: the first rule whose prefix the message starts with. The order matters where prefixes
nest ("timed out" vs "connect timed out" are both `timeout`, so that one does not).
"""

from __future__ import annotations

import functools
import re

# (reason, pattern at the start of the message). The messages are this fetcher's own: see
# http/client.py, http/robots.py, http/robotscache.py, imaging/pipeline.py, imaging/xmp.py,
# imaging/formats.py, imaging/blur.py, row.py and outcome.py.
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (reason, re.compile(pattern))
    for reason, pattern in (
        ("http_429", r"HTTP Error 429\b"),
        ("http_4xx", r"HTTP Error 4\d\d\b"),
        ("http_5xx", r"HTTP Error 5\d\d\b"),
        ("http_other", r"HTTP Error "),
        ("timeout", r"(connect |read )?timed out"),
        ("dns", r"DNS resolution failed"),
        ("connection", r"(cannot connect|connection error)"),
        ("tls", r"TLS error"),
        ("blocked_address", r"blocked address"),
        ("invalid_url", r"(invalid url|unsupported url scheme|invalid redirect location)"),
        ("too_many_redirects", r"too many redirects"),
        ("host_circuit_open", r"host circuit open"),
        ("robots", r"Use of image disallowed by X-Robots-Tag"),
        ("robots_txt_unreachable", r"disallowed by robots\.txt \(unreachable"),
        ("robots_txt", r"disallowed by robots\.txt"),
        ("iptc_data_mining", r"disallowed by IPTC data mining"),
        ("too_large", r"body larger than"),
        ("bad_body", r"(incomplete body|undecodable body|bad response)"),
        ("hash_mismatch", r"hash mismatch"),
        ("filtered", r"(image too small|image area too large|aspect ratio too large)"),
        ("decompression_bomb", r"decompression bomb"),
        ("not_an_image", r"(not an image|image format .* not allowed)"),
        ("decode_error", r"Image decoding error"),
        ("invalid_bbox", r"invalid bounding box"),
        ("malformed_row", r"malformed row"),
        ("worker_died", r"fetch worker died"),
        ("publish_failed", r"could not publish record"),
    )
)
REASONS = (*(reason for reason, _ in _RULES), "other")
MESSAGE_LIMIT = 160  # characters of a failure message: a reason, not a dump
_SPACES = re.compile(r"[\s\x00-\x1f\x7f]+")
# `one_line` and `reason_of` run for every failed row, and a run's failures repeat a few
# messages (every 404 is "HTTP Error 404: Not Found"): both remember their answers, so a
# repeat is one dict lookup instead of a regex pass (one_line) or up to 27 (reason_of).
# Bounded, in count and in length: a message may quote what a server sent.
MESSAGE_CACHE = 4096  # distinct messages remembered
CACHED_LENGTH = 256  # longer messages are worked out each time


def one_line(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """`message` as one short line: runs of whitespace and control characters (a parser's
    message may quote header bytes, `Invalid character in Content-Length:\\n\\n `) become one
    space, and it is cut at `limit` characters. A message is counted and grepped by users."""
    if len(message) <= CACHED_LENGTH:
        return _one_line_cached(message, limit)
    return _one_line(message, limit)


def _one_line(message: str, limit: int) -> str:
    message = _SPACES.sub(" ", message).strip()
    return message if len(message) <= limit else message[: limit - 3] + "..."


_one_line_cached = functools.lru_cache(maxsize=MESSAGE_CACHE)(_one_line)


def reason_of(message: str | None) -> str:
    """The bounded reason of a failure message (`other` for one no rule knows)."""
    if not message:
        return "other"
    if len(message) <= CACHED_LENGTH:
        return _reason_cached(message)
    return _reason(message)


def _reason(message: str) -> str:
    for reason, pattern in _RULES:
        if pattern.match(message):
            return reason
    return "other"


_reason_cached = functools.lru_cache(maxsize=MESSAGE_CACHE)(_reason)


# Reasons a failure may not last: the same row fetched again later may succeed (rate limits,
# server errors, timeouts, DNS, refused or reset connections, TLS hiccups, a host's circuit
# open, a worker that died, a record that could not be published, a robots.txt that did not
# answer: the site's rows are refused until it does).
# `--retry_failed transient` fetches those rows again; a 404, a filter or a bad image stays.
TRANSIENT_REASONS = frozenset(
    {
        "http_429",
        "http_5xx",
        "timeout",
        "dns",
        "connection",
        "tls",
        "host_circuit_open",
        "robots_txt_unreachable",
        "worker_died",
        "publish_failed",
    }
)


def is_transient(message: str | None) -> bool:
    """The failure `message` may not last: its reason is in TRANSIENT_REASONS, or it is a body
    cut short (`bad_body` also holds bodies that can never be decoded)."""
    if message is not None and message.startswith("incomplete body"):
        return True
    return reason_of(message) in TRANSIENT_REASONS
