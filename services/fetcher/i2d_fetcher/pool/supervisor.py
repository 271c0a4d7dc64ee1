"""Where rows are fetched: worker processes that download and process them, or this process.
This is the main process's side; the workers' is worker.py.

`FetchWorkers` runs `processes_count` worker processes. Each has its own event loop, HTTP
client (open_client) and runs `fetch_value` (the one implementation of a row's work), with
`process_image` on its imaging thread (cpu.py), or on its loop for a light image (a few ms, as
one of img2dataset's threads blocks): the decoded pixels never cross a process boundary. The main
process only dispatches `urls` records and produces the APPEND records the workers already
encoded, so it stays off the critical path of a 2-core machine; it does not even import
aiohttp or Pillow.

- Wire (wire.py): one socketpair per worker, length-prefixed pickles, both ends asyncio
  protocols (non-blocking writes, reads on the loop: no thread per message, and neither side
  can block the other). Main -> worker: `(task id, urls record)`, the raw record: parsing it
  is the worker's work too. Worker -> main: `(task id, Outcome)`: the encoded record, its key,
  status, payload size and the row's metric figures, which the main observes (Prometheus in a
  worker would never reach /metrics).
- The options travel once, when a worker starts. Per-host politeness is per worker, so
  `max_connections_per_host` is split across the workers (`share`, at least 1 each) and
  `host_rate_limit` divided by their count: the total stays within the configured limit; a
  site's robots.txt Crawl-delay likewise (each worker spaces its requests N times the delay).
  The DNS cache, the robots.txt cache and the circuit breaker are per worker too: a dead host
  opens a breaker in each, and each reads a site's robots.txt once.
- Back-pressure: the caller hands out at most `config.capacity(concurrency, N)` rows: each
  worker fetches ceil(concurrency / N) at once (`thread_count` per worker, as in img2dataset)
  and holds as many again queued, which it starts in the order they came as rows end. A row
  goes to the worker with the fewest.
- A worker that dies (a segfaulting decoder, the OOM killer): the rows it may have started
  become failed samples ("fetch worker died"), those it had queued go to another worker, and
  a new worker takes its place.
- Workers start from a fork server (forkserver.py): forking a process that already runs
  librdkafka and aiohttp threads is unsafe; the fork server is a clean single-threaded process
  that imported the worker's code once, so a worker (or its replacement) starts warm.

`processes_count=0` is `InlineFetcher`: the same `fetch_value` on the caller's loop, with
`process_image` on one thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections import deque
from multiprocessing.process import BaseProcess

from i2d_fetcher.imaging.gate import DecodeGate
from i2d_fetcher.outcome import Outcome, failed_value
from i2d_fetcher.pool import forkserver
from i2d_fetcher.pool.config import WorkerConfig, worker_options
from i2d_fetcher.pool.wire import Channel

log = logging.getLogger(__name__)

WORKER_DIED = "fetch worker died"
STOP_TIMEOUT = 10.0  # seconds a worker gets to exit once its connection is closed
RESTART_DELAY = 1.0  # seconds between attempts to start a replacement that failed to start


class _Worker:
    channel: Channel

    def __init__(self, index: int, process: BaseProcess) -> None:
        self.index = index
        self.process = process
        self.pending: dict[int, tuple[asyncio.Future[Outcome | None], bytes]] = {}
        self.lost = False


class FetchWorkers:
    """`await workers.fetch(value)` fetches one `urls` record in a worker process."""

    def __init__(self, config: WorkerConfig, count: int) -> None:
        if count < 1:
            raise ValueError("FetchWorkers needs at least one worker (0: InlineFetcher)")
        self.config = config
        self.count = count
        self.restarts = 0
        self._ctx = forkserver.context()
        # One budget for heavy decodes across the workers (and their replacements): two
        # decodes at the pixel limit at once would not fit the memory target.
        self._gate = DecodeGate.for_limit(config.options.max_decoded_pixels)
        self._workers: list[_Worker] = []
        # Rows that came while no worker was alive (all died at once): sent to the first
        # replacement instead of failing too.
        self._waiting: deque[tuple[asyncio.Future[Outcome | None], bytes]] = deque()
        self._next_id = 0
        # Rows a worker fetches at once (it is given up to config.capacity's share of them).
        self._per_worker = math.ceil(config.concurrency / count)
        self._closing = False
        self._replacing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._workers = [await self._start(i) for i in range(self.count)]

    def pids(self) -> list[int]:
        """The live workers' process ids."""
        return [w.process.pid for w in self._workers if w.process.pid is not None and not w.lost]

    def fetch(self, value: bytes) -> asyncio.Future[Outcome | None]:
        future: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        self._dispatch(future, value)
        return future

    def _dispatch(self, future: asyncio.Future[Outcome | None], value: bytes) -> None:
        worker = min(self._workers, key=lambda w: (w.lost, len(w.pending)))
        if worker.lost:  # every worker just died; their replacements are starting
            self._waiting.append((future, value))
            return
        task_id = self._next_id
        self._next_id += 1
        worker.pending[task_id] = (future, value)
        worker.channel.send((task_id, value))

    async def close(self) -> None:
        """Stop every worker: close its connection, wait for it to exit (else kill it)."""
        self._closing = True
        # Not cancelled: a replacement being started must be seen through and then stopped.
        await asyncio.gather(*self._replacing, return_exceptions=True)
        for w in self._workers:
            if w.channel.transport is not None:
                w.channel.transport.close()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, _reap, w.process) for w in self._workers))
        for w in self._workers:
            self._fail_pending(w)
        while self._waiting:
            future, value = self._waiting.popleft()
            if not future.done():
                future.set_result(self._died(value))
        self._gate.close()

    # ------------------------------------------------------------------ internals

    async def _start(self, index: int) -> _Worker:
        parent, child = socket.socketpair()
        config = self.config
        concurrency = self._per_worker
        worker_config = WorkerConfig(
            options=worker_options(config.options, self.count, index),
            concurrency=concurrency,
            url_field=config.url_field,
            caption_field=config.caption_field,
            log_level=config.log_level,
            decode_gate=self._gate,
            workers=self.count,
        )
        process = self._ctx.Process(
            target=_worker_entry,
            args=(child, worker_config),
            name=f"fetch-worker-{index}",
            daemon=True,  # never outlive the main process
        )
        loop = asyncio.get_running_loop()
        try:
            # Starting talks to the fork server (blocking): off the loop.
            await loop.run_in_executor(None, process.start)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()  # the worker has its own copy; EOF must come when the worker ends
        worker = _Worker(index, process)
        worker.channel = Channel(
            lambda message: self._on_result(worker, message), lambda: self._on_lost(worker)
        )
        await loop.connect_accepted_socket(lambda: worker.channel, parent)
        return worker

    def _on_result(self, worker: _Worker, message: tuple[int, Outcome | None]) -> None:
        task_id, outcome = message
        entry = worker.pending.pop(task_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(outcome)

    def _on_lost(self, worker: _Worker) -> None:
        # The connection ends after every result the worker sent was read: what is still
        # pending will never come. Rows it had queued and not started go to another worker.
        worker.lost = True
        self._fail_pending(worker, requeue=not self._closing)
        if not self._closing:
            task = asyncio.get_running_loop().create_task(self._replace(worker))
            self._replacing.add(task)
            task.add_done_callback(self._replacing.discard)

    def _fail_pending(self, worker: _Worker, requeue: bool = False) -> None:
        """The worker's unanswered rows fail ("fetch worker died"); with `requeue`, only those
        it may have started. A worker starts its rows in the order they were sent, at most
        `_per_worker` at once (worker.py), so of its unanswered rows (`pending` keeps the
        order they were sent in) only the first `_per_worker` can have started: the others
        never ran, and are given to another worker (or the replacement) instead."""
        pending, worker.pending = worker.pending, {}
        entries = list(pending.values())
        started = entries[: self._per_worker] if requeue else entries
        for future, value in started:
            if not future.done():
                future.set_result(self._died(value))
        for future, value in entries[len(started) :]:
            if not future.done():
                self._dispatch(future, value)

    def _died(self, value: bytes) -> Outcome | None:
        return failed_value(value, WORKER_DIED, self.config.url_field, self.config.caption_field)

    async def _replace(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _reap, worker.process)
        log.error(
            "fetch worker %s (pid %s) died with exit code %s; its rows in flight failed (%r); "
            "starting a new one",
            worker.index,
            worker.process.pid,
            worker.process.exitcode,
            WORKER_DIED,
        )
        while True:
            if self._closing:
                return
            try:
                new = await self._start(worker.index)
                break
            except Exception:  # e.g. the fork server itself was killed: try again
                log.exception("could not start fetch worker %s; retrying", worker.index)
                await asyncio.sleep(RESTART_DELAY)
        self.restarts += 1
        if self._closing:  # close() began while it started: it must not be left running
            assert new.channel.transport is not None
            new.channel.transport.close()
            await loop.run_in_executor(None, _reap, new.process)
            return
        self._workers[self._workers.index(worker)] = new
        while self._waiting:
            self._dispatch(*self._waiting.popleft())


def _worker_entry(sock: socket.socket, config: WorkerConfig) -> None:
    """The worker process's target, named here so that pickling it does not import the
    worker's code (aiohttp, Pillow...) into this process; the fork server has it loaded."""
    from i2d_fetcher.pool.worker import worker_main

    worker_main(sock, config)


def _reap(process: BaseProcess) -> None:
    process.join(STOP_TIMEOUT)
    if process.exitcode is None:
        log.warning("fetch worker %s did not stop in %ss: killed", process.pid, STOP_TIMEOUT)
        process.kill()
        process.join()
