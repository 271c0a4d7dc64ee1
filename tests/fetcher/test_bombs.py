"""Decompression bombs in every format the fetcher can be allowed to decode, refused from
their headers before any decoder allocates; heavy images within the limit decoded with the
memory their estimate says (peak RSS measured in a fresh process); the decode gate shared by
worker processes; the strip-wise conversion and resize of large images."""

from __future__ import annotations

import functools
import io
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from i2d_fetcher.imaging import guard, pipeline
from i2d_fetcher.imaging.gate import GATE_FLOOR, DecodeGate
from i2d_fetcher.imaging.pipeline import ImageRejected, process_image
from i2d_fetcher.options import FetchOptions
from i2d_imageserver import synth
from tests.fetcher import bombs, gatework

MiB = 1 << 20
ALL_FORMATS = FetchOptions(allowed_image_formats="jpeg,png,webp,gif,bmp,tiff,avif,ico,cur,icns")
LIMIT = ALL_FORMATS.max_decoded_pixels  # the default: Pillow's 89,478,485


def rejected(data: bytes, opts: FetchOptions = ALL_FORMATS) -> str:
    with pytest.raises(ImageRejected) as info:
        process_image(data, opts)
    return info.value.message


# --------------------------------------------------------------------------- bombs

# Each is a few bytes to a few KB. Without the guard, most make the decode take 0.5 to 3 GB
# (measured: the JPEG, PNG, ICO and ICNS PNG, GIF, BMP, TIFF and WebP ones); the others fail
# in Pillow or libavif today, but only after the header was trusted.
BOMBS = {
    # coefficients for the whole image, whatever Image.draft asks
    "jpeg-progressive-32000": lambda: bombs.jpeg(32000, 32000, progressive=True, data=False),
    # within the pixel limit, but 4:4:4 progressive coefficients are 6 bytes a pixel
    "jpeg-progressive-444-at-81mpx": lambda: bombs.jpeg(
        9000, 9000, progressive=True, sampling=((1, 1),) * 3, data=False
    ),
    # baseline, but a first scan without every component: libjpeg buffers it all too
    "jpeg-noninterleaved-32000": lambda: bombs.jpeg(32000, 32000, interleaved=False, data=False),
    "png-rgba16-30000": lambda: bombs.png(30000, 30000, 6, 16, data=False),
    "apng-30000-canvas-tiny-frames": lambda: bombs.apng((30000, 30000), [(0, 0, 1, 1)] * 3),
    "gif-huge-first-frame": lambda: bombs.gif((100, 100), [(0, 0, 65535, 65535)]),
    "gif-huge-later-frame": lambda: bombs.gif(
        (100, 100), [(0, 0, 100, 100)] * 5 + [(0, 0, 60000, 60000)]
    ),
    "webp-lossless-16383": lambda: bombs.webp(16383, 16383),
    # within the pixel limit: libwebp's two canvases and Pillow's copies, 17 bytes a pixel
    "webp-lossless-at-89mpx": lambda: bombs.webp(16383, 5461),
    "webp-animated-canvas-60000": lambda: bombs.webp_animated((60000, 60000), [(0, 0, 64, 64)]),
    "webp-animated-frame-over-canvas": lambda: bombs.webp_animated(
        (100, 100), [(0, 0, 100, 100), (0, 0, 16000, 16000)]
    ),
    "avif-ispe-30000": lambda: bombs.avif_declaring(30000, 30000),
    "avif-av1-stream-30000": lambda: bombs.avif_synthetic((64, 64), (30000, 30000)),
    "bmp-1bit-60000": lambda: bombs.bmp(60000, 60000, 1, pixels=False),
    "bmp-top-down-30000": lambda: bombs.bmp(30000, -30000, 24, pixels=False),
    "ico-png-30000": lambda: bombs.ico([bombs.png(30000, 30000, 6, data=False)]),
    "ico-dib-30000": lambda: bombs.ico([bombs.dib(30000, 60000)]),
    "ico-huge-entry-behind-small": lambda: bombs.ico(
        [bombs.png(16, 16), bombs.png(30000, 30000, data=False)]
    ),
    "cur-dib-30000": lambda: bombs.ico([bombs.dib(30000, 60000)], kind=2),
    "cur-png-30000": lambda: bombs.ico([bombs.png(30000, 30000, 6, data=False)], kind=2),
    "icns-png-30000": lambda: bombs.icns([(b"ic07", bombs.png(30000, 30000, 6, data=False))]),
    "icns-j2k-30000": lambda: bombs.icns([(b"ic10", bombs.j2k(30000, 30000))]),
    "tiff-huge-first-page": lambda: bombs.tiff([(30000, 30000)], data_full=False),
    "tiff-huge-later-page": lambda: bombs.tiff(
        [(64, 64)] * 200 + [(60000, 60000)] + [(64, 64)] * 200, data_full=False
    ),
    "tiff-tile-larger-than-page": lambda: bombs.tiff([(64, 64)], tile=65536, data_full=False),
}


@pytest.fixture(scope="module")
def bomb_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    files = {}
    for name, build in BOMBS.items():
        files[name] = folder / name
        files[name].write_bytes(build())
    return files


@pytest.mark.parametrize("name", list(BOMBS))
def test_bomb_is_refused_before_any_decoder_opens_it(
    name: str, bomb_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bomb_files[name].read_bytes()
    assert len(data) < 64 * 1024  # a bomb: small on the wire
    opened: list[object] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    message = rejected(data)
    assert message.startswith("decompression bomb: "), message
    assert f"limit of {LIMIT}" in message
    assert opened == []  # no plugin saw it: an ICO would have been decoded inside open


def test_bomb_messages_name_what_would_be_decoded() -> None:
    ico = bombs.ico([bombs.png(30000, 30000, data=False)])  # the directory says 32x32
    assert rejected(ico) == (
        f"decompression bomb: 30000x30000 image would decode to 900000000 pixels, over the "
        f"limit of {LIMIT}"
    )
    webp = rejected(bombs.webp(16383, 5461))  # 89.47 Mpx: within the pixel limit
    assert webp.startswith("decompression bomb: 16383x5461 image would need ")
    assert webp.endswith(f"MiB to decode, over the 373 MiB the limit of {LIMIT} pixels allows")


def test_bombs_cost_no_memory(bomb_files: dict[str, Path]) -> None:
    """The real measure: each bomb handed to process_image in a fresh process, its peak RSS
    over the process's own. Unguarded, each would take hundreds of MB to several GB (the
    child's address space is capped at 1.5 GB over what it maps, so a regression fails
    here instead of taking the machine)."""
    names = list(bomb_files)
    results = bombs.measure([bomb_files[n] for n in names], _options(ALL_FORMATS), 1536)
    for name, r in zip(names, results, strict=True):
        assert not r.ok and r.message and r.message.startswith("decompression bomb"), (name, r)
        assert r.peak_mb < 8, (name, r.peak_mb)


def _options(opts: FetchOptions) -> dict[str, Any]:
    return {"allowed_image_formats": list(opts.allowed_image_formats)}


def test_a_raised_limit_lets_a_progressive_jpeg_through() -> None:
    # 6000x6000 progressive (36 Mpx, ~108 MB of coefficients): over a 30 Mpx limit whatever
    # the reduced size, under the default.
    data = bombs.jpeg(6000, 6000, progressive=True)
    assert "decompression bomb" in rejected(data, FetchOptions(max_decoded_pixels=30_000_000))
    assert process_image(data, FetchOptions()).width == 256


def test_a_baseline_jpeg_is_counted_at_its_reduced_size() -> None:
    # 20000x20000 baseline, decoded at 1/8: 6.25 Mpx held; the same size progressive holds
    # all 400 Mpx of coefficients.
    baseline = bombs.jpeg(20000, 20000, data=False)
    cost = guard.inspect(baseline, "jpeg")
    assert cost.at_scale(8).pixels == 2500 * 2500
    assert cost.at_scale(8).nbytes < 40 * MiB
    progressive = guard.inspect(bombs.jpeg(20000, 20000, progressive=True, data=False), "jpeg")
    assert progressive.at_scale(8).pixels == 20000 * 20000


def test_resizing_is_bounded_too() -> None:
    # keep_ratio brings the short side to image_size: a 100 x 800000 strip (80 Mpx, within
    # the limit) would become 256 x 2048000.
    strip = bombs.png(100, 800_000, data=False)
    message = rejected(strip, FetchOptions(resize_mode="keep_ratio"))
    assert message == (
        f"decompression bomb: 100x800000 image would resize to 524288000 pixels, over the "
        f"limit of {LIMIT}"
    )


def test_an_unparseable_header_is_a_decoding_error() -> None:
    for data in (
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",  # no frame header
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 8,
        b"RIFF\x10\x00\x00\x00WEBPVP8 \x04\x00\x00\x00abcd",
        b"\x00\x00\x01\x00\x01\x00" + b"\x00" * 16,  # an icon entry pointing nowhere
    ):
        assert rejected(data) == "Image decoding error"


# --------------------------------------------------------------------------- the guard
# reads what Pillow reads on real files


def _saved(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


@functools.cache
def _real_files() -> dict[str, bytes]:
    rgb = Image.fromarray(np.asarray(Image.open(io.BytesIO(synth.photo(5, 320, 240)))))
    rgba = rgb.convert("RGBA")
    frames = [rgb.rotate(a) for a in (0, 10, 20)]
    return {
        "jpeg": synth.photo(5, 320, 240),
        "jpeg-progressive": _saved(rgb, "JPEG", progressive=True),
        "jpeg-cmyk": _saved(rgb.convert("CMYK"), "JPEG"),
        "jpeg-grey": _saved(rgb.convert("L"), "JPEG"),
        "png": _saved(rgba, "PNG"),
        "png-interlaced-16bit": _saved(rgb.convert("I;16"), "PNG"),
        "apng": _saved(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "gif": _saved(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "webp": _saved(rgb, "WEBP"),
        "webp-lossless-alpha": _saved(rgba, "WEBP", lossless=True),
        "webp-animated": _saved(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "bmp": _saved(rgb, "BMP"),
        "bmp-palette": bombs.bmp(16, 16, 8),
        "tiff": _saved(rgb, "TIFF", compression="tiff_deflate"),
        "tiff-pages": _saved(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "avif": _saved(rgb, "AVIF", quality=40, speed=10),
        "ico": _saved(rgba, "ICO", sizes=[(16, 16), (64, 64), (256, 256)]),
        "icns": _saved(rgba.resize((256, 256)), "ICNS"),
    }


@pytest.mark.parametrize("name", list(_real_files()))
def test_the_guard_reads_real_files_as_pillow_does(name: str) -> None:
    data = _real_files()[name]
    fmt = pipeline.formats.sniff(data[:32])
    assert fmt is not None
    cost = guard.inspect(data, fmt)
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        size = img.size
    assert cost.pixels >= size[0] * size[1]
    assert (cost.width, cost.height) == size or fmt in ("ico", "icns", "gif", "webp")
    assert cost.nbytes < 64 * MiB
    process_image(data, ALL_FORMATS)  # and the pipeline takes it


def test_the_guard_on_a_normal_jpeg_is_a_header_read() -> None:
    data = synth.photo_with_exif(3, 1600, 1200)
    start = time.perf_counter()
    for _ in range(200):
        guard.inspect(data, "jpeg")
    per_image = (time.perf_counter() - start) / 200
    assert per_image < 0.001  # ~20 us: a decode of this image takes ~7 ms


# --------------------------------------------------------------------------- heavy images
# within the limit: decoded, with a measured peak RSS under their estimate

W, H = 9400, 9500  # 89.3 Mpx: just under the default limit


HEAVY: dict[str, tuple[Any, int]] = {
    # name: (builder, peak RSS bound in MiB; measured on Python 3.11, Pillow 13, x86-64)
    # measured peaks in the comments; before the strip-wise conversion the 16-bit, RGBA,
    # palette and GIF images peaked at 598, 767, 852 and 767 MiB
    "png-16bit-grey-89mpx": (lambda: bombs.png(W, H, 0, 16), 215),  # 184
    "png-rgba-89mpx": (lambda: bombs.png(W, H, 6, 8), 400),  # 366: the decode alone is 341
    "png-palette-alpha-89mpx": (lambda: bombs.png(W, H, 3, 8, transparent=True), 135),  # 112
    "jpeg-progressive-89mpx": (lambda: bombs.jpeg(W, H, progressive=True), 300),  # 262
    "gif-89mpx": (lambda: bombs.gif((W, H), [(0, 0, W, H)], data=True), 130),  # 104
    "webp-16mpx": (lambda: bombs.webp(4000, 4000), 280),  # 245
    "ico-png-rgba-16mpx": (lambda: bombs.ico([bombs.png(4000, 4000, 6, 8)]), 100),  # 81
}


@pytest.fixture(scope="session")
def heavy_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("heavy")
    files = {}
    for name, (build, _) in HEAVY.items():
        files[name] = folder / name
        files[name].write_bytes(build())
    return files


def test_heavy_images_within_the_limit_decode_in_the_memory_they_declare(
    heavy_files: dict[str, Path],
) -> None:
    """Peak RSS of process_image on each, in a fresh process, over that process's RSS: under
    the bound stated above (two or three times less than before the strip-wise conversion
    for the palette, 16-bit and alpha images), and under what process_image reserves in the
    decode gate for it (the guard's estimate, decode and conversion)."""
    names = list(heavy_files)
    results = bombs.measure([heavy_files[n] for n in names], _options(ALL_FORMATS), 3072)
    for name, r in zip(names, results, strict=True):
        assert r.ok and r.size == (256, 256), (name, r)
        assert r.peak_mb < HEAVY[name][1], (name, r.peak_mb)
        assert r.reserved_mb is not None and r.peak_mb < r.reserved_mb, (name, r)


# --------------------------------------------------------------------------- strips


def _psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    mse = max(float(((x - y) ** 2).mean()), 1e-9)
    return 10 * np.log10(255**2 / mse)


def _noise(mode: str, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(7)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 4), dtype=np.uint8)
    rgba = Image.fromarray(small, "RGBA").resize((width, height), Image.Resampling.BICUBIC)
    if mode == "P":
        img = Image.fromarray(np.asarray(rgba.getchannel(0)) // 4, "P")
        img.putpalette(np.asarray(rgba.resize((64, 1))).reshape(-1)[: 64 * 3].tolist())
        img.info["transparency"] = 3
        return img
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgba.getchannel(0), dtype=np.uint16) * 257)
    return rgba.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "P", "I;16", "LA", "RGB", "CMYK"])
@pytest.mark.parametrize("resample", ["area", "lanczos", "nearest", "cubic"])
def test_strip_wise_resize_is_pillows(mode: str, resample: str) -> None:
    img = _noise(mode, 2400, 2000)
    assert pipeline._by_strips(img.mode, img.size) == (mode not in ("RGB", "L"))
    size, box = (256, 213), (10.5, 20.25, 2390.0, 1999.5)
    filt = pipeline._filter(resample, 9.0)
    whole = pipeline._flattener(img)(img).resize(size, filt, box=box)
    strips = pipeline._resize_by_strips(img, size, filt, box)
    diff = np.abs(np.asarray(whole, dtype=int) - np.asarray(strips, dtype=int))
    assert diff.max() <= 2 and _psnr(whole, strips) > 50


def test_strip_wise_conversion_is_the_whole_conversion() -> None:
    for mode in ("RGBA", "P", "I;16"):
        img = _noise(mode, 2400, 2000)
        flat = pipeline._flatten(img)
        whole = pipeline._flattener(img)(img)
        assert np.array_equal(np.asarray(flat), np.asarray(whole))


def test_large_images_keep_their_output() -> None:
    """Through process_image: a large RGBA PNG, by strips, comes out as composited whole."""
    img = _noise("RGBA", 2400, 2000)
    data = _saved(img, "PNG", compress_level=1)
    out = Image.open(io.BytesIO(process_image(data, FetchOptions(encode_format="png")).data))
    flat = pipeline._on_white(img)
    ref = flat.resize((256, 213), Image.Resampling.BOX, box=(0, 0, 2400, 2000))
    canvas = Image.new("RGB", (256, 256), (255, 255, 255))
    canvas.paste(ref, (0, (256 - 213) // 2))
    assert _psnr(out.convert("RGB"), canvas) > 50


# --------------------------------------------------------------------------- the gate


@pytest.fixture
def gate() -> Iterator[DecodeGate]:
    g = DecodeGate(100 * MiB)
    yield g
    g.close()


@contextmanager
def _holders(gate: DecodeGate, *requests: tuple[str, int, float]) -> Iterator[Any]:
    """One process per (name, bytes, seconds held) request, started in that order, each
    once the previous one holds or waits in the gate; yields the log of their events."""
    ctx = multiprocessing.get_context("spawn")
    log = ctx.Queue()
    procs = []
    try:
        for name, nbytes, seconds in requests:
            before = gate.state()
            proc = ctx.Process(target=gatework.hold, args=(gate, nbytes, seconds, log, name))
            proc.start()
            procs.append(proc)
            if nbytes >= GATE_FLOOR:  # wait for it to hold or queue
                deadline = time.monotonic() + 20
                while gate.state() == before and time.monotonic() < deadline:
                    time.sleep(0.005)
        yield log
    finally:
        for proc in procs:
            proc.join(20)
            if proc.is_alive():
                proc.kill()


def _events(log: Any, count: int) -> dict[tuple[str, str], float]:
    return {(n, e): t for n, e, t in (log.get(timeout=20) for _ in range(count))}


def test_the_gate_makes_heavy_decodes_wait_for_room(gate: DecodeGate) -> None:
    with _holders(
        gate,
        # a holds long enough for b and light to start beside it (spawning a process takes
        # over a second on a loaded machine): light then gets in while a still holds.
        ("a", 70 * MiB, 4.0),  # holds 70 of 100
        ("b", 60 * MiB, 0.1),  # does not fit beside a: waits
        ("light", 10 * MiB, 0.1),  # below the floor: never waits
    ) as log:
        ev = _events(log, 6)
    assert ev[("b", "in")] >= ev[("a", "out")]
    assert ev[("light", "in")] < ev[("a", "out")]


def test_the_gate_is_first_come_first_served(gate: DecodeGate) -> None:
    with _holders(
        gate,
        ("a", 40 * MiB, 1.0),
        ("big", 90 * MiB, 0.3),  # waits for a
        ("small", 30 * MiB, 0.1),  # would fit beside a, but big came first
    ) as log:
        ev = _events(log, 6)
    assert ev[("big", "in")] >= ev[("a", "out")]
    assert ev[("small", "in")] >= ev[("big", "out")]


def test_a_killed_holder_does_not_keep_its_reservation(gate: DecodeGate) -> None:
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=gatework.hold_and_die, args=(gate, 90 * MiB))
    proc.start()
    proc.join(20)
    assert proc.exitcode == -signal.SIGKILL
    start = time.monotonic()
    with gate.hold(90 * MiB):
        assert gate.in_use() == 90 * MiB
    assert time.monotonic() - start < 1


def test_the_gate_travels_as_its_path(gate: DecodeGate) -> None:
    copy = pickle.loads(pickle.dumps(gate))
    assert copy.path == gate.path and copy.budget == gate.budget
    with gate.hold(50 * MiB):
        assert copy.in_use() == 50 * MiB
        with copy.hold(GATE_FLOOR - 1):  # light: reserves nothing
            assert gate.in_use() == 50 * MiB
    assert copy.in_use() == 0
    copy.close()  # not the owner: the file stays
    assert os.path.exists(gate.path)


def test_a_request_over_the_budget_runs_alone(gate: DecodeGate) -> None:
    with gate.hold(500 * MiB):
        assert gate.in_use() == gate.budget


def test_process_image_reserves_only_for_heavy_decodes() -> None:
    reserved: list[int] = []

    class Spy:
        @contextmanager
        def hold(self, nbytes: int) -> Iterator[None]:
            reserved.append(nbytes)
            yield

    spy: Any = Spy()
    process_image(synth.photo(1, 1600, 1200), FetchOptions(), gate=spy)
    process_image(bombs.png(4000, 4000, 6), FetchOptions(), gate=spy)
    small, heavy = reserved
    assert small < GATE_FLOOR  # a web photo, decoded at 1/4: never waits
    assert 64 * MiB < heavy < 200 * MiB  # 16 Mpx RGBA: 61 MiB decoded, plus the strips


def test_the_default_gate_holds_one_decode_at_the_limit() -> None:
    g = DecodeGate.for_limit(FetchOptions().max_decoded_pixels)
    try:
        assert g.budget == guard.memory_cap(LIMIT) == LIMIT * 4 + 32 * MiB
    finally:
        g.close()
    assert not os.path.exists(g.path)


def test_keeping_the_bytes_of_an_icon_bomb_decodes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # disable_all_reencoding reads EXIF from the bytes (exifread, as img2dataset): an ICO has
    # none ("{}"), and opening it would decode its entry.
    opened: list[object] = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a))
    opts = ALL_FORMATS.model_copy(update={"disable_all_reencoding": True})
    out = process_image(bombs.ico([bombs.png(30000, 30000, data=False)]), opts)
    assert out.exif == "{}" and opened == []
