"""The fetch workers' wire: length-prefixed pickles over a stream socket (a socketpair), an
asyncio protocol at both ends. Writes never block (the transport buffers) and reads happen on
the loop, so neither side can stall the other and no thread is needed per message. Their CPU
(pickling, socket I/O) is the `handoff` stage (i2d_segments.stagecpu).

Messages sent in one turn of the event loop travel as one frame (a pickled list), written
once at the end of the turn: the rows a poll dispatches, the results a burst of responses
completes. One pickle and one send(2) for them all instead of one each, on both sides. A
channel with a `linger` holds its messages that long instead, so those of several turns share
a frame: a worker's answers, which otherwise come one or two per turn (worker.py)."""

from __future__ import annotations

import asyncio
import pickle
import struct
import time
from collections.abc import Callable
from typing import Any, cast

from i2d_segments import stagecpu

_FRAME = struct.Struct(">I")  # length of the pickle that follows


class Channel(asyncio.Protocol):
    """Length-prefixed pickles over a stream socket, in both directions; each frame is the
    list of messages sent in one turn of the loop (or, with a linger, within it)."""

    def __init__(
        self,
        on_message: Callable[[Any], None],
        on_lost: Callable[[], None],
        linger: float = 0.0,
    ) -> None:
        """`linger`: seconds a message may wait for others to share its frame (0: the end of
        the turn it was sent in)."""
        self._on_message = on_message
        self._on_lost = on_lost
        self._linger = linger
        self._buffer = bytearray()
        self._outbox: list[object] = []  # sent since the last frame, written by _flush
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport: asyncio's own or uvloop's (which does not subclass
        # asyncio.Transport, so no isinstance check here).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        started = time.thread_time()
        buffer = self._buffer
        buffer += data
        messages = []
        pos = 0
        with memoryview(buffer) as view:
            while len(buffer) - pos >= _FRAME.size:
                (size,) = _FRAME.unpack_from(buffer, pos)
                end = pos + _FRAME.size + size
                if len(buffer) < end:
                    break
                messages += pickle.loads(view[pos + _FRAME.size : end])
                pos = end
        del buffer[:pos]
        stagecpu.add("handoff", time.thread_time() - started)
        for message in messages:
            self._on_message(message)

    def send(self, message: object) -> None:
        """Queue `message`; it is written with the others of this turn of the loop."""
        if self.transport is None or self.transport.is_closing():
            return  # the peer is gone; its loss is handled by connection_lost
        self._outbox.append(message)
        if len(self._outbox) == 1:
            loop = asyncio.get_running_loop()
            if self._linger > 0:
                loop.call_later(self._linger, self._flush)
            else:
                loop.call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._outbox = self._outbox, []
        if not batch or self.transport is None or self.transport.is_closing():
            return
        started = time.thread_time()
        data = pickle.dumps(batch, pickle.HIGHEST_PROTOCOL)
        self.transport.write(_FRAME.pack(len(data)) + data)
        stagecpu.add("handoff", time.thread_time() - started)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost()
