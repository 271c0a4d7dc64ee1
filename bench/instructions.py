"""Instructions per row of the hot paths, counted by valgrind (cachegrind, no cache simulation).

Wall-clock and CPU time on a shared machine drift by ±10% from one run to the next, more than
most single changes gain; the number of instructions a path executes does not drift. Each
scenario runs in its own process under valgrind at two sizes, and the difference divided by
the difference in rows is what one more row costs (start-up and imports cancel out):

- `worker`: a fetch worker's whole row (`fetch_value`: parse the `urls` record, download
  through the client with every guard, the failure record and its outcome) on urls that all
  answer 404, 32 in flight on one event loop, against the bench's image server; the same loop
  with a bare aiohttp session is printed beside it (`aiohttp`), what our side adds is the
  difference. The wire to the main process is not included.
- `appender`: the appender's loop (decode, segment, manifest, index commit in SQLite) over
  failure records as the workers encode them, committed in segments of 1,000. The records are
  made before, outside valgrind; their produce onto the in-process bus is counted.

    python -m bench.instructions [--scenarios worker,aiohttp,appender] [--rows 300,1300]

Valgrind runs a process ~40x slower: the defaults take about a minute (two at a time). `make
instructions` installs valgrind (Debian) if it is missing. Counts are comparable between two
commits on one machine (same Python, same libraries), not across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

SCENARIOS = ("worker", "aiohttp", "appender")
IN_FLIGHT = 32
WARM_ROWS = 200  # before the counted rows: connections, the robots.txt, caches
SEGMENT_ROWS = 1000
_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")


# --------------------------------------------------------------------------- the scenarios


def _urls_404(base_url: str, count: int) -> list[str]:
    return [f"{base_url}/fault/missing/{i}.jpg" for i in range(count)]


async def _lanes(count: int, one: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """`one(i)` for i in range(count), IN_FLIGHT at a time (a worker's rows in flight)."""
    rows = iter(range(count))

    async def lane() -> None:
        for i in rows:
            await one(i)

    await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))


async def _worker(base_url: str, count: int) -> None:
    from i2d_fetcher.http.client import open_client
    from i2d_fetcher.options import FetchOptions
    from i2d_fetcher.pool.config import worker_options
    from i2d_fetcher.pool.cpu import ImagingThread
    from i2d_fetcher.row import fetch_value
    from i2d_segments.records import UrlRow, encode_url_row

    opts = worker_options(FetchOptions(allowed_networks=("127.0.0.1/32",)), 2, 0)
    urls = _urls_404(base_url, WARM_ROWS + count)
    values = [
        encode_url_row(UrlRow(url=u, row_key=f"{i:09d}", row_id=f"{i:064x}"))
        for i, u in enumerate(urls)
    ]
    imaging = ImagingThread()
    async with open_client(opts, IN_FLIGHT, workers=2) as client:

        async def one(i: int) -> None:
            outcome = await fetch_value(client, values[i], opts, imaging)
            assert outcome is not None and outcome.reason == "http_4xx", outcome

        await _lanes(WARM_ROWS, one)
        await _lanes(count, lambda i: one(WARM_ROWS + i))
    imaging.close()


async def _aiohttp(base_url: str, count: int) -> None:
    import aiohttp

    urls = _urls_404(base_url, WARM_ROWS + count)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=IN_FLIGHT)) as session:

        async def one(i: int) -> None:
            async with session.get(urls[i]) as resp:
                await resp.read()
                assert resp.status == 404

        await _lanes(WARM_ROWS, one)
        await _lanes(count, lambda i: one(WARM_ROWS + i))


def failure_records(count: int) -> list[tuple[bytes, bytes]]:
    """(value, key) of `count` failed rows' APPEND records, as a fetch worker encodes them."""
    from i2d_fetcher.outcome import Outcome
    from i2d_segments.records import SampleStatus, UrlRow

    out = []
    for url in _urls_404("http://127.0.0.1:9", count):
        row = UrlRow(url=url, row_key=url[-16:], row_id=url)
        outcome = Outcome.failure(row, "HTTP Error 404: Not Found", SampleStatus.FAILED_TO_DOWNLOAD)
        out.append((outcome.value, outcome.key))
    return out


def _appender(records: list[tuple[bytes, bytes]]) -> None:
    from i2d_appender.service import AppenderService
    from i2d_appender.settings import AppenderSettings
    from i2d_segments.bus.memory import MemoryBus
    from i2d_segments.index.sqlite import SqliteIndex
    from i2d_segments.store.local import LocalStore

    count = len(records)
    with tempfile.TemporaryDirectory() as tmp:
        bus = MemoryBus()
        bus.create_topics({"APPEND": 1, "SEGMENT_CLOSED": 1})
        index = SqliteIndex(Path(tmp) / "index.sqlite")
        index.migrate()
        producer = bus.producer()
        for value, key in records:
            producer.produce("APPEND", value, key=key)
        producer.flush()
        settings = AppenderSettings(
            number_sample_per_shard=SEGMENT_ROWS,
            segment_idle_seconds=3600,
            poll_timeout_seconds=0.01,
            poll_linger_seconds=0,
            metrics_port=0,
        )
        appender = AppenderService(bus, LocalStore(Path(tmp) / "store"), index, settings)
        appender.consumer.subscribe([settings.append_topic], listener=appender)
        committed = count - count % SEGMENT_ROWS
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            appender.step()
            lease = index.partition(settings.append_topic, 0)
            if lease is not None and lease.next_offset >= committed:
                break
        else:
            raise RuntimeError("the appender did not commit its records")
        appender.consumer.close()
        index.close()


def run_scenario(name: str, count: int, source: str) -> None:
    """One scenario in this process (what valgrind runs). `source`: the image server's url,
    or for `appender` the file of its records (`failure_records`, pickled)."""
    if name == "appender":
        _appender(pickle.loads(Path(source).read_bytes())[:count])
        return
    main = _worker if name == "worker" else _aiohttp
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(source, count))


# --------------------------------------------------------------------------- measuring


def instructions(name: str, count: int, source: str) -> int:
    """Instructions one run of the scenario executes, start-up included."""
    cmd = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "bench.instructions",
        "--run",
        name,
        "--count",
        str(count),
        "--source",
        source,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = _IREFS.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{name} x{count} under valgrind failed:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_row(name: str, sizes: tuple[int, int], source: str) -> float:
    small, large = sizes
    with ThreadPoolExecutor(2) as pool:  # two processes at once: instruction counts do not mind
        a, b = pool.map(lambda n: instructions(name, n, source), (small, large))
    return (b - a) / (large - small)


class _Server:
    """The bench's image server, for its 404s (no corpus needed)."""

    def __enter__(self) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "i2d_imageserver", "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        base_url = self.proc.stdout.readline().strip()
        if not base_url:
            self.__exit__()
            raise RuntimeError("the image server did not start")
        return base_url

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="which paths to count")
    p.add_argument("--rows", default="300,1300", help="the two sizes (rows) each runs at")
    p.add_argument("--json", type=Path, help="also write the counts here")
    p.add_argument("--run", choices=SCENARIOS, help=argparse.SUPPRESS)  # one run, in this process
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--source", default="", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.run:
        run_scenario(ns.run, ns.count, ns.source)
        return 0
    small, large = (int(n) for n in ns.rows.split(","))
    if large <= small:
        raise SystemExit("--rows: the second size must be larger")
    names = [s for s in ns.scenarios.split(",") if s]
    results: dict[str, float] = {}
    with _Server() as base_url, tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp) / "records.pickle"
        records.write_bytes(pickle.dumps(failure_records(large)))
        for name in names:
            source = str(records) if name == "appender" else base_url
            results[name] = per_row(name, (small, large), source)
            print(f"{name:9s} {results[name] / 1000:8.1f} k instructions per row", flush=True)
    if "worker" in results and "aiohttp" in results:
        ours = results["worker"] - results["aiohttp"]
        print(f"the worker's row above bare aiohttp: {ours / 1000:.1f} k instructions")
    if ns.json:
        ns.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
