"""The local image server: photos of the requested size, deterministic bytes, every fault kind
as documented, url lists, request counters, and the CLI a demo or a benchmark starts."""

from __future__ import annotations

import gzip
import http.client
import io
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from i2d_imageserver import FAULTS, ImageServer, make_url_list, parse_faults
from i2d_imageserver.synth import MAX_SIZE, MIN_SIZE, size_for_seed


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer() as s:
        yield s


class Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def connect(url: str, timeout: float = 10.0) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)


def get(url: str, timeout: float = 10.0) -> Reply:
    """A raw GET (no proxies, no redirects followed, no decoding): what the wire carries."""
    parts = urlsplit(url)
    conn = connect(url, timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", path, headers={"User-Agent": "imageserver-test"})
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def decode(body: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(body))
    img.load()
    return img


# --------------------------------------------------------------------------- photos


@pytest.mark.parametrize(
    ("ext", "fmt", "mime"),
    [("jpg", "JPEG", "image/jpeg"), ("png", "PNG", "image/png"), ("webp", "WEBP", "image/webp")],
)
@pytest.mark.parametrize("size", [(200, 200), (640, 480), (1600, 1200), (333, 1111)])
def test_photo_decodes_at_the_requested_size(
    server: ImageServer, size: tuple[int, int], ext: str, fmt: str, mime: str
) -> None:
    r = get(server.url_for(1, *size, ext=ext))
    assert r.status == 200
    assert r.headers["Content-Type"] == mime
    img = decode(r.body)
    assert img.format == fmt
    assert img.size == size
    assert img.mode == "RGB"


def test_size_from_the_seed_alone(server: ImageServer) -> None:
    sizes = set()
    for seed in range(20):
        img = decode(get(server.url_for(seed)).body)
        assert img.size == size_for_seed(seed)
        assert MIN_SIZE[0] <= img.width <= MAX_SIZE[0]
        assert MIN_SIZE[1] <= img.height <= MAX_SIZE[1]
        sizes.add(img.size)
    assert len(sizes) > 15, "sizes vary with the seed"


def test_photos_look_like_photos_not_flat_colours(server: ImageServer) -> None:
    lengths = []
    for seed in range(6):
        body = get(server.url_for(100 + seed, 1600, 1200)).body
        lengths.append(len(body))
        px = np.asarray(decode(body), dtype=np.float32)
        assert px.std() > 20, "contrast across the image"
        # local detail: neighbouring pixels differ, as in a textured photo
        assert np.abs(np.diff(px, axis=1)).mean() > 1.0  # a flat fill gives 0
    assert 60_000 < sum(lengths) / len(lengths) < 400_000, lengths


def test_bytes_are_a_function_of_the_url(server: ImageServer, tmp_path: Path) -> None:
    url_path = urlsplit(server.url_for(42, 500, 400)).path
    first = get(server.base_url + url_path).body
    assert get(server.base_url + url_path).body == first
    with ImageServer() as other:  # a fresh server, nothing cached: generates the same bytes
        assert get(other.base_url + url_path).body == first
    assert get(server.url_for(43, 500, 400)).body != first
    assert get(server.url_for(42, 500, 401)).body != first


def test_corpus_folder_keeps_generated_images(tmp_path: Path) -> None:
    with ImageServer(corpus=tmp_path) as s:
        body = get(s.url_for(9, 320, 240)).body
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == ["photo-9_320x240.jpg"]
    assert files[0].read_bytes() == body
    # A second server serves the stored file rather than generating again.
    files[0].write_bytes(b"stored bytes")
    with ImageServer(corpus=tmp_path) as s:
        assert get(s.url_for(9, 320, 240)).body == b"stored bytes"


def test_unknown_paths_are_404_and_counted_as_unknown(server: ImageServer) -> None:
    before = server.count("unknown")
    for path in ("/img/abc.jpg", "/img/1_0x10.jpg", "/img/1.gif", "/fault/nosuch/1.jpg"):
        assert get(server.base_url + path).status == 404
    assert server.count("unknown") == before + 4


# --------------------------------------------------------------------------- faults


def test_every_documented_fault_has_a_url(server: ImageServer) -> None:
    for kind in FAULTS:
        assert f"/fault/{kind}/" in server.url_for(1, 300, 200, fault=kind)
    with pytest.raises(ValueError, match="unknown fault"):
        server.url_for(1, fault="nosuch")


def test_missing_is_404_and_counted(server: ImageServer) -> None:
    url = server.url_for(1001, 300, 200, fault="missing")
    before = server.count("missing")
    r = get(url)
    assert r.status == 404
    assert server.hits(url) == 1
    assert server.count("missing") == before + 1


@pytest.mark.parametrize(("kind", "status"), [("error", 500), ("unavailable", 503)])
def test_server_errors(server: ImageServer, kind: str, status: int) -> None:
    url = server.url_for(1002, 300, 200, fault=kind)
    assert [get(url).status for _ in range(3)] == [status] * 3
    assert server.hits(url) == 3


def test_flaky_fails_once_then_serves_the_image(server: ImageServer) -> None:
    url = server.url_for(1003, 300, 200, fault="flaky")
    assert get(url).status == 503
    r = get(url)
    assert r.status == 200
    assert r.body == get(server.url_for(1003, 300, 200)).body


def test_slow_delays_the_headers(server: ImageServer) -> None:
    url = server.url_for(1004, 300, 200, fault="slow", delay=0.6)
    get(server.url_for(1004, 300, 200))  # generated and cached: time only the delay
    t0 = time.monotonic()
    r = get(url)
    elapsed = time.monotonic() - t0
    assert r.status == 200
    assert 0.6 <= elapsed < 3.0
    assert decode(r.body).size == (300, 200)


def test_slow_has_a_default_delay_below_img2dataset_timeout() -> None:
    with ImageServer(slow_delay=0.3) as s:
        t0 = time.monotonic()
        assert get(s.url_for(1, 200, 200, fault="slow")).status == 200
        assert time.monotonic() - t0 >= 0.3
    assert ImageServer().config.slow_delay < 10  # img2dataset's default timeout


def test_drip_sends_headers_at_once_then_the_body_slowly(server: ImageServer) -> None:
    url = server.url_for(1005, 400, 300, fault="drip", interval=0.05, chunks=10)
    get(server.url_for(1005, 400, 300))
    parts = urlsplit(url)
    conn = connect(url)
    try:
        t0 = time.monotonic()
        conn.request("GET", f"{parts.path}?{parts.query}")
        resp = conn.getresponse()
        headers_at = time.monotonic() - t0
        body = resp.read()
        body_at = time.monotonic() - t0
    finally:
        conn.close()
    assert resp.status == 200
    assert headers_at < 0.3
    assert body_at >= 0.45  # ten chunks, 50 ms apart
    assert decode(body).size == (400, 300)


def test_truncated_promises_more_than_it_sends(server: ImageServer) -> None:
    url = server.url_for(1006, 400, 300, fault="truncated")
    full = get(server.url_for(1006, 400, 300)).body
    parts = urlsplit(url)
    conn = connect(url)
    try:
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == len(full)
        with pytest.raises(http.client.IncompleteRead) as info:
            resp.read()
    finally:
        conn.close()
    assert 0 < len(info.value.partial) < len(full)
    assert full.startswith(info.value.partial)


def test_reset_closes_before_any_response(server: ImageServer) -> None:
    with pytest.raises(http.client.RemoteDisconnected):
        get(server.url_for(1007, 300, 200, fault="reset"))
    assert server.count("reset") >= 1


def test_notimage_is_html_labelled_as_jpeg(server: ImageServer) -> None:
    r = get(server.url_for(1008, 300, 200, fault="notimage"))
    assert r.status == 200
    assert r.headers["Content-Type"] == "image/jpeg"
    assert r.body.startswith(b"<!DOCTYPE html>")
    with pytest.raises(UnidentifiedImageError):
        decode(r.body)


def test_noai_sets_x_robots_tag_on_the_image(server: ImageServer) -> None:
    r = get(server.url_for(1009, 300, 200, fault="noai"))
    assert r.status == 200
    assert r.headers.get_all("X-Robots-Tag") == ["noai"]
    assert decode(r.body).size == (300, 200)


def test_robots_sends_each_tag_as_its_own_header(server: ImageServer) -> None:
    url = server.url_for(
        1010, 300, 200, fault="robots", tag=["otherbot: noai", "noindex, nofollow"]
    )
    r = get(url)
    assert r.headers.get_all("X-Robots-Tag") == ["otherbot: noai", "noindex, nofollow"]
    assert decode(r.body).size == (300, 200)


def test_alpha_is_a_png_with_a_transparent_left_half(server: ImageServer) -> None:
    r = get(server.url_for(1011, 300, 200, fault="alpha"))
    assert r.headers["Content-Type"] == "image/png"
    img = decode(r.body)
    assert (img.format, img.mode, img.size) == ("PNG", "RGBA", (300, 200))
    alpha = np.asarray(img.getchannel("A"))
    assert (alpha[:, :150] == 0).all()
    assert (alpha[:, 150:] == 255).all()


def test_exif_carries_camera_tags(server: ImageServer) -> None:
    img = decode(get(server.url_for(1012, 300, 200, fault="exif")).body)
    exif = img.getexif()
    assert exif[0x010F] == "I2DCam"
    assert exif.get_ifd(0x8769)[0x9003] == "2024:05:01 12:00:00"


def test_bomb_is_small_on_the_wire_and_huge_in_pixels(
    server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pillow's own default; the fetcher (imported by other tests in this process) turns
    # Pillow's check off in favour of its own max_decoded_pixels.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
    r = get(server.url_for(1013, fault="bomb"))
    assert r.headers["Content-Type"] == "image/png"
    assert len(r.body) < 1_000_000
    # The IHDR chunk declares the size (Pillow itself refuses to open this one).
    assert r.body[12:16] == b"IHDR"
    assert struct.unpack(">II", r.body[16:24]) == (20000, 20000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(r.body))
    small = get(server.url_for(1013, 3000, 2000, fault="bomb")).body
    img = decode(small)  # a small one decodes: a real PNG, not just a header
    assert img.size == (3000, 2000)
    assert img.getextrema() == (0, 0)


def test_gzipbomb_inflates_to_the_requested_megabytes(server: ImageServer) -> None:
    r = get(server.url_for(1014, 300, 200, fault="gzipbomb", mb=3))
    assert r.headers["Content-Encoding"] == "gzip"
    assert len(r.body) < 100_000
    assert len(gzip.decompress(r.body)) == 3 << 20


def test_redirect_points_to_the_same_image(server: ImageServer) -> None:
    r = get(server.url_for(1015, 300, 200, fault="redirect"))
    assert r.status == 302
    assert r.headers["Location"] == "/img/1015_300x200.jpg"
    assert get(server.base_url + r.headers["Location"]).status == 200


def test_counters_by_kind_and_reset() -> None:
    with ImageServer() as s:
        get(s.url_for(1, 200, 200))
        get(s.url_for(1, 200, 200))
        get(s.url_for(2, 200, 200, fault="missing"))
        assert s.counts() == {"img": 2, "missing": 1}
        assert s.count() == 3
        assert s.last_headers["User-Agent"] == "imageserver-test"
        s.reset_counters()
        assert s.count() == 0


# --------------------------------------------------------------------------- url lists


def test_url_list_is_deterministic_distinct_and_mixed(server: ImageServer) -> None:
    faults = {"missing": 0.1, "notimage": 0.05, "slow": 0.02}
    urls = make_url_list(server.base_url, 200, seed=5, faults=faults)
    assert urls == make_url_list(server.base_url, 200, seed=5, faults=faults)
    assert len(set(urls)) == 200
    kinds = [urlsplit(u).path.split("/")[2] if "/fault/" in u else "img" for u in urls]
    assert kinds.count("missing") == 20
    assert kinds.count("notimage") == 10
    assert kinds.count("slow") == 4
    assert kinds.count("img") == 166
    assert kinds[:20] != ["missing"] * 20, "faults are spread through the list"
    other = make_url_list(server.base_url, 200, seed=6, faults=faults)
    names = {urlsplit(u).path.rsplit("/", 1)[1].split("_")[0] for u in urls}
    other_names = {urlsplit(u).path.rsplit("/", 1)[1].split("_")[0] for u in other}
    assert not names & other_names, "different seeds share no image"


def test_url_list_images_have_varied_sizes_in_range(server: ImageServer) -> None:
    urls = make_url_list(server.base_url, 12, seed=8)
    sizes = set()
    for url in urls:
        img = decode(get(url).body)
        assert MIN_SIZE[0] <= img.width <= MAX_SIZE[0]
        assert MIN_SIZE[1] <= img.height <= MAX_SIZE[1]
        sizes.add(img.size)
    assert len(sizes) == 12


def test_url_list_rejects_bad_fault_specs() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        make_url_list("http://127.0.0.1:1", 10, faults={"nosuch": 0.1})
    with pytest.raises(ValueError, match="more than 1"):
        make_url_list("http://127.0.0.1:1", 10, faults={"missing": 0.6, "slow": 0.6})
    assert parse_faults("missing=0.03, notimage=0.02") == {"missing": 0.03, "notimage": 0.02}
    with pytest.raises(ValueError):
        parse_faults("missing")


# --------------------------------------------------------------------------- CLI


def start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "i2d_imageserver", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def stop_cli(proc: subprocess.Popen[str], sig: int) -> int:
    try:
        os.kill(proc.pid, sig)
        return proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_writes_the_list_prints_the_url_and_stops_cleanly(tmp_path: Path, sig: int) -> None:
    url_list = tmp_path / "urls.txt"
    proc = start_cli(
        "--write-list",
        str(url_list),
        "--count",
        "40",
        "--faults",
        "missing=0.1,noai=0.05",
        "--corpus",
        str(tmp_path / "corpus"),
        "--warm",
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        assert not base_url.endswith(":0")
        # The list is complete before the url is printed.
        urls = url_list.read_text().splitlines()
        assert len(urls) == 40
        assert all(u.startswith(base_url + "/") for u in urls)
        assert sum("/fault/missing/" in u for u in urls) == 4
        assert sum("/fault/noai/" in u for u in urls) == 2
        # --warm generated every listed image into the corpus before serving.
        assert len(list((tmp_path / "corpus").iterdir())) == 36
        good = next(u for u in urls if "/img/" in u)
        assert decode(get(good).body).format == "JPEG"
    finally:
        rc = stop_cli(proc, sig)
    assert rc == 0, proc.stderr.read() if proc.stderr else ""


def test_cli_rejects_a_bad_fault_spec() -> None:
    proc = start_cli("--faults", "nosuch=0.5")
    try:
        assert proc.wait(30) == 2
        assert proc.stderr is not None and "unknown fault" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
