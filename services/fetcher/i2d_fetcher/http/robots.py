"""X-Robots-Tag opt-outs, read from the response headers before the body. (robots.txt is
robotstxt.py and robotscache.py; the IPTC data-mining opt-out in an image's XMP,
imaging/xmp.py.)

img2dataset's rule: every X-Robots-Tag header value counts; a value may be scoped to one user
agent with a `token:` prefix; directives are comma-separated and case-insensitive. Two
refinements over img2dataset:
- a directive that carries its own value (`unavailable_after: <date>`, `max-snippet: 20`) is
  not mistaken for a user-agent scope, so `noindex, unavailable_after: ...` still forbids;
- a value scoped to `img2dataset` or `img2dataset-segments` applies to us as well as one
  scoped to the user's `user_agent_token`: sites opting out of the tool are honoured.
"""

from __future__ import annotations

from collections.abc import Iterable

DISALLOWED_MESSAGE = "Use of image disallowed by X-Robots-Tag directive"
OUR_AGENTS = frozenset({"img2dataset", "img2dataset-segments"})
_VALUED_DIRECTIVES = frozenset(
    {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
)


def agents_for(user_agent_token: str | None) -> frozenset[str]:
    if user_agent_token:
        return OUR_AGENTS | {user_agent_token.strip().lower()}
    return OUR_AGENTS


def is_disallowed(
    values: Iterable[str], disallowed: Iterable[str], user_agent_token: str | None = None
) -> bool:
    """True when one of the header `values` applies to us and names a disallowed directive."""
    forbidden = {d.strip().lower() for d in disallowed}
    if not forbidden:
        return False
    agents = agents_for(user_agent_token)
    for value in values:
        scope, sep, rest = value.partition(":")
        agent = scope.strip().lower()
        if sep and "," not in scope and agent not in _VALUED_DIRECTIVES:
            if agent not in agents:
                continue
            text = rest
        else:
            text = value
        directives = {d.strip().lower() for d in text.split(",")}
        if directives & forbidden:
            return True
    return False
