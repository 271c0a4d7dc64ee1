"""robots.txt as RFC 9309 reads it: the groups that apply to us, and whether a url is allowed.

- Groups: one or more `User-agent` lines followed by rules. A product token matches a group
  case-insensitively (`img2dataset/1.0` names `img2dataset`); several groups naming the same
  token are combined. We answer to several tokens (`img2dataset`, `img2dataset-segments` and
  the user's `--user_agent_token`): every group naming one of them applies, each on its own,
  and a url is disallowed when any of them disallows it (a site opting out of img2dataset is
  honoured whatever token the user adds). Only when no group names one of our tokens does the
  `*` group apply; with neither, everything is allowed.
- Rules: `Allow` and `Disallow` paths matched against the url's path and query. `*` matches
  any run of characters, a final `$` anchors the end. The longest matching pattern (in
  octets) wins; between an Allow and a Disallow of the same length, Allow wins. An empty
  `Disallow:` forbids nothing. `/robots.txt` itself is always allowed.
- Percent-encoding: both sides are normalised before comparing: `%xx` escapes of unreserved
  characters are decoded, other escapes upper-cased, and non-ASCII characters encoded as the
  `%XX` of their UTF-8 octets (RFC 9309 2.2.2).
- `Crawl-delay` (not in the RFC, widely used): seconds between requests, read from the groups
  that apply.

Matching never backtracks: a pattern is split at its `*`s and its pieces are found left to
right (the greedy leftmost match is the right one for `*`-only patterns), so a hostile
pattern costs at most a few scans of the path. Rules are bucketed by the first two characters
of their literal prefix, so a url is compared with the few rules that can match it, not with
all of a long file's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

# The most of a robots.txt that is read and parsed (RFC 9309 2.5: at least 500 KiB).
MAX_ROBOTS_BYTES = 500 * 1024
MAX_LINE_CHARS = 4096  # a longer line is cut (a pattern that long is no real path)

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_USER_AGENT_KEYS = frozenset({"user-agent", "useragent", "user agent"})
_ALLOW_KEYS = frozenset({"allow"})
_DISALLOW_KEYS = frozenset({"disallow", "dissallow", "dissalow", "disalow", "disallaw"})
_CRAWL_DELAY_KEYS = frozenset({"crawl-delay", "crawldelay", "crawl delay"})


def product_token(value: str) -> str:
    """The product token of a user-agent value: `Img2Dataset/1.2 (+url)` -> `img2dataset`."""
    return value.strip().split("/", 1)[0].split(None, 1)[0].lower() if value.strip() else ""


def _unescape(match: re.Match[str]) -> str:
    ch = chr(int(match.group(1), 16))
    return ch if ch in _UNRESERVED else "%" + match.group(1).upper()


def normalize(path: str) -> str:
    """`path` as RFC 9309 compares it: unreserved characters unescaped, other escapes in upper
    case, non-ASCII characters as the escapes of their UTF-8 octets."""
    if not path.isascii():
        path = "".join(
            ch if ch.isascii() else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "replace"))
            for ch in path
        )
    if "%" in path:
        path = _ESCAPE.sub(_unescape, path)
    return path


@dataclass(frozen=True, slots=True)
class Rule:
    allow: bool
    priority: int  # length of the normalised pattern, in octets
    first: str  # the literal start of the path (before any `*`)
    pieces: tuple[str, ...]  # what follows each `*` (empty when there is none)
    anchored: bool  # the pattern ended with `$`

    @classmethod
    def of(cls, allow: bool, pattern: str) -> Rule:
        pattern = normalize(pattern)
        if not pattern.startswith(("/", "*")):
            pattern = "/" + pattern
        anchored = pattern.endswith("$")
        body = pattern[:-1] if anchored else pattern
        first, *rest = body.split("*")
        return cls(allow, len(pattern), first, tuple(rest), anchored)

    def matches(self, path: str) -> bool:
        if not path.startswith(self.first):
            return False
        pos = len(self.first)
        if not self.pieces:
            return pos == len(path) if self.anchored else True
        *middle, last = self.pieces
        for piece in middle:
            if piece:
                found = path.find(piece, pos)
                if found < 0:
                    return False
                pos = found + len(piece)
        if self.anchored:
            return len(path) - len(last) >= pos and path.endswith(last)
        return not last or path.find(last, pos) >= 0


@dataclass(slots=True)
class Ruleset:
    """The rules of the groups that apply to one of our tokens (or `*`)."""

    rules: list[Rule] = field(default_factory=list)
    crawl_delay: float | None = None
    _buckets: dict[str, list[Rule]] | None = None
    _generic: list[Rule] = field(default_factory=list)

    def add(self, rule: Rule) -> None:
        self.rules.append(rule)
        self._buckets = None

    def _index(self) -> dict[str, list[Rule]]:
        buckets: dict[str, list[Rule]] = {}
        generic: list[Rule] = []
        for rule in self.rules:
            if len(rule.first) >= 3:  # "/" and two more characters
                buckets.setdefault(rule.first[1:3], []).append(rule)
            else:
                generic.append(rule)
        self._generic = generic
        self._buckets = buckets
        return buckets

    def verdict(self, path: str) -> tuple[bool, int]:
        """(allowed, priority of the rule that decided: -1 when none matched)."""
        buckets = self._buckets if self._buckets is not None else self._index()
        best = -1
        allowed = True
        for rules in (self._generic, buckets.get(path[1:3], ())):
            for rule in rules:
                if rule.priority < best or (rule.priority == best and not rule.allow):
                    continue
                if rule.matches(path):
                    best = rule.priority
                    allowed = rule.allow
        return allowed, best

    def size(self) -> int:
        """Roughly the bytes it holds (for the cache's bound)."""
        return 64 + sum(96 + len(r.first) + sum(len(p) + 56 for p in r.pieces) for r in self.rules)


@dataclass(frozen=True, slots=True)
class Robots:
    """What one robots.txt says to us: one ruleset per group that applies (several when
    groups name several of our tokens); none: everything is allowed."""

    rulesets: tuple[Ruleset, ...] = ()

    def allowed(self, path: str) -> bool:
        """Whether `path` (path and query of a url, as sent) may be fetched."""
        if not self.rulesets:
            return True
        path = normalize(path or "/")
        if path == "/robots.txt":
            return True
        return all(ruleset.verdict(path)[0] for ruleset in self.rulesets)

    @property
    def crawl_delay(self) -> float | None:
        delays = [r.crawl_delay for r in self.rulesets if r.crawl_delay is not None]
        return max(delays) if delays else None

    def size(self) -> int:
        return 64 + sum(r.size() for r in self.rulesets)


ALLOW_ALL = Robots()


def parse(body: bytes | str, tokens: Iterable[str]) -> Robots:
    """The groups of a robots.txt that apply to `tokens` (product tokens, lower case)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = text.removeprefix("\ufeff")
    ours = {t.lower() for t in tokens if t and t != "*"}
    named: dict[str, Ruleset] = {}
    star: Ruleset | None = None
    current: list[Ruleset] = []  # the rulesets of the group being read
    in_agents = False  # the previous line was a User-agent line
    for raw in text.splitlines():
        line = raw.split("#", 1)[0][:MAX_LINE_CHARS]
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        value = value.strip()
        if key in _USER_AGENT_KEYS:
            if not in_agents:
                current = []
                in_agents = True
            token = product_token(value)
            target: Ruleset | None = None
            if token == "*":
                star = star if star is not None else Ruleset()
                target = star
            elif token in ours:
                target = named.setdefault(token, Ruleset())
            if target is not None and all(target is not r for r in current):
                current.append(target)
            continue
        if key in _ALLOW_KEYS or key in _DISALLOW_KEYS:
            in_agents = False
            if value and current:
                rule = Rule.of(key in _ALLOW_KEYS, value)
                for ruleset in current:
                    ruleset.add(rule)
        elif key in _CRAWL_DELAY_KEYS:
            in_agents = False
            delay = _seconds(value)
            if delay is not None:
                for ruleset in current:
                    ruleset.crawl_delay = delay
        else:  # Sitemap and others: not part of a group, and they do not end one
            continue
    if named:
        return Robots(tuple(named.values()))
    if star is not None:
        return Robots((star,))
    return ALLOW_ALL


def _seconds(value: str) -> float | None:
    try:
        delay = float(value.split(None, 1)[0]) if value else math.nan
    except ValueError:
        return None
    return delay if math.isfinite(delay) and delay > 0 else None
