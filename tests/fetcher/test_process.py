"""fetch_row end to end: one APPEND record per input row, success or failure, never a raise."""

from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest
from PIL import Image

from i2d_fetcher.options import FetchOptions
from i2d_fetcher.row import RunCpu, fetch_row
from i2d_imageserver import ImageServer
from i2d_segments.records import (
    AppendRecord,
    SampleStatus,
    UrlRow,
    decode_append,
    encode_append,
    parse_url_value,
)
from tests.fetcher.helpers import fresh_seed, local_options, run_here, served, with_session

FAST = local_options(timeout=5, retry_backoff=0.01)


def fetch_one(row: UrlRow, opts: FetchOptions = FAST, run_cpu: RunCpu = run_here) -> AppendRecord:
    return with_session(opts, lambda s: fetch_row(s, row, opts, run_cpu))


def test_success_record_carries_payload_ids_and_img2dataset_fields(
    image_server: ImageServer,
) -> None:
    seed = fresh_seed()
    row = UrlRow(
        url=image_server.url_for(seed, 640, 480),
        caption="a cat",
        key="k1",
        extra={"license": "cc-by"},
    )
    rec = fetch_one(row)
    original = served(image_server, seed, 640, 480)
    m = rec.meta
    assert m.status is SampleStatus.SUCCESS
    assert m.error_message is None
    assert m.item_id == hashlib.sha256(original).hexdigest()
    assert rec.key == m.item_id.encode()
    assert m.hashes == {"sha256": m.item_id}
    assert (m.sample_id, m.url, m.caption, m.key) == ("k1", row.url, "a cat", "k1")
    assert m.extra == {"license": "cc-by"}
    assert (m.ext, m.mime) == ("jpg", "image/jpeg")
    assert (m.width, m.height, m.original_width, m.original_height) == (256, 256, 640, 480)
    assert m.original_size == len(original)
    assert m.exif == "{}"
    assert rec.payload is not None
    assert Image.open(io.BytesIO(rec.payload)).size == (256, 256)
    # and it survives the bus encoding
    assert decode_append(encode_append(rec)) == rec


def test_compute_hash_names_the_column_but_item_id_stays_sha256(
    image_server: ImageServer,
) -> None:
    seed = fresh_seed()
    original = served(image_server, seed, 300, 200)
    row = UrlRow(url=image_server.url_for(seed, 300, 200))
    md5 = fetch_one(row, FAST.model_copy(update={"compute_hash": "md5"})).meta
    assert md5.hashes == {"md5": hashlib.md5(original).hexdigest()}
    assert md5.item_id == hashlib.sha256(original).hexdigest()
    none = fetch_one(row, FAST.model_copy(update={"compute_hash": None})).meta
    assert none.hashes == {}
    assert none.item_id == md5.item_id


def test_resize_options_shape_the_payload(image_server: ImageServer) -> None:
    row = UrlRow(url=image_server.url_for(fresh_seed(), 800, 400))
    opts = FAST.model_copy(
        update={"encode_format": "webp", "resize_mode": "keep_ratio_largest", "image_size": 100}
    )
    rec = fetch_one(row, opts)
    assert (rec.meta.ext, rec.meta.mime) == ("webp", "image/webp")
    assert (rec.meta.width, rec.meta.height) == (100, 50)
    assert rec.payload is not None
    assert Image.open(io.BytesIO(rec.payload)).format == "WEBP"


def assert_failure(rec: AppendRecord, status: SampleStatus, message: str) -> None:
    m = rec.meta
    assert (m.status, m.error_message) == (status, message)
    assert rec.payload is None
    assert m.item_id is None and m.hashes == {} and m.width is None
    assert rec.key == m.sample_id.encode()


def test_download_failures_become_failed_to_download(image_server: ImageServer) -> None:
    missing = UrlRow(url=image_server.url_for(fresh_seed(), 300, 200, fault="missing"))
    assert_failure(fetch_one(missing), SampleStatus.FAILED_TO_DOWNLOAD, "HTTP Error 404: Not Found")
    noai = UrlRow(url=image_server.url_for(fresh_seed(), 300, 200, fault="noai"))
    assert_failure(
        fetch_one(noai),
        SampleStatus.FAILED_TO_DOWNLOAD,
        "Use of image disallowed by X-Robots-Tag directive",
    )
    bad = UrlRow(url="not a url", caption="kept")
    rec = fetch_one(bad)
    assert rec.meta.status is SampleStatus.FAILED_TO_DOWNLOAD
    assert rec.meta.caption == "kept"
    assert rec.meta.sample_id == bad.sample_id


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # see test_imaging
def test_image_failures_become_failed_to_resize(image_server: ImageServer) -> None:
    html = UrlRow(url=image_server.url_for(fresh_seed(), 300, 200, fault="notimage"))
    assert_failure(
        fetch_one(html), SampleStatus.FAILED_TO_RESIZE, "not an image: unrecognized format"
    )
    small = UrlRow(url=image_server.url_for(fresh_seed(), 300, 200))
    opts = FAST.model_copy(update={"min_image_size": 250})
    assert_failure(fetch_one(small, opts), SampleStatus.FAILED_TO_RESIZE, "image too small")
    bomb = UrlRow(url=image_server.url_for(fresh_seed(), 12000, 12000, fault="bomb"))
    rec = fetch_one(bomb)
    assert rec.meta.status is SampleStatus.FAILED_TO_RESIZE
    assert rec.meta.error_message is not None
    assert "decompression bomb" in rec.meta.error_message


def test_a_crashed_worker_costs_one_row_not_the_fetcher(image_server: ImageServer) -> None:
    async def broken(*_args: Any) -> Any:
        raise BrokenProcessPool("a process in the pool was terminated abruptly")

    # Over INLINE_MAX_PIXELS: processed through run_cpu, not on the loop.
    row = UrlRow(url=image_server.url_for(fresh_seed(), 2000, 1200))
    rec = fetch_one(row, run_cpu=broken)
    assert rec.meta.status is SampleStatus.FAILED_TO_RESIZE
    assert rec.meta.error_message == (
        "BrokenProcessPool: a process in the pool was terminated abruptly"
    )


def test_sha512_names_its_column(image_server: ImageServer) -> None:
    seed = fresh_seed()
    original = served(image_server, seed, 300, 200)
    row = UrlRow(url=image_server.url_for(seed, 300, 200))
    meta = fetch_one(row, FAST.model_copy(update={"compute_hash": "sha512"})).meta
    assert meta.hashes == {"sha512": hashlib.sha512(original).hexdigest()}
    assert meta.sample_json()["sha512"] == meta.hashes["sha512"]
    assert "sha256" not in meta.sample_json()


def test_verify_hash_drops_mismatches(image_server: ImageServer) -> None:
    seed = fresh_seed()
    original = served(image_server, seed, 300, 200)
    url = image_server.url_for(seed, 300, 200)
    opts = FAST.model_copy(update={"verify_hash": ("expected", "md5")})
    good = fetch_one(UrlRow(url=url, extra={"expected": hashlib.md5(original).hexdigest()}), opts)
    assert good.meta.status is SampleStatus.SUCCESS
    assert good.meta.hashes == {"sha256": hashlib.sha256(original).hexdigest()}  # compute_hash
    assert good.meta.extra == {"expected": hashlib.md5(original).hexdigest()}  # kept, as i2d
    for expected in ("0" * 32, None):
        bad = fetch_one(UrlRow(url=url, extra={"expected": expected}), opts)
        assert_failure(bad, SampleStatus.FAILED_TO_DOWNLOAD, "hash mismatch")
    upper = hashlib.sha256(original).hexdigest().upper()
    opts256 = FAST.model_copy(update={"verify_hash": ("h", "sha256")})
    assert fetch_one(UrlRow(url=url, extra={"h": upper}), opts256).meta.status is (
        SampleStatus.SUCCESS
    )


def test_bbox_col_reaches_the_worker_and_blurs(image_server: ImageServer) -> None:
    seed = fresh_seed()
    url = image_server.url_for(seed, 2000, 1200)  # heavy: processed through run_cpu
    opts = FAST.model_copy(update={"bbox_col": "faces"})
    calls: list[object] = []

    async def spy(fn: Any, data: bytes, o: FetchOptions, boxes: object, *rest: Any) -> Any:
        calls.append(boxes)
        return fn(data, o, boxes, *rest)

    plain = fetch_one(UrlRow(url=url), opts, spy)
    # as a JSON record on the urls topic carries it: any field not url/caption/key is a column
    topic_row = parse_url_value(json.dumps({"url": url, "faces": [[0.25, 0.25, 0.75, 0.75]]}))
    assert topic_row is not None
    boxed = fetch_one(topic_row, opts, spy)
    as_text = fetch_one(UrlRow(url=url, extra={"faces": "[[0.25, 0.25, 0.75, 0.75]]"}), opts, spy)
    assert calls == [(), ((0.25, 0.25, 0.75, 0.75),), ((0.25, 0.25, 0.75, 0.75),)]
    assert plain.payload is not None and boxed.payload is not None
    assert boxed.payload != plain.payload
    assert as_text.payload == boxed.payload
    assert boxed.meta.extra == {"faces": [[0.25, 0.25, 0.75, 0.75]]}  # in the metadata too


def test_unreadable_boxes_fail_the_row_without_downloading(image_server: ImageServer) -> None:
    url = image_server.url_for(fresh_seed(), 300, 200)
    opts = FAST.model_copy(update={"bbox_col": "faces"})
    rec = fetch_one(UrlRow(url=url, extra={"faces": [[0.1, 0.2]]}), opts)
    assert rec.meta.status is SampleStatus.FAILED_TO_RESIZE
    assert rec.meta.error_message is not None
    assert rec.meta.error_message.startswith("invalid bounding box")
    assert image_server.hits(url) == 0


def test_disable_all_reencoding_record(image_server: ImageServer) -> None:
    seed = fresh_seed()
    original = served(image_server, seed, 640, 480)
    row = UrlRow(url=image_server.url_for(seed, 640, 480))
    rec = fetch_one(row, FAST.model_copy(update={"disable_all_reencoding": True}))
    m = rec.meta
    assert m.status is SampleStatus.SUCCESS
    assert rec.payload == original
    assert m.item_id == hashlib.sha256(original).hexdigest()
    assert (m.width, m.height, m.original_width, m.original_height) == (None,) * 4
    assert decode_append(encode_append(rec)) == rec


def test_light_images_are_processed_on_the_loop_heavy_ones_through_run_cpu(
    image_server: ImageServer,
) -> None:
    calls: list[str] = []

    async def counted(fn: Any, /, *args: Any) -> Any:
        calls.append(fn.__name__)
        return fn(*args)

    light = fetch_one(UrlRow(url=image_server.url_for(fresh_seed(), 1600, 1200)), run_cpu=counted)
    assert light.meta.status is SampleStatus.SUCCESS and calls == []  # 1.9 Mpx: on the loop
    heavy = fetch_one(UrlRow(url=image_server.url_for(fresh_seed(), 2000, 1200)), run_cpu=counted)
    assert heavy.meta.status is SampleStatus.SUCCESS and calls == ["process_body"]
    # A light body that is no image at all fails on the loop as on the thread.
    page = fetch_one(UrlRow(url=image_server.url_for(fresh_seed(), 300, 200, fault="notimage")))
    assert page.meta.status is SampleStatus.FAILED_TO_RESIZE
