"""process_image: img2dataset's resize modes and filters, alpha on white, reduced-size JPEG
decoding, decompression bombs, error strings, formats and EXIF."""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin
from pydantic import ValidationError

from i2d_fetcher.imaging.pipeline import (
    IMAGE_BLOCK_BYTES,
    IMAGE_BLOCKS,
    ImageRejected,
    ProcessedImage,
    keep_image_blocks,
    process_image,
)
from i2d_fetcher.options import FetchOptions
from i2d_imageserver import synth
from i2d_segments.records import SampleStatus


def jpeg(width: int, height: int, seed: int = 1) -> bytes:
    return synth.photo(seed, width, height)


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = max(float(((x - y) ** 2).mean()), 1e-9)
    return 10 * math.log10(255**2 / mse)


def rejected(data: bytes, opts: FetchOptions) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        process_image(data, opts)
    return info.value


# --------------------------------------------------------------------------- options


def test_defaults_are_img2datasets() -> None:
    o = FetchOptions()
    assert (o.image_size, o.resize_mode, o.resize_only_if_bigger) == (256, "border", False)
    assert (o.encode_format, o.encode_quality) == ("jpg", 95)
    assert (o.upscale_interpolation, o.downscale_interpolation) == ("lanczos", "area")
    assert (o.timeout, o.retries, o.compute_hash, o.extract_exif) == (10, 0, "sha256", True)
    assert (o.min_image_size, o.max_image_area, o.max_aspect_ratio) == (0, math.inf, math.inf)
    assert o.user_agent_token is None
    # img2dataset's four, and noml (its issue #365)
    assert o.disallowed_header_directives[:4] == ("noai", "noimageai", "noindex", "noimageindex")
    assert o.disallowed_header_directives[4:] == ("noml",)


def test_option_forms_img2dataset_users_type() -> None:
    assert FetchOptions(disallowed_header_directives=[]).disallowed_header_directives == ()
    assert FetchOptions(
        disallowed_header_directives="NoAI, noindex"
    ).disallowed_header_directives == ("noai", "noindex")
    # None means the default list, as in img2dataset
    default = FetchOptions().disallowed_header_directives
    assert FetchOptions(disallowed_header_directives=None).disallowed_header_directives == default
    assert FetchOptions(compute_hash=None).compute_hash is None
    with pytest.raises(ValidationError):
        FetchOptions(resize_mode="stretch")
    with pytest.raises(ValidationError):
        FetchOptions(compute_hash="crc32")


def test_png_quality_is_a_compression_level() -> None:
    assert FetchOptions(encode_format="png").encode_quality == 6  # not jpg's 95
    assert FetchOptions(encode_format="png", encode_quality=9).encode_quality == 9
    with pytest.raises(ValidationError, match="between 0 and 9"):
        FetchOptions(encode_format="png", encode_quality=95)
    with pytest.raises(ValidationError):
        FetchOptions(encode_quality=101)


def test_options_round_trip_through_json_and_pickle() -> None:
    o = FetchOptions(max_aspect_ratio=3.0, user_agent_token="mybot")
    assert FetchOptions.model_validate_json(o.model_dump_json()) == o
    assert FetchOptions.model_validate_json(FetchOptions().model_dump_json()) == FetchOptions()
    assert pickle.loads(pickle.dumps(o)) == o


# --------------------------------------------------------------------------- geometry


SIZES = [(800, 600), (600, 800), (300, 200), (256, 256), (1000, 100), (120, 90)]


def scaled(size: tuple[int, int], side: int, by: str) -> tuple[int, int]:
    w, h = size
    ref = min(w, h) if by == "smallest" else max(w, h)
    return max(1, round(w * side / ref)), max(1, round(h * side / ref))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    "mode", ["no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"]
)
def test_resize_mode_geometry(size: tuple[int, int], mode: str) -> None:
    out = process_image(jpeg(*size), FetchOptions(resize_mode=mode))
    expected = {
        "no": size,
        "keep_ratio": scaled(size, 256, "smallest"),
        "keep_ratio_largest": scaled(size, 256, "largest"),
        "center_crop": (256, 256),
        "border": (256, 256),
    }[mode]
    assert (out.width, out.height) == expected
    assert decode(out.data).size == expected
    assert (out.original_width, out.original_height) == size


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("keep_ratio", (120, 90)),
        ("keep_ratio_largest", (120, 90)),
        ("center_crop", (120, 90)),  # img2dataset: no crop either
        ("border", (120, 90)),  # nor padding
    ],
)
def test_resize_only_if_bigger_leaves_small_images(mode: str, expected: tuple[int, int]) -> None:
    opts = FetchOptions(resize_mode=mode, resize_only_if_bigger=True)
    out = process_image(jpeg(120, 90), opts)
    assert (out.width, out.height) == expected
    big = process_image(jpeg(800, 600), opts)
    assert max(big.width, big.height) == 256 or min(big.width, big.height) == 256


def test_border_pads_with_white_around_the_centred_image() -> None:
    opts = FetchOptions(resize_mode="border", encode_format="png")
    out = decode(process_image(jpeg(800, 400), opts).data)
    px = np.asarray(out)
    assert out.size == (256, 256)
    # 800x400 -> 256x128, centred: white bands of 64 rows above and below
    assert (px[:64] == 255).all()
    assert (px[192:] == 255).all()
    assert (px[64:192] != 255).any(axis=2).mean() > 0.9


def test_border_on_a_tall_greyscale_image_pads_white_columns() -> None:
    grey = Image.fromarray(np.full((400, 200), 40, dtype=np.uint8), "L")
    opts = FetchOptions(resize_mode="border", encode_format="png")
    out = decode(process_image(encode(grey, "PNG"), opts).data)
    assert (out.mode, out.size) == ("L", (256, 256))  # greyscale stays greyscale
    px = np.asarray(out)
    assert (px[:, :64] == 255).all()
    assert (px[:, 192:] == 255).all()
    assert (px[:, 64:192] == 40).all()


def test_center_crop_keeps_the_centre() -> None:
    # three vertical bands: red | green | blue; the centred square is all green
    bands = np.zeros((300, 900, 3), dtype=np.uint8)
    bands[:, :300, 0] = 255
    bands[:, 300:600, 1] = 255
    bands[:, 600:, 2] = 255
    data = encode(Image.fromarray(bands, "RGB"), "PNG")
    out = decode(process_image(data, FetchOptions(resize_mode="center_crop")).data)
    px = np.asarray(out, dtype=np.int32)
    assert out.size == (256, 256)
    inner = px[:, 8:-8]
    assert (inner[..., 1] > 200).all()
    assert (inner[..., 0] < 60).all()
    assert (inner[..., 2] < 60).all()


def test_upscale_small_images() -> None:
    out = process_image(jpeg(100, 50), FetchOptions(resize_mode="keep_ratio"))
    assert (out.width, out.height) == (512, 256)


# --------------------------------------------------------------------------- colours


def test_alpha_is_composited_on_white() -> None:
    data = synth.with_alpha(3, 400, 400)  # left half fully transparent
    out = decode(process_image(data, FetchOptions(encode_format="png")).data)
    assert out.mode == "RGB"
    px = np.asarray(out)
    assert (px[:, :120] == 255).all()
    assert (px[:, 136:] != 255).any(axis=2).mean() > 0.9


@pytest.mark.parametrize(("mode", "fmt"), [("LA", "PNG"), ("RGBA", "WEBP")])
def test_other_alpha_modes_are_composited_on_white(mode: str, fmt: str) -> None:
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (32, 0, 64, 64))
    data = encode(rgba.convert(mode), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    out = decode(process_image(data, FetchOptions(encode_format="png", image_size=64)).data)
    px = np.asarray(out.convert("L"))
    assert (px[:, :30] == 255).all()
    assert (px[:, 34:] == 0).all()


def test_palette_transparency_is_composited_on_white() -> None:
    img = Image.new("P", (64, 64), 0)
    img.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    img.paste(1, (32, 0, 64, 64))
    data = encode(img, "PNG", transparency=0)
    out = decode(process_image(data, FetchOptions(encode_format="png", image_size=64)).data)
    px = np.asarray(out)
    assert (px[:, :30] == 255).all()
    assert (px[:, 34:] == (200, 0, 0)).all()


def test_sixteen_bit_greyscale_keeps_its_tones() -> None:
    ramp = np.tile(np.linspace(0, 65535, 256, dtype=np.uint16), (64, 1))
    data = encode(Image.fromarray(ramp), "PNG")
    opts = FetchOptions(resize_mode="no", encode_format="png")
    px = np.asarray(decode(process_image(data, opts).data))
    assert px[0, 0] == 0
    assert px[0, -1] == 255
    assert 120 <= px[0, 128] <= 135  # mid-grey, not clipped to white


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (300, 200), (0, 255, 255, 0))  # red
    out = decode(process_image(encode(cmyk, "JPEG"), FetchOptions(resize_mode="no")).data)
    assert out.mode == "RGB"
    r, g, b = np.asarray(out, dtype=np.int32).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60


# --------------------------------------------------------------------------- reduced decoding


class DraftSpy:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.decoded: list[tuple[int, int]] = []
        original = JpegImagePlugin.JpegImageFile.draft
        spy = self

        def draft(self: Any, mode: Any, size: Any) -> Any:
            result = original(self, mode, size)
            spy.decoded.append(self.size)
            return result

        monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)


def test_big_jpegs_are_decoded_at_reduced_size(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = DraftSpy(monkeypatch)
    data = jpeg(1600, 1200, seed=5)
    out = process_image(data, FetchOptions(encode_format="png", resize_mode="border"))
    assert spy.decoded == [(400, 300)]  # 1/4: still larger than the 256x192 content
    assert (out.width, out.height) == (256, 256)
    assert (out.original_width, out.original_height) == (1600, 1200)
    # Output quality: close to a full decode resized with a high-quality filter.
    full = decode(data)
    ref = full.resize((256, 192), Image.Resampling.LANCZOS)
    content = decode(out.data).crop((0, 32, 256, 224))
    assert psnr(content, ref) > 35


def test_center_crop_draft_keeps_enough_pixels_for_the_crop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = DraftSpy(monkeypatch)
    data = jpeg(1600, 1200, seed=6)
    out = process_image(data, FetchOptions(resize_mode="center_crop", encode_format="png"))
    assert spy.decoded == [(400, 300)]  # the 1200x1200 crop is 300x300 >= 256 after 1/4
    full = decode(data)
    ref = full.crop((200, 0, 1400, 1200)).resize((256, 256), Image.Resampling.LANCZOS)
    assert psnr(decode(out.data), ref) > 35


def test_small_jpegs_and_upscales_are_decoded_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = DraftSpy(monkeypatch)
    process_image(jpeg(400, 300), FetchOptions())  # 1.6x: no 2x reduction fits
    process_image(jpeg(200, 150), FetchOptions())  # an upscale
    process_image(jpeg(1600, 1200), FetchOptions(resize_mode="no"))
    assert spy.decoded == []


def test_kept_image_blocks_are_reused_within_their_bound() -> None:
    """The fetch workers' setting (pool/worker.py): freed images' memory serves the next ones
    (no fresh mapping to fault in per image), and what is kept stays bounded."""
    defaults = Image.core.get_block_size(), Image.core.get_blocks_max()
    try:
        keep_image_blocks()
        before = Image.core.get_stats()["reused_blocks"]
        for seed in range(4):
            process_image(jpeg(1200, 900, seed=seed), FetchOptions())
        stats = Image.core.get_stats()
        assert stats["reused_blocks"] > before
        assert stats["blocks_cached"] <= IMAGE_BLOCKS
        assert Image.core.get_block_size() == IMAGE_BLOCK_BYTES
    finally:
        Image.core.set_blocks_max(defaults[1])
        Image.core.set_block_size(defaults[0])


# --------------------------------------------------------------------------- bombs and junk


# pytest resets warning filters per test; in production imaging/pipeline.py silences
# Pillow's warning because its own guard (max_decoded_pixels) decides.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_rejected_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = synth.png_bomb(12000, 12000)  # 144 Mpx (~144 MB decoded), 140 KB on the wire
    loaded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def spy_load(self: ImageFile.ImageFile) -> object:
        loaded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    err = rejected(bomb, FetchOptions())
    assert loaded == []  # refused from the header: the pixels were never decoded
    assert err.status is SampleStatus.FAILED_TO_RESIZE
    assert "decompression bomb" in err.message
    assert "12000x12000" in err.message


def test_giant_declared_size_is_rejected() -> None:
    err = rejected(synth.png_bomb(40000, 40000), FetchOptions())
    limit = FetchOptions().max_decoded_pixels
    assert err.message == (
        "decompression bomb: 40000x40000 image would decode to 1600000000 pixels, over the "
        f"limit of {limit}"
    )  # the user's limit, in one message, however far over it the image is


def test_a_raised_pixel_limit_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    # 196 Mpx: over twice Pillow's own threshold, under the limit the user set. Decoding is
    # replaced by a spy: reaching it proves nothing refused the image before.
    def spy_load(self: ImageFile.ImageFile) -> object:
        raise RuntimeError(f"would decode {self.size}")

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    bomb = synth.png_bomb(14000, 14000)
    assert "decompression bomb" in rejected(bomb, FetchOptions()).message
    err = rejected(bomb, FetchOptions(max_decoded_pixels=200_000_000))
    assert err.message == "Image decoding error"  # the spy's error: decoding was reached


def test_pixel_limit_counts_the_reduced_decode() -> None:
    # 1600x1200 = 1.9 Mpx; decoded at 1/4 it is 0.12 Mpx: a JPEG passes a 0.2 Mpx limit,
    # the same picture as a PNG (no reduced decode) does not.
    opts = FetchOptions(max_decoded_pixels=200_000)
    assert process_image(jpeg(1600, 1200), opts).width == 256
    png = encode(decode(jpeg(1600, 1200)), "PNG")
    assert "decompression bomb" in rejected(png, opts).message


@pytest.mark.parametrize(
    "data", [synth.NOT_AN_IMAGE, b"", b"GIF8"], ids=["html", "empty", "too-short"]
)
def test_bodies_without_image_magic_bytes_are_refused_before_decoding(
    data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[bytes] = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(b"") or None)
    err = rejected(data, FetchOptions())
    assert err.status is SampleStatus.FAILED_TO_RESIZE
    assert err.message == "not an image: unrecognized format"
    assert opened == []  # no decoder ever saw it


@pytest.mark.parametrize(
    "data",
    [b"\xff\xd8\xff\xe0 not really a jpeg", jpeg(640, 480)[:3000]],
    ids=["bad-header", "truncated"],
)
def test_broken_images_are_decoding_errors(data: bytes) -> None:
    err = rejected(data, FetchOptions())
    assert err.status is SampleStatus.FAILED_TO_RESIZE
    assert err.message == "Image decoding error"


def test_allowed_image_formats_restricts_what_is_accepted() -> None:
    gif = encode(Image.new("RGB", (64, 48), (10, 200, 30)), "GIF")
    opts = FetchOptions(allowed_image_formats="jpg,png", resize_mode="no")
    assert opts.allowed_image_formats == ("jpeg", "png")
    assert rejected(gif, opts).message == "image format gif not allowed"
    assert process_image(jpeg(64, 48), opts).width == 64
    assert process_image(gif, FetchOptions(resize_mode="no")).width == 64  # default: allowed
    with pytest.raises(ValidationError, match="unknown image format"):
        FetchOptions(allowed_image_formats=["svg"])


def test_a_body_is_opened_only_by_the_format_its_magic_names() -> None:
    # PNG magic, then a JPEG: a plugin-guessing open would decode it; here PNG must parse it.
    png_magic = b"\x89PNG\r\n\x1a\n" + jpeg(64, 48)
    assert rejected(png_magic, FetchOptions()).message == "Image decoding error"


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_web_formats_are_accepted(fmt: str) -> None:
    img = Image.new("RGB", (64, 48), (10, 200, 30))
    out = process_image(encode(img, fmt), FetchOptions(resize_mode="no", encode_format="png"))
    assert (out.width, out.height) == (64, 48)
    assert decode(out.data).getpixel((10, 10)) == (10, 200, 30)


def test_formats_pillow_would_hand_to_external_programs_are_refused() -> None:
    eps = encode(Image.new("RGB", (64, 48)), "EPS")  # loading EPS would run Ghostscript
    assert rejected(eps, FetchOptions()).message == "not an image: unrecognized format"


# --------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("opts", "size", "message"),
    [
        (FetchOptions(min_image_size=300), (640, 299), "image too small"),
        (FetchOptions(max_image_area=640 * 480 - 1), (640, 480), "image area too large"),
        (FetchOptions(max_aspect_ratio=2.0), (601, 300), "aspect ratio too large"),
        (FetchOptions(max_aspect_ratio=2.0), (300, 601), "aspect ratio too large"),
    ],
)
def test_filters_reject_with_img2dataset_messages(
    opts: FetchOptions, size: tuple[int, int], message: str
) -> None:
    err = rejected(jpeg(*size), opts)
    assert (err.status, err.message) == (SampleStatus.FAILED_TO_RESIZE, message)


def test_filters_let_the_boundary_through() -> None:
    opts = FetchOptions(min_image_size=300, max_image_area=600 * 300, max_aspect_ratio=2.0)
    out = process_image(jpeg(600, 300), opts)
    assert (out.original_width, out.original_height) == (600, 300)


def test_filters_look_at_original_dimensions() -> None:
    # resized to 256x256 it would be "too small" for 300; the original is 800x600
    out = process_image(jpeg(800, 600), FetchOptions(min_image_size=300))
    assert (out.width, out.height) == (256, 256)


# --------------------------------------------------------------------------- formats and exif


@pytest.mark.parametrize(
    ("fmt", "pil", "mime"),
    [("jpg", "JPEG", "image/jpeg"), ("png", "PNG", "image/png"), ("webp", "WEBP", "image/webp")],
)
def test_encode_formats(fmt: str, pil: str, mime: str) -> None:
    out = process_image(jpeg(500, 400), FetchOptions(encode_format=fmt))
    assert (out.ext, out.mime) == (fmt, mime)
    img = decode(out.data)
    assert (img.format, img.size) == (pil, (256, 256))


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_encode_quality_is_applied(fmt: str) -> None:
    data = jpeg(800, 600)
    high = process_image(data, FetchOptions(encode_format=fmt, encode_quality=95)).data
    low = process_image(data, FetchOptions(encode_format=fmt, encode_quality=40)).data
    assert len(low) < len(high) * 0.7


def test_png_compression_level_is_applied() -> None:
    data = jpeg(800, 600)
    fast = process_image(data, FetchOptions(encode_format="png", encode_quality=0)).data
    small = process_image(data, FetchOptions(encode_format="png", encode_quality=9)).data
    assert len(small) < len(fast) * 0.9
    assert np.array_equal(np.asarray(decode(fast)), np.asarray(decode(small)))  # lossless


def test_exif_is_kept_as_a_json_string() -> None:
    out = process_image(synth.photo_with_exif(2, 640, 480), FetchOptions())
    assert out.exif is not None
    tags = json.loads(out.exif)
    assert tags["Image Make"] == "I2DCam"
    assert tags["Image Model"] == "Model 1"
    assert tags["EXIF DateTimeOriginal"] == "2024:05:01 12:00:00"
    assert process_image(jpeg(640, 480), FetchOptions()).exif == "{}"
    assert (
        process_image(synth.photo_with_exif(2, 640, 480), FetchOptions(extract_exif=False)).exif
        is None
    )


# --------------------------------------------------------------------------- process pool


def test_results_and_rejections_cross_process_boundaries() -> None:
    err = ImageRejected(SampleStatus.FAILED_TO_RESIZE, "image too small")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.status, copy.message, str(copy)) == (err.status, err.message, "image too small")
    data = jpeg(640, 480)
    opts = FetchOptions(encode_format="webp")
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        remote = pool.submit(process_image, data, opts).result(timeout=60)
        with pytest.raises(ImageRejected) as info:
            pool.submit(process_image, data[:3000], opts).result(timeout=60)
    assert isinstance(remote, ProcessedImage)
    assert remote == process_image(data, opts)
    assert info.value.message == "Image decoding error"


FRESH_PROCESS_CHECK = """
import io
from PIL import Image
from i2d_fetcher.imaging import formats
from i2d_fetcher.imaging.pipeline import process_image
from i2d_fetcher.options import FetchOptions

missing = [f.name for f in formats.FORMATS.values() if f.pillow not in Image.OPEN]
assert not missing, f"plugins not imported by pipeline.py: {missing}"
opts = FetchOptions(allowed_image_formats=list(formats.FORMATS), image_size=32)
for name, fmt in formats.FORMATS.items():
    if fmt.pillow not in Image.SAVE or name in ("cur", "icns"):
        continue
    body = io.BytesIO()
    Image.new("RGB", (48, 40), (200, 10, 10)).save(body, fmt.pillow)
    for encode in ("jpg", "png", "webp"):
        quality = 9 if encode == "png" else 90  # png: a compression level
        how = opts.model_copy(update={"encode_format": encode, "encode_quality": quality})
        out = process_image(body.getvalue(), how)
        assert (out.width, out.height) == (32, 32), (name, encode)
assert Image._initialized < 2, "something made Pillow import every plugin"
print("ok")
"""


def test_the_formats_allowed_open_and_encode_without_every_pillow_plugin() -> None:
    # A fresh interpreter: this one may have imported every plugin already.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_CHECK], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def _encoded(size: tuple[int, int], fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(out, fmt, **params)
    return out.getvalue()


def test_only_light_images_are_processed_on_the_event_loop() -> None:
    from i2d_fetcher.imaging.pipeline import is_light

    opts = FetchOptions()
    assert is_light(_encoded((1600, 1200), "JPEG"), opts)  # 1.9 Mpx, baseline
    assert is_light(_encoded((800, 600), "PNG"), opts)
    assert not is_light(_encoded((2000, 1200), "JPEG"), opts)  # 2.4 Mpx
    # Decode time that follows the scans, not the pixels: on the imaging thread.
    assert not is_light(_encoded((400, 300), "JPEG", progressive=True), opts)
    assert not is_light(_encoded((400, 300), "TIFF"), opts)
    assert not is_light(b"<html>not an image</html>", opts)
    assert not is_light(_encoded((400, 300), "PNG"), FetchOptions(allowed_image_formats=["jpeg"]))
