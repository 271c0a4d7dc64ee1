"""The fetcher's event loops: uvloop's where it is installed (a dependency on Linux and macOS),
asyncio's own elsewhere.

A failing row is nearly all event-loop work (a connection taken from the pool, a request
written, a status line parsed, a few callbacks), so the loop's own cost is most of what such a
row costs: on a list that all answers 404, uvloop's loop takes about a tenth off the fetch
workers' CPU per row (`make bench`, corpus 404). Both loops run the same code; nothing here
depends on which one runs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# Imported with this module, so the fork server preloads it (pool/forkserver.py): a worker
# does not import it again at its start.
try:
    import uvloop

    _LOOP_FACTORY: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
except ImportError:  # Windows, or a build without it: asyncio's default loop
    _LOOP_FACTORY = None


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the fastest loop available."""
    with asyncio.Runner(loop_factory=_LOOP_FACTORY) as runner:
        return runner.run(main)
