"""Fetching rows where the work happens: a fetch worker process's loop (`worker_main`, started
by workers.FetchWorkers), or this process with processes_count=0 (`InlineFetcher`). Both run
`fetch_value`, the one implementation of a row's work. The fork server preloads this module
(forkserver.py), so a worker starts with aiohttp, Pillow and the rest already imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import socket

from i2d_fetcher import eventloop
from i2d_fetcher.http.client import open_client
from i2d_fetcher.imaging.pipeline import keep_image_blocks
from i2d_fetcher.outcome import failed_value
from i2d_fetcher.pool.config import WorkerConfig
from i2d_fetcher.pool.cpu import ImagingThread
from i2d_fetcher.pool.wire import Channel
from i2d_fetcher.row import fetch_value, report_robots
from i2d_segments import stagecpu
from i2d_segments.gcpolicy import collect_rarely

log = logging.getLogger(__name__)

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[worker %(process)d]: %(message)s"
# How long an answer waits for others to share its frame to the main process (wire.py).
# Answers complete one or two per turn of the loop, each frame a pickle, a send(2) here and a
# wake-up and a read there: held 5 ms, several travel in one frame. On a list of 20,000 rows
# that all answer 404 (2 workers): a third fewer frames, 5% fewer system calls in all. Against
# the code without it, in alternating runs: 404 list 4.5% less wall clock (5 pairs), 2,000
# photos 12% less (4 pairs). The rows' slots are held 5 ms longer, a small part of a fetch.
ANSWER_LINGER_SECONDS = 0.005


def worker_main(sock: socket.socket, config: WorkerConfig) -> None:
    # Ctrl-C, and a SIGTERM sent to the whole process group (a terminal, systemd, a test's
    # killpg), reach the workers too: the main process stops gracefully, finishing the rows in
    # flight here, then closes the connection, which is what ends a worker. (If the main
    # process dies, the connection closes all the same.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    collect_rarely()  # first: what the fork server imported is never walked, nor copied
    _return_large_buffers_to_the_system()
    keep_image_blocks()
    stagecpu.collect_locally()  # no /metrics here: the stage times travel with the results
    logging.basicConfig(level=config.log_level, format=_LOG_FORMAT)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    eventloop.run(_serve(sock, config))


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1 << 20


def _return_large_buffers_to_the_system() -> None:
    """Buffers of 1 MiB and more (bodies, Pillow's image blocks) are mapped on their own and
    unmapped when freed (Pillow keeps a few blocks for reuse: pipeline.keep_image_blocks).
    glibc's default raises that threshold to 32 MiB after the first large free, so a decoded
    image's memory stayed in the heap after the decode: each worker kept the peak of its
    heaviest image resident, and the decode gate (which budgets decodes in flight, not what
    glibc keeps) was no bound on the process tree."""
    with contextlib.suppress(OSError, AttributeError):
        # mallopt is glibc's, whose name is fixed (ctypes.util.find_library would run
        # `ldconfig -p` in a subprocess at each worker's start); elsewhere: nothing to do.
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)  # also stops the dynamic raise


async def _serve(sock: socket.socket, config: WorkerConfig) -> None:
    loop = asyncio.get_running_loop()
    lost = loop.create_future()
    tasks: set[asyncio.Task[None]] = set()
    # Rows received and not answered yet. Exact at each answer (a task leaves `tasks` only in
    # a callback a turn later): the last row in flight is the one that sees none besides
    # itself, and it carries the figures not reported yet.
    in_flight = 0
    opts = config.options
    imaging = ImagingThread()
    # `concurrency` rows are fetched at once; the others the main process queued here wait
    # for one to end (pool.config.capacity), in the order they came.
    running = asyncio.Semaphore(config.concurrency)
    async with open_client(opts, config.concurrency, workers=config.workers) as client:

        async def handle(task_id: int, value: bytes) -> None:
            nonlocal in_flight
            try:
                async with running:
                    outcome = await fetch_value(
                        client,
                        value,
                        opts,
                        imaging,
                        config.url_field,
                        config.caption_field,
                        config.decode_gate,
                    )
            except Exception as e:  # a bug: the row must still be answered, or it waits forever
                log.exception("unexpected error fetching %r", value[:200])
                error = f"fetch worker error: {type(e).__name__}"
                outcome = failed_value(value, error, config.url_field, config.caption_field)
            in_flight -= 1
            if outcome is not None and stagecpu.due(idle=in_flight == 0):
                # With the stage times, about every half second and on the last row in
                # flight: the robots.txt counts since the last report (not a dict per row).
                outcome.stats.cpu = stagecpu.take()
                report_robots(client, outcome.stats)
            channel.send((task_id, outcome))

        def on_message(message: tuple[int, bytes]) -> None:
            nonlocal in_flight
            in_flight += 1
            task = loop.create_task(handle(*message))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        def on_lost() -> None:
            if not lost.done():
                lost.set_result(None)

        channel = Channel(on_message, on_lost, linger=ANSWER_LINGER_SECONDS)
        await loop.connect_accepted_socket(lambda: channel, sock)
        # The main process closes the connection once nothing is in flight (or it died):
        # whatever is left has no one to report to.
        await lost
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    imaging.close()
