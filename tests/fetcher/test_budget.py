"""The budget of body bytes in flight (http/budget.py): memory held for bodies stays within it
whatever servers send, no row waits forever, and waiting for memory is not a timeout."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import pytest
from aiohttp import web

from i2d_fetcher.http.budget import BASE_RESERVATION, ByteBudget
from i2d_fetcher.http.client import download, open_client
from i2d_fetcher.http.resolver import StaticLookup
from i2d_fetcher.options import FetchOptions
from i2d_fetcher.row import fetch_row
from i2d_segments.records import SampleStatus, UrlRow
from tests.fetcher.helpers import local_options, run, run_here

MB = 1024 * 1024
pytestmark = pytest.mark.timeout(60)  # a budget bug shows as a wait that never ends


def test_reservations_wait_for_room_and_take_turns() -> None:
    async def main() -> list[str]:
        budget = ByteBudget(1000)
        a, b, c = budget.reservation(), budget.reservation(), budget.reservation()
        await a.reserve(400)
        order: list[str] = []

        async def take(name: str, r: Any, n: int) -> None:
            await r.reserve(n)
            order.append(name)

        # New rows' base reservations may take half the budget (the rest is room to grow).
        tb = asyncio.create_task(take("b", b, 400))
        await asyncio.sleep(0)
        assert order == [] and budget.used == 400  # b waits: 800 > 500
        # c would fit, but b came first: nobody overtakes a waiter.
        tc = asyncio.create_task(take("c", c, 100))
        await asyncio.sleep(0.01)
        assert order == []
        a.release()
        await asyncio.wait_for(asyncio.gather(tb, tc), 1)
        assert budget.used == 500
        b.release()
        c.release()
        assert budget.used == 0 and budget.holders == 0
        return order

    assert run(main()) == ["b", "c"]


def test_growing_rows_go_before_new_ones_and_never_deadlock() -> None:
    async def main() -> None:
        budget = ByteBudget(1000)
        a, b, new = budget.reservation(), budget.reservation(), budget.reservation()
        await a.reserve(300)
        await b.reserve(200)
        # Both holders want more: nothing would ever be released, so the oldest goes on.
        grow_a = asyncio.create_task(a.reserve(900))
        newcomer = asyncio.create_task(new.reserve(200))
        await asyncio.sleep(0)
        assert not grow_a.done()  # 1100 > 1000, and b may still finish and release
        grow_b = asyncio.create_task(b.reserve(900))
        await asyncio.sleep(0.01)
        assert grow_a.done() and not grow_b.done() and not newcomer.done()
        assert budget.used == 1100  # overdrawn by the one body that had to go on
        a.release()
        await asyncio.wait_for(grow_b, 1)  # the grower before the newcomer
        assert not newcomer.done()
        b.release()
        await asyncio.wait_for(newcomer, 1)
        new.release()
        assert budget.used == 0

    run(main())


def test_a_body_larger_than_the_budget_goes_through_alone() -> None:
    async def main() -> None:
        budget = ByteBudget(100)
        r = budget.reservation()
        await asyncio.wait_for(r.reserve(10_000), 1)
        assert budget.used == 10_000
        r.release()

    run(main())


def test_a_cancelled_waiter_gives_back_nothing_it_did_not_get() -> None:
    async def main() -> None:
        budget = ByteBudget(100)
        a, b = budget.reservation(), budget.reservation()
        await a.reserve(100)
        waiter = asyncio.create_task(b.reserve(50))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        a.release()
        assert budget.used == 0 and budget.waiting == 0

    run(main())


def _serve_bodies(size: int, hold: float = 0.0) -> tuple[web.Application, dict[str, int]]:
    """Bodies of `size` bytes with a Content-Length; counts the requests."""
    app = web.Application()
    seen = {"requests": 0}

    async def body(request: web.Request) -> web.Response:
        seen["requests"] += 1
        return web.Response(body=b"\xff\xd8" + b"\0" * (size - 2), content_type="image/jpeg")

    app.router.add_get("/{name}", body)
    return app, seen


def test_bodies_in_flight_stay_within_the_budget() -> None:
    """40 rows of 1 MiB bodies through a 4 MiB budget: all downloaded, never more than the
    budget (and one body) held at once, and each body counted until its CPU step is done."""
    size = MB

    async def main() -> tuple[list[Any], int]:
        app, _seen = _serve_bodies(size)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        opts = local_options(max_body_bytes_in_flight=4 * MB, timeout=20)
        peak = 0

        async def slow_cpu(fn: Any, *args: Any) -> Any:
            nonlocal peak
            peak = max(peak, client.budget.used)
            await asyncio.sleep(0.05)  # the body is held while its image is processed
            return fn(*args)

        try:
            async with open_client(opts, 64, StaticLookup({})) as client:
                rows = [UrlRow(url=f"{base}/{i}.jpg", key=str(i)) for i in range(40)]
                records = await asyncio.gather(
                    *(fetch_row(client, r, opts, slow_cpu) for r in rows)
                )
                assert client.budget.used == 0 and client.budget.holders == 0
        finally:
            await runner.cleanup()
        return list(records), peak

    records, peak = run(main())
    # Every body was downloaded and reached the CPU step (where zeros are no image).
    assert {r.meta.status for r in records} == {SampleStatus.FAILED_TO_RESIZE}
    # Without the budget all 40 bodies could be held at once; with it, at most the budget
    # plus the one body let through when every holder waits to grow.
    assert MB < peak <= 4 * MB + size


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_waiting_for_memory_is_not_a_timeout(encoding: str) -> None:
    """A row whose body waits 2 s for memory held by another row, with a 1 s timeout and a
    1 s read timeout, still succeeds: the server answered at once; the wait was ours. (A
    gzip body arrives whole at once and grows only as it is decoded, mid-body: aiohttp's
    read timer must not run while we wait.)"""
    size = 600_000

    async def main() -> tuple[Any, float]:
        app = web.Application()

        async def body(_: web.Request) -> web.Response:
            if encoding == "gzip":
                data = gzip.compress(b"\xff\xd8" + bytes(size - 2))
                headers = {"Content-Encoding": "gzip", "Content-Type": "image/jpeg"}
                return web.Response(body=data, headers=headers)
            return web.Response(body=b"\xff\xd8" + bytes(size - 2), content_type="image/jpeg")

        app.router.add_get("/{name}", body)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        opts = local_options(max_body_bytes_in_flight=MB, timeout=1, read_timeout=1)
        try:
            async with open_client(opts, 8, StaticLookup({})) as client:
                r, hog = client.budget.reservation(), client.budget.reservation()
                await r.reserve(BASE_RESERVATION)
                await hog.reserve(BASE_RESERVATION)
                await hog.reserve(MB - BASE_RESERVATION)  # the rest: r's body has to wait
                asyncio.get_running_loop().call_later(2, hog.release)
                got = await download(client, f"{base}/a.jpg", opts, max_bytes=MB, reservation=r)
                r.release()
                return got, r.waited
        finally:
            await runner.cleanup()

    got, waited = run(main())
    assert len(got.data) == size
    assert waited >= 1.5


def test_a_failed_row_releases_its_memory() -> None:
    async def main() -> tuple[Any, int]:
        opts = local_options(timeout=2)
        async with open_client(opts, 8, StaticLookup({})) as client:
            rec = await fetch_row(client, UrlRow(url="http://127.0.0.1:9/x.jpg"), opts, run_here)
            return rec, client.budget.used

    rec, used = run(main())
    assert rec.meta.status is SampleStatus.FAILED_TO_DOWNLOAD
    assert used == 0


def test_the_budget_is_split_across_worker_processes() -> None:
    from i2d_fetcher.pool.config import worker_options

    opts = FetchOptions(max_body_bytes_in_flight=256 * MB)
    parts = [worker_options(opts, 3, i).max_body_bytes_in_flight for i in range(3)]
    assert sum(parts) == 256 * MB
