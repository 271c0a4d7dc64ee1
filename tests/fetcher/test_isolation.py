"""A row fails only for its own reason: CPU work (decode, resize, encode, hashing) runs on the
imaging thread, never on the loop that reads every other row's socket, so a heavy image costs
its own time and no other host's row times out or opens that host's circuit breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from i2d_fetcher import row as row_module
from i2d_fetcher.http.client import open_client
from i2d_fetcher.http.resolver import StaticLookup
from i2d_fetcher.imaging.pipeline import process_image
from i2d_fetcher.options import FetchOptions
from i2d_fetcher.pool.cpu import ImagingThread
from i2d_fetcher.row import fetch_row
from i2d_imageserver import ImageServer
from i2d_segments.records import AppendRecord, SampleStatus, UrlRow
from tests.fetcher.helpers import fresh_seed, local_options

HEAVY_SECONDS = 3.0  # what one heavy image costs to decode here (the real one varies)


@pytest.fixture(scope="module")
def heavy_host() -> Iterator[ImageServer]:
    """Host X, serving the heavy images (a second server: another host:port)."""
    with ImageServer() as server:
        yield server


def _fetch_all(opts: FetchOptions, rows: list[UrlRow]) -> list[AppendRecord]:
    async def main() -> list[AppendRecord]:
        imaging = ImagingThread()
        try:
            async with open_client(opts, 64, StaticLookup({})) as client:
                return list(
                    await asyncio.gather(*(fetch_row(client, r, opts, imaging) for r in rows))
                )
        finally:
            imaging.close()

    return asyncio.run(main())


def test_heavy_images_on_one_host_fail_no_row_of_another(
    image_server: ImageServer, heavy_host: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three images of host X take 3 s each to decode (slept on the imaging thread, as a C
    decoder holds it without the GIL); host Y answers 20 rows after 0.5 s, within a 2 s
    timeout and a breaker that opens after 2 failures. On the loop, the decodes held every
    socket for 9 s: Y's rows timed out and its breaker opened. Off the loop, all succeed."""
    heavy_prefix = heavy_host.base_url

    def slow_for_heavy_host(data: bytes, opts: FetchOptions, *rest: Any) -> Any:
        if data.startswith(b"\x89PNG"):  # host X serves PNGs, host Y JPEGs
            time.sleep(HEAVY_SECONDS)
        return process_image(data, opts, *rest)

    monkeypatch.setattr(row_module, "process_image", slow_for_heavy_host)
    # Over pipeline.INLINE_MAX_PIXELS: a lighter image is processed on the loop (a few ms).
    heavy = [
        UrlRow(url=heavy_host.url_for(fresh_seed(), 1500, 1500, ext="png"), key=f"x{i}")
        for i in range(3)
    ]
    light = [
        UrlRow(url=image_server.url_for(fresh_seed(), 64, 64, fault="slow", delay=0.5), key=f"y{i}")
        for i in range(20)
    ]
    opts = local_options(timeout=2, host_failure_threshold=2, host_cooldown=60)
    started = time.monotonic()
    records = _fetch_all(opts, heavy + light)
    elapsed = time.monotonic() - started
    by_key = {r.meta.key: r for r in records}
    failed = {
        k: r.meta.error_message for k, r in by_key.items() if r.meta.status != SampleStatus.SUCCESS
    }
    assert failed == {}
    assert all(by_key[r.key].meta.url.startswith(heavy_prefix) for r in heavy)
    # The decodes ran one after another on the thread, while Y's downloads went on.
    assert elapsed >= 3 * HEAVY_SECONDS
