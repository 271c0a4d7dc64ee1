"""The fetch workers' wire: length-prefixed pickles over a stream socket (a socketpair), an
asyncio protocol at both ends. Writes never block (the transport buffers) and reads happen on
the loop, so neither side can stall the other and no thread is needed per message."""

from __future__ import annotations

import asyncio
import pickle
import struct
from collections.abc import Callable
from typing import Any

_FRAME = struct.Struct(">I")  # length of the pickle that follows


class Channel(asyncio.Protocol):
    """Length-prefixed pickles over a stream socket, in both directions."""

    def __init__(self, on_message: Callable[[Any], None], on_lost: Callable[[], None]) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
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
                messages.append(pickle.loads(view[pos + _FRAME.size : end]))
                pos = end
        del buffer[:pos]
        for message in messages:
            self._on_message(message)

    def send(self, message: object) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # the peer is gone; its loss is handled by connection_lost
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        self.transport.write(_FRAME.pack(len(data)) + data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost()
