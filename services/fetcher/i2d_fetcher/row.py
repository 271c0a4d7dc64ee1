"""One input row in, one APPEND record out: download on the event loop, then hash,
decode/resize/encode on the imaging thread (`run_cpu`), or on the loop itself for a light
image (at most 2 Mpx: `pipeline.is_light`).

Never raises for a bad row: every failure becomes a record with img2dataset's status
(failed_to_download or failed_to_resize) and a clear error message, so the pipeline goes on
and the user sees why. Only cancellation propagates.

`fetch_value` is the whole of a row's work, from the `urls` record to the encoded APPEND
record (outcome.py): the worker processes run it (pool/worker.py) and hand the main process bytes
it only has to produce. Nothing here touches Prometheus: metrics observed in a worker process
would never reach the main process's /metrics, so the figures travel back as `RowStats`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

from i2d_fetcher.http.client import FetchFailed, HttpClient, download
from i2d_fetcher.imaging.blur import Box, InvalidBoxes, boxed_item_id, parse_boxes
from i2d_fetcher.imaging.gate import DecodeGate
from i2d_fetcher.imaging.pipeline import ImageRejected, ProcessedImage, is_light, process_image
from i2d_fetcher.options import FetchOptions
from i2d_fetcher.outcome import Outcome, RowStats, parse
from i2d_fetcher.reasons import one_line
from i2d_segments import stagecpu
from i2d_segments.records import AppendMeta, AppendRecord, SampleStatus, UrlRow, row_identity

log = logging.getLogger(__name__)

T = TypeVar("T")


class RunCpu(Protocol):
    """Runs CPU work off the event loop: `await run_cpu(fn, *args)` is `fn(*args)` on the
    worker's imaging thread, so a heavy image never delays another row's download nor eats
    into its timeout. A light one (pipeline.is_light: at most 2 Mpx) is processed on the loop
    itself, a few ms, cheaper than the hand-off."""

    def __call__(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]: ...


HASH_MISMATCH = "hash mismatch"  # img2dataset's error string


@dataclass(frozen=True, slots=True)
class Processed:
    """What the CPU step made of a body: its hashes, and the image or why it was refused."""

    item_id: str
    hashes: dict[str, str]
    image: ProcessedImage | None
    failure: tuple[SampleStatus, str] | None
    seconds: float  # time the step took on its thread (decode, resize, encode, hashing)


async def fetch_value(
    client: HttpClient,
    value: bytes,
    opts: FetchOptions,
    run_cpu: RunCpu,
    url_field: str = "url",
    caption_field: str | None = "caption",
    gate: DecodeGate | None = None,
) -> Outcome | None:
    """A `urls` record's outcome; None for a blank line (nothing to report). Its stats carry
    no robots.txt counts: the caller attaches the client's (`report_robots`) when it reports
    them, on some rows or on each."""
    row = parse(value, url_field, caption_field)
    if not isinstance(row, UrlRow):
        return row
    stats = RowStats()
    done = await _fetch_row(client, row, opts, run_cpu, stats, gate)
    started = time.thread_time()
    if isinstance(done, Failure):
        outcome = Outcome.failure(row, done.message, done.status, stats)
    else:
        outcome = Outcome.of(done, stats)
    stagecpu.add("record", time.thread_time() - started)
    return outcome


def report_robots(client: HttpClient, stats: RowStats) -> None:
    """The client's robots.txt lookups and fetches since the last report, on `stats`."""
    if client.robots is not None:
        stats.robots = client.robots.take_counts()


class Failure(NamedTuple):
    """Why a row failed, before its record is made (`fetch_value` encodes it directly)."""

    message: str
    status: SampleStatus = SampleStatus.FAILED_TO_DOWNLOAD


async def fetch_row(
    client: HttpClient,
    row: UrlRow,
    opts: FetchOptions,
    run_cpu: RunCpu,
    stats: RowStats | None = None,
    gate: DecodeGate | None = None,
) -> AppendRecord:
    """Download on this loop, then hash, decode, resize and encode through `run_cpu`;
    `stats`, if given, gets the row's figures. The body's bytes are held in the client's
    budget (http/budget.py) from the request until its image is encoded; a heavy decode
    holds its memory in `gate`, shared by the worker processes (imaging/gate.py)."""
    done = await _fetch_row(client, row, opts, run_cpu, stats, gate)
    if isinstance(done, Failure):
        return AppendRecord.failure(row, done.message, done.status)
    return done


async def _fetch_row(
    client: HttpClient,
    row: UrlRow,
    opts: FetchOptions,
    run_cpu: RunCpu,
    stats: RowStats | None = None,
    gate: DecodeGate | None = None,
) -> AppendRecord | Failure:
    """`fetch_row`, a failure left as its reason."""
    stats = stats if stats is not None else RowStats()
    try:
        # Before the download: a row whose boxes cannot be read is not worth fetching.
        boxes = parse_boxes(row.extra.get(opts.bbox_col)) if opts.bbox_col else ()
    except InvalidBoxes as e:
        return Failure(str(e), SampleStatus.FAILED_TO_RESIZE)
    async with client.budget.reservation() as reservation:
        started = time.monotonic()
        try:
            downloaded = await download(
                client, row.url, opts, max_bytes=opts.max_body_bytes, reservation=reservation
            )
        except FetchFailed as e:
            return Failure(e.message, SampleStatus.FAILED_TO_DOWNLOAD)
        except Exception as e:  # a bug must cost one row, not the fetcher
            log.exception("unexpected download error for %s", row.url)
            return Failure(_describe(e), SampleStatus.FAILED_TO_DOWNLOAD)
        finally:
            stats.fetch_seconds = time.monotonic() - started - reservation.waited
        data = downloaded.data
        stats.downloaded_bytes = len(data)
        expected = _expected_hash(row, opts.verify_hash[0]) if opts.verify_hash else None
        try:
            if is_light(data, opts):
                # A few ms: here, not worth two thread switches. Without the gate: the loop
                # must never wait for other processes' decodes, and a decode of at most 2 Mpx
                # (~30 MB at its peak, one at a time on this loop) is what the gate leaves
                # unbudgeted anyway.
                done = process_body(data, opts, tuple(boxes), expected, None)
            else:
                done = await run_cpu(process_body, data, opts, tuple(boxes), expected, gate)
        except Exception as e:  # a bug in a decoder must cost one row, not the worker
            log.exception("unexpected imaging error for %s", row.url)
            return Failure(_describe(e), SampleStatus.FAILED_TO_RESIZE)
    stats.resize_seconds = done.seconds
    if done.failure is not None:
        status, message = done.failure
        return Failure(message, status)
    image = done.image
    assert image is not None
    meta = AppendMeta(
        **row_identity(row),
        status=SampleStatus.SUCCESS,
        item_id=boxed_item_id(done.item_id, boxes) if boxes else done.item_id,
        ext=image.ext,
        mime=image.mime,
        width=image.width,
        height=image.height,
        original_width=image.original_width,
        original_height=image.original_height,
        original_size=len(data),
        exif=image.exif,
        hashes=done.hashes,
    )
    return AppendRecord(meta=meta, payload=image.data)


def process_body(
    data: bytes,
    opts: FetchOptions,
    boxes: tuple[Box, ...],
    expected_hash: str | None,
    gate: DecodeGate | None = None,
) -> Processed:
    """The CPU side of a row, on the imaging thread: hashes (item_id, the user's
    `compute_hash`, `verify_hash`'s check), then decode, filter, resize, blur and encode."""
    started = time.perf_counter()
    cpu_started = time.thread_time()
    verify = opts.verify_hash
    names = tuple(dict.fromkeys(n for n in (opts.compute_hash, verify and verify[1]) if n))
    item_id, hashes = _digests(data, names)
    hashed = time.thread_time()
    stagecpu.add("hash", hashed - cpu_started)
    image: ProcessedImage | None = None
    failed: tuple[SampleStatus, str] | None = None
    if verify is not None and hashes.get(verify[1]) != expected_hash:
        failed = (SampleStatus.FAILED_TO_DOWNLOAD, HASH_MISMATCH)
    else:
        cpu: dict[str, float] = {}
        try:
            image = process_image(data, opts, boxes, gate, cpu)
        except ImageRejected as e:
            failed = (e.status, e.message)
        steps = sum(cpu.values())
        stagecpu.add("decode", time.thread_time() - hashed - steps)
        for stage, seconds in cpu.items():
            stagecpu.add(stage, seconds)
        if verify is not None and verify[1] != opts.compute_hash:
            hashes = {k: v for k, v in hashes.items() if k == opts.compute_hash}
    return Processed(item_id, hashes, image, failed, time.perf_counter() - started)


def _digests(data: bytes, names: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """item_id is the sha256 of the original bytes (a blurred one adds its boxes, see
    `boxed_item_id`); `names` are the other digests wanted
    (the user's `compute_hash` column, img2dataset's, and `verify_hash`'s type), each
    computed once."""
    item_id = hashlib.sha256(data).hexdigest()
    out = {n: item_id if n == "sha256" else hashlib.new(n, data).hexdigest() for n in names}
    return item_id, out


def _expected_hash(row: UrlRow, column: str) -> str | None:
    value = row.extra.get(column)
    return None if value is None else str(value).strip().lower()


def _describe(e: BaseException) -> str:
    text = str(e)
    return one_line(f"{type(e).__name__}: {text}" if text else type(e).__name__)
