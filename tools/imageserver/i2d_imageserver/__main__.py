"""`python -m i2d_imageserver --port 0 [--write-list urls.txt --count 1000 --faults missing=0.03]`

Prints the base url on stdout once it serves (after the list is written, and after `--warm`
generated its images), so a caller can start it on port 0 and read the port. Serves until
SIGTERM or SIGINT, then shuts down cleanly (exit status 0).

Serves a /robots.txt that allows /img/ and /fault/ and disallows the rest (`--robots-txt FILE`
serves another, `--no-robots-txt` none: 404), so a crawler honouring robots.txt runs as on
a real site and still fetches every url of its lists.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from i2d_imageserver.app import BENCH_ROBOTS_TXT, RobotsFile, ServerConfig, make_app, warm
from i2d_imageserver.corpus import DEFAULT_MEMORY_BYTES
from i2d_imageserver.server import start_site
from i2d_imageserver.urls import make_url_list, parse_faults


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m i2d_imageserver",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=int, default=0, help="0 = a free port (default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--corpus", type=Path, help="folder keeping generated images across runs")
    p.add_argument(
        "--memory-mb", type=int, default=DEFAULT_MEMORY_BYTES >> 20, help="in-memory cache size"
    )
    p.add_argument("--write-list", type=Path, help="write a url list for this server here")
    p.add_argument("--count", type=int, default=1000, help="urls in the list")
    p.add_argument("--seed", type=int, default=0, help="seed of the list")
    p.add_argument("--faults", default="", help="kind=fraction,... e.g. missing=0.03,slow=0.01")
    p.add_argument(
        "--warm",
        action="store_true",
        help="generate the listed images before printing the base url",
    )
    p.add_argument("--slow-delay", type=float, default=2.0, help="seconds, for /fault/slow/")
    robots = p.add_mutually_exclusive_group()
    robots.add_argument(
        "--robots-txt", type=Path, help="serve this file as /robots.txt (default: allow all images)"
    )
    robots.add_argument("--no-robots-txt", action="store_true", help="answer 404 for /robots.txt")
    return p


async def serve(ns: argparse.Namespace) -> None:
    faults = parse_faults(ns.faults)
    config = ServerConfig(
        corpus=ns.corpus, memory_bytes=ns.memory_mb << 20, slow_delay=ns.slow_delay
    )
    robots_txt: str | None = BENCH_ROBOTS_TXT
    if ns.no_robots_txt:
        robots_txt = None
    elif ns.robots_txt is not None:
        robots_txt = ns.robots_txt.read_text()
    app = make_app(config, robots=RobotsFile(robots_txt))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner, port = await start_site(app, ns.host, ns.port)
    try:
        base_url = f"http://{ns.host}:{port}"
        if ns.write_list is not None:
            urls = make_url_list(base_url, ns.count, seed=ns.seed, faults=faults)
            ns.write_list.write_text("".join(u + "\n" for u in urls))
            if ns.warm:
                made = await warm(app, [urlsplit(u).path for u in urls])
                print(f"warmed {made} images", file=sys.stderr)
        print(base_url, flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop where it is installed: the server shares the machine with the crawler a
    benchmark measures, and its own CPU per request is best kept small."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        parse_faults(ns.faults)
    except ValueError as e:
        print(f"i2d_imageserver: {e}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(ns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
