"""The fetcher's loops run on uvloop where it is installed (a dependency on Linux): a failing
row is mostly event-loop work, and uvloop's loop is what makes it cheaper."""

from __future__ import annotations

import asyncio
import socket

import uvloop

from i2d_fetcher import eventloop
from i2d_fetcher.pool.wire import Channel


async def _loop_and_answer() -> tuple[asyncio.AbstractEventLoop, int]:
    await asyncio.sleep(0)
    return asyncio.get_running_loop(), 42


def test_the_fetcher_runs_its_coroutines_on_uvloop() -> None:
    loop, answer = eventloop.run(_loop_and_answer())
    assert isinstance(loop, uvloop.Loop)
    assert answer == 42
    assert loop.is_closed()  # run() closes its loop, as asyncio.run does


def test_a_worker_channel_works_over_uvloop_transports() -> None:
    """uvloop's transports are not asyncio.Transport subclasses: the workers' channel
    (pool/wire.py) must still take them, or every worker dies at its start."""

    async def exchange() -> list[object]:
        a, b = socket.socketpair()
        got: list[object] = []
        done = asyncio.get_running_loop().create_future()

        def on_message(m: object) -> None:
            got.append(m)
            if len(got) == 2:
                done.set_result(None)

        loop = asyncio.get_running_loop()
        _, left = await loop.connect_accepted_socket(
            lambda: Channel(lambda m: None, lambda: None), a
        )
        await loop.connect_accepted_socket(lambda: Channel(on_message, lambda: None), b)
        left.send((1, b"x"))
        left.send((2, b"y"))
        await asyncio.wait_for(done, 5)
        assert left.transport is not None
        left.transport.close()
        return got

    assert eventloop.run(exchange()) == [(1, b"x"), (2, b"y")]


def _frames_for_two_turns(linger: float) -> tuple[list[object], int]:
    """Send one message, then another a turn (and 10 ms) later, over a channel lingering
    `linger` seconds: (the messages received, the frames the sender wrote for them)."""

    async def exchange() -> tuple[list[object], int]:
        a, b = socket.socketpair()
        got: list[object] = []
        frames = 0
        done = asyncio.get_running_loop().create_future()

        def on_message(m: object) -> None:
            got.append(m)
            if len(got) == 2:
                done.set_result(None)

        class Counting(Channel):
            # Counted where they are written: a reader may get two frames in one read.
            def _flush(self) -> None:
                nonlocal frames
                frames += bool(self._outbox)
                super()._flush()

        loop = asyncio.get_running_loop()
        _, left = await loop.connect_accepted_socket(
            lambda: Counting(lambda m: None, lambda: None, linger=linger), a
        )
        await loop.connect_accepted_socket(lambda: Channel(on_message, lambda: None), b)
        left.send((1, b"x"))
        await asyncio.sleep(0.01)
        left.send((2, b"y"))
        await asyncio.wait_for(done, 5)
        assert left.transport is not None
        left.transport.close()
        return got, frames

    return eventloop.run(exchange())


def test_a_lingering_channel_sends_what_several_turns_sent_in_one_frame() -> None:
    """A worker's answers wait a few ms to share a frame (one pickle, one send, one wake-up
    of the main process for several); none is lost or reordered meanwhile."""
    assert _frames_for_two_turns(linger=0.0) == ([(1, b"x"), (2, b"y")], 2)
    assert _frames_for_two_turns(linger=1.0) == ([(1, b"x"), (2, b"y")], 1)
