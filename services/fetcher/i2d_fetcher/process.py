"""One input row in, one APPEND record out: download, hash, decode/resize/encode.

Never raises for a bad row: every failure becomes a record with img2dataset's status
(failed_to_download or failed_to_resize) and a clear error message, so the pipeline goes on
and the user sees why. Only cancellation propagates.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from i2d_fetcher import metrics
from i2d_fetcher.download import FetchFailed, download
from i2d_fetcher.imaging import ImageRejected, ProcessedImage
from i2d_fetcher.options import FetchOptions
from i2d_segments.records import AppendMeta, AppendRecord, SampleStatus, UrlRow

log = logging.getLogger(__name__)

RunCpu = Callable[[bytes, FetchOptions], Awaitable[ProcessedImage]]
HASH_OFF_LOOP_BYTES = 1 << 20  # hashing a larger body would stall the event loop


async def fetch_row(
    session: aiohttp.ClientSession, row: UrlRow, opts: FetchOptions, run_cpu: RunCpu
) -> AppendRecord:
    """`run_cpu(data, opts)` runs `imaging.process_image` off the event loop."""
    started = time.monotonic()
    try:
        downloaded = await download(session, row.url, opts, max_bytes=opts.max_body_bytes)
    except FetchFailed as e:
        return failure(row, SampleStatus.FAILED_TO_DOWNLOAD, e.message)
    except Exception as e:  # a bug must cost one row, not the fetcher
        log.exception("unexpected download error for %s", row.url)
        return failure(row, SampleStatus.FAILED_TO_DOWNLOAD, _describe(e))
    finally:
        metrics.FETCH_SECONDS.observe(time.monotonic() - started)
    data = downloaded.data
    metrics.BYTES.inc(len(data))
    try:
        image = await run_cpu(data, opts)
    except ImageRejected as e:
        return failure(row, e.status, e.message)
    except Exception as e:  # e.g. a worker process that died
        log.exception("unexpected imaging error for %s", row.url)
        return failure(row, SampleStatus.FAILED_TO_RESIZE, _describe(e))
    item_id, hashes = await _hashes(data, opts)
    meta = AppendMeta(
        **_row_fields(row),
        status=SampleStatus.SUCCESS,
        item_id=item_id,
        ext=image.ext,
        mime=image.mime,
        width=image.width,
        height=image.height,
        original_width=image.original_width,
        original_height=image.original_height,
        original_size=len(data),
        exif=image.exif,
        hashes=hashes,
    )
    return AppendRecord(meta=meta, payload=image.data)


def failure(row: UrlRow, status: SampleStatus, message: str) -> AppendRecord:
    return AppendRecord(meta=AppendMeta(**_row_fields(row), status=status, error_message=message))


def _row_fields(row: UrlRow) -> dict[str, Any]:
    return {
        "sample_id": row.sample_id,
        "url": row.url,
        "caption": row.caption,
        "key": row.key,
        "extra": row.extra,
    }


def _digests(data: bytes, compute_hash: str | None) -> tuple[str, dict[str, str]]:
    """item_id is always sha256 of the original bytes; `compute_hash` names the user's
    column (img2dataset's), which may be another algorithm or none."""
    item_id = hashlib.sha256(data).hexdigest()
    if compute_hash is None:
        return item_id, {}
    if compute_hash == "sha256":
        return item_id, {"sha256": item_id}
    return item_id, {compute_hash: hashlib.new(compute_hash, data).hexdigest()}


async def _hashes(data: bytes, opts: FetchOptions) -> tuple[str, dict[str, str]]:
    if len(data) > HASH_OFF_LOOP_BYTES:  # hashlib releases the GIL on large buffers
        return await asyncio.to_thread(_digests, data, opts.compute_hash)
    return _digests(data, opts.compute_hash)


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
