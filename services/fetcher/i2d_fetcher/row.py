"""One input row in, one APPEND record out: download, hash, decode/resize/encode.

Never raises for a bad row: every failure becomes a record with img2dataset's status
(failed_to_download or failed_to_resize) and a clear error message, so the pipeline goes on
and the user sees why. Only cancellation propagates.

`fetch_value` is the whole of a row's work, from the `urls` record to the encoded APPEND
record (outcome.py): the worker processes run it (worker.py) and hand the main process bytes
it only has to produce. Nothing here touches Prometheus: metrics observed in a worker process
would never reach the main process's /metrics, so the figures travel back as `RowStats`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable

from i2d_fetcher.http.client import FetchFailed, HttpClient, download
from i2d_fetcher.imaging.blur import InvalidBoxes, boxed_item_id, parse_boxes
from i2d_fetcher.imaging.pipeline import ImageRejected, ProcessedImage
from i2d_fetcher.options import FetchOptions
from i2d_fetcher.outcome import Outcome, RowStats, failure, parse, row_fields
from i2d_fetcher.reasons import one_line
from i2d_segments.records import AppendMeta, AppendRecord, SampleStatus, UrlRow

log = logging.getLogger(__name__)

# `run_cpu(data, opts)`, or `run_cpu(data, opts, boxes)` for a row with boxes to blur: only
# those rows pass the third argument, so a two-argument runner serves rows without boxes.
RunCpu = Callable[..., Awaitable[ProcessedImage]]
HASH_MISMATCH = "hash mismatch"  # img2dataset's error string
HASH_OFF_LOOP_BYTES = 1 << 20  # hashing a larger body would stall the event loop


async def fetch_value(
    client: HttpClient,
    value: bytes,
    opts: FetchOptions,
    run_cpu: RunCpu,
    url_col: str = "url",
    caption_col: str | None = "caption",
) -> Outcome | None:
    """A `urls` record's outcome; None for a blank line (nothing to report)."""
    row = parse(value, url_col, caption_col)
    if not isinstance(row, UrlRow):
        return row
    stats = RowStats()
    return Outcome.of(await fetch_row(client, row, opts, run_cpu, stats), stats)


async def fetch_row(
    client: HttpClient,
    row: UrlRow,
    opts: FetchOptions,
    run_cpu: RunCpu,
    stats: RowStats | None = None,
) -> AppendRecord:
    """`run_cpu(data, opts[, boxes])` runs `imaging.process_image` (inline in a worker
    process, on a thread in the main one); `stats`, if given, gets the row's figures."""
    stats = stats if stats is not None else RowStats()
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
        stats.fetch_seconds = time.monotonic() - started
    data = downloaded.data
    stats.downloaded_bytes = len(data)
    verify = opts.verify_hash
    item_id, hashes = await _hashes(data, opts)
    if verify is not None and hashes.get(verify[1]) != _expected_hash(row, verify[0]):
        return failure(row, SampleStatus.FAILED_TO_DOWNLOAD, HASH_MISMATCH)
    # Timed here, around the call: in a worker process run_cpu runs inline, so this is the
    # CPU work alone (with processes_count=0 it includes waiting for the imaging thread).
    started = time.perf_counter()
    try:
        image = await (run_cpu(data, opts, boxes) if boxes else run_cpu(data, opts))
    except ImageRejected as e:
        return failure(row, e.status, e.message)
    except Exception as e:  # a bug in a decoder must cost one row, not the worker
        log.exception("unexpected imaging error for %s", row.url)
        return failure(row, SampleStatus.FAILED_TO_RESIZE, _describe(e))
    finally:
        stats.resize_seconds = time.perf_counter() - started
    if verify is not None and verify[1] != opts.compute_hash:
        hashes = {k: v for k, v in hashes.items() if k == opts.compute_hash}
    if boxes:
        item_id = boxed_item_id(item_id, boxes)
    meta = AppendMeta(
        **row_fields(row),
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


def _digests(data: bytes, names: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """item_id is the sha256 of the original bytes (a blurred one adds its boxes, see
    `boxed_item_id`); `names` are the other digests wanted
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
    return one_line(f"{type(e).__name__}: {text}" if text else type(e).__name__)
