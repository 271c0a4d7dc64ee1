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

from i2d_fetcher import metrics
from i2d_fetcher.blur import InvalidBoxes, parse_boxes
from i2d_fetcher.download import FetchFailed, HttpClient, download
from i2d_fetcher.imaging import ImageRejected, ProcessedImage
from i2d_fetcher.options import FetchOptions
from i2d_segments.records import AppendMeta, AppendRecord, SampleStatus, UrlRow

log = logging.getLogger(__name__)

# `run_cpu(data, opts)`, or `run_cpu(data, opts, boxes)` for a row with boxes to blur: only
# those rows pass the third argument, so a two-argument runner serves rows without boxes.
RunCpu = Callable[..., Awaitable[ProcessedImage]]
HASH_MISMATCH = "hash mismatch"  # img2dataset's error string
HASH_OFF_LOOP_BYTES = 1 << 20  # hashing a larger body would stall the event loop


async def fetch_row(
    client: HttpClient, row: UrlRow, opts: FetchOptions, run_cpu: RunCpu
) -> AppendRecord:
    """`run_cpu(data, opts[, boxes])` runs `imaging.process_image` off the event loop."""
    try:
        # Before the download: a row whose boxes cannot be read is not worth fetching.
        boxes = parse_boxes(row.extra.get(opts.bbox_col)) if opts.bbox_col else ()
    except InvalidBoxes as e:
        return failure(row, SampleStatus.FAILED_TO_RESIZE, str(e))
    started = time.monotonic()
    try:
        downloaded = await download(client, row.url, opts, max_bytes=opts.max_body_bytes)
    except FetchFailed as e:
        return failure(row, SampleStatus.FAILED_TO_DOWNLOAD, e.message)
    except Exception as e:  # a bug must cost one row, not the fetcher
        log.exception("unexpected download error for %s", row.url)
        return failure(row, SampleStatus.FAILED_TO_DOWNLOAD, _describe(e))
    finally:
        metrics.FETCH_SECONDS.observe(time.monotonic() - started)
    data = downloaded.data
    metrics.BYTES.inc(len(data))
    verify = opts.verify_hash
    item_id, hashes = await _hashes(data, opts)
    if verify is not None and hashes.get(verify[1]) != _expected_hash(row, verify[0]):
        return failure(row, SampleStatus.FAILED_TO_DOWNLOAD, HASH_MISMATCH)
    try:
        image = await (run_cpu(data, opts, boxes) if boxes else run_cpu(data, opts))
    except ImageRejected as e:
        return failure(row, e.status, e.message)
    except Exception as e:  # e.g. a worker process that died
        log.exception("unexpected imaging error for %s", row.url)
        return failure(row, SampleStatus.FAILED_TO_RESIZE, _describe(e))
    if verify is not None and verify[1] != opts.compute_hash:
        hashes = {k: v for k, v in hashes.items() if k == opts.compute_hash}
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


def _digests(data: bytes, names: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """item_id is always sha256 of the original bytes; `names` are the other digests wanted
    (the user's `compute_hash` column, img2dataset's, and `verify_hash`'s type), each
    computed once."""
    item_id = hashlib.sha256(data).hexdigest()
    out = {n: item_id if n == "sha256" else hashlib.new(n, data).hexdigest() for n in names}
    return item_id, out


async def _hashes(data: bytes, opts: FetchOptions) -> tuple[str, dict[str, str]]:
    names = tuple(
        dict.fromkeys(n for n in (opts.compute_hash, opts.verify_hash and opts.verify_hash[1]) if n)
    )
    if len(data) > HASH_OFF_LOOP_BYTES:  # hashlib releases the GIL on large buffers
        return await asyncio.to_thread(_digests, data, names)
    return _digests(data, names)


def _expected_hash(row: UrlRow, column: str) -> str | None:
    value = row.extra.get(column)
    return None if value is None else str(value).strip().lower()


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
