"""Decode, filter, resize and encode one image: img2dataset's resizer, on Pillow.

`process_image` is a pure CPU function of picklable arguments so it can run in a process
pool. What it does, in order, and why:

0. Tell the format from the magic bytes: anything but an allowed image format fails here,
   and the body is opened by that format's plugin only. `disable_all_reencoding` stops here
   and keeps the bytes.
1. Open lazily (header only) and apply the size filters on the original dimensions: a
   rejected image costs no decoding.
2. Plan the geometry from the original size (img2dataset's rules per resize mode).
3. For JPEGs much larger than the target, ask libjpeg for a reduced-size decode (DCT
   scaling, `Image.draft`): decoding at 1/2, 1/4 or 1/8 is several times cheaper than
   decoding everything and throwing most of it away. The decode stays at least as large as
   the target, and the last (< 2x) step uses a smooth filter (see `_filter`), so the output
   stays within a few dB of a full decode + area resize at about twice the speed.
4. Refuse to decode more than `max_decoded_pixels` (a decompression bomb is a rejected
   sample, never a memory blow-up); the check uses the header's size, before any pixel
   buffer exists.
5. Decode, composite alpha on white, resize (area to shrink, lanczos to enlarge by
   default), blur the `bbox_col` boxes, crop or pad, encode. With `skip_reencode`, an image
   that needs none of that and already is `encode_format` keeps its downloaded bytes.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, JpegImagePlugin

from i2d_fetcher.imaging import formats
from i2d_fetcher.imaging.blur import Box, blur_boxes
from i2d_fetcher.imaging.exif import extract_exif, header_exif
from i2d_fetcher.options import FetchOptions
from i2d_segments.records import SampleStatus

# Our own guard (max_decoded_pixels, checked on the size the decode would really have, before
# any pixel is decoded) replaces Pillow's: its warning, and its hard error at twice its own
# threshold, which would refuse images the user's limit allows and quote Pillow's number.
Image.MAX_IMAGE_PIXELS = None
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

DRAFT_MARGIN = 1  # a reduced-size decode keeps at least the target size on each axis

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "linear": Image.Resampling.BILINEAR,
    "cubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,  # box filter on a downscale = averaging pixel areas
    "lanczos": Image.Resampling.LANCZOS,
}
FORMATS = {
    "jpg": ("JPEG", "image/jpeg"),
    "png": ("PNG", "image/png"),
    "webp": ("WEBP", "image/webp"),
}
WHITE = 255
# Pillow can open more formats than the web uses, some through external programs (EPS runs
# Ghostscript): a body is only ever opened by the one plugin its magic bytes name.
Image.init()  # register every plugin now, so opening by format name finds it

# img2dataset's error strings (users count them in status_dict).
DECODING_ERROR = "Image decoding error"
TOO_SMALL = "image too small"
AREA_TOO_LARGE = "image area too large"
ASPECT_TOO_LARGE = "aspect ratio too large"
# Ours: a body that is no image format at all (an HTML error page, an empty body).
UNRECOGNIZED_FORMAT = "not an image: unrecognized format"


class ImageRejected(Exception):
    """The sample fails with `status` and `message`; it is not a bug, the pipeline goes on."""

    def __init__(self, status: SampleStatus, message: str) -> None:
        super().__init__(status, message)  # both in args: survives pickling across processes
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message


def _rejected(message: str) -> ImageRejected:
    return ImageRejected(SampleStatus.FAILED_TO_RESIZE, message)


@dataclass(frozen=True, slots=True)
class ProcessedImage:
    data: bytes
    ext: str
    mime: str
    width: int | None  # None only with disable_all_reencoding (nothing decoded)
    height: int | None
    original_width: int | None
    original_height: int | None
    exif: str | None


@dataclass(frozen=True, slots=True)
class Geometry:
    """What to do with an image of the original size.

    `size` is the resize output (None: keep the pixels as decoded); `box` the region of the
    original that maps onto it (a centre crop), None for all of it; `canvas` the side of the
    white square to pad onto (border mode); `scaled` the whole image's size after the resize
    step, before any crop (blurring happens there)."""

    size: tuple[int, int] | None
    box: tuple[float, float, float, float] | None
    canvas: int | None
    downscale: bool
    scaled: tuple[int, int] | None = None


def plan(width: int, height: int, opts: FetchOptions) -> Geometry:
    """img2dataset's geometry: which side becomes image_size, then crop or pad."""
    s = opts.image_size
    mode = opts.resize_mode
    if mode == "no":
        return Geometry(None, None, None, False)
    if mode in ("keep_ratio", "center_crop"):
        downscale = min(width, height) > s
        scale = s / min(width, height)
    else:  # keep_ratio_largest, border
        downscale = max(width, height) > s
        scale = s / max(width, height)
    if opts.resize_only_if_bigger and not downscale:
        return Geometry(None, None, None, False)  # as img2dataset: no crop or pad either
    rw, rh = max(1, round(width * scale)), max(1, round(height * scale))
    if mode == "center_crop":
        x0, y0 = (rw - s) // 2, (rh - s) // 2
        box = (x0 / scale, y0 / scale, (x0 + s) / scale, (y0 + s) / scale)
        return Geometry((s, s), box, None, downscale, (rw, rh))
    return Geometry((rw, rh), None, s if mode == "border" else None, downscale, (rw, rh))


def check_filters(width: int, height: int, opts: FetchOptions) -> None:
    """img2dataset's filters, on the original dimensions, in its order."""
    if min(width, height) < opts.min_image_size:
        raise _rejected(TOO_SMALL)
    if width * height > opts.max_image_area:
        raise _rejected(AREA_TOO_LARGE)
    if max(width, height) / max(1, min(width, height)) > opts.max_aspect_ratio:
        raise _rejected(ASPECT_TOO_LARGE)


def check_format(data: bytes, opts: FetchOptions) -> formats.ImageFormat:
    """The body's format from its magic bytes; rejected unless it is an allowed one."""
    name = formats.sniff(data[:32])
    if name is None:
        raise _rejected(UNRECOGNIZED_FORMAT)
    if name not in opts.allowed_image_formats:
        raise _rejected(f"image format {name} not allowed")
    return formats.FORMATS[name]


def process_image(data: bytes, opts: FetchOptions, boxes: Sequence[Box] = ()) -> ProcessedImage:
    """Decode, filter, resize, blur `boxes` and encode; raises ImageRejected for a sample that
    fails."""
    fmt = check_format(data, opts)
    if opts.disable_all_reencoding:  # img2dataset: raw bytes, no filters, no sizes
        return ProcessedImage(
            data, fmt.ext, fmt.mime, None, None, None, None, _raw_exif(data, fmt, opts)
        )
    try:
        img = Image.open(io.BytesIO(data), formats=(fmt.pillow,))
    except Exception:
        raise _rejected(DECODING_ERROR) from None
    with img:
        width, height = img.size
        check_filters(width, height, opts)
        geo = plan(width, height, opts)
        # skip_reencode: the bytes are kept, but still decoded once so a broken image fails
        # as it would otherwise (a JPEG cheaply: at 1/8 size, which still reads every scan).
        keep = (
            opts.skip_reencode
            and geo.size is None
            and not boxes
            and formats.ENCODED_AS[opts.encode_format] == fmt.name
        )
        scale = _reduce(img, geo, width, height, verify_only=keep)
        dw, dh = img.size
        if dw * dh > opts.max_decoded_pixels:
            raise _rejected(
                f"decompression bomb: {width}x{height} image would decode to {dw * dh} pixels,"
                f" over the limit of {opts.max_decoded_pixels}"
            )
        # Only now: reading EXIF may decode the whole image (PNG keeps it after the pixels).
        exif = extract_exif(img) if opts.extract_exif else None
        try:
            img.load()
            pixels = img if keep else _flatten(img)
        except Exception:
            raise _rejected(DECODING_ERROR) from None
        if keep:
            return ProcessedImage(data, fmt.ext, fmt.mime, width, height, width, height, exif)
        out = _transform(pixels, geo, opts, scale, (width, height), boxes)
        encoded = encode(out, opts)
    return ProcessedImage(
        data=encoded,
        ext=opts.encode_format,
        mime=FORMATS[opts.encode_format][1],
        width=out.width,
        height=out.height,
        original_width=width,
        original_height=height,
        exif=exif,
    )


def _raw_exif(data: bytes, fmt: formats.ImageFormat, opts: FetchOptions) -> str | None:
    """EXIF from the header alone; a body Pillow cannot even parse simply has none."""
    if not opts.extract_exif:
        return None
    try:
        with Image.open(io.BytesIO(data), formats=(fmt.pillow,)) as img:
            return header_exif(img)
    except Exception:
        return None


def _reduce(
    img: Image.Image, geo: Geometry, width: int, height: int, verify_only: bool = False
) -> int:
    """Ask a JPEG for a reduced-size decode when the target is much smaller (or when the
    pixels are only decoded to verify them); returns the scale (1, 2, 4 or 8) the decoder
    will apply."""
    jpeg = isinstance(img, JpegImagePlugin.JpegImageFile)  # MPO (camera) files are JPEGs too
    if jpeg and verify_only:
        img.draft(None, (max(1, width // 8), max(1, height // 8)))
        return 8
    if not jpeg or geo.size is None or not geo.downscale:
        return 1
    bw, bh = (
        (width, height) if geo.box is None else (geo.box[2] - geo.box[0], geo.box[3] - geo.box[1])
    )
    room = min(bw / geo.size[0], bh / geo.size[1]) / DRAFT_MARGIN
    scale = next((s for s in (8, 4, 2) if s <= room), 1)
    if scale == 1:
        return 1
    img.draft(None, (width // scale, height // scale))
    return scale


def _flatten(img: Image.Image) -> Image.Image:
    """RGB (or L for greyscale, as img2dataset keeps it); alpha composited on white."""
    mode = img.mode
    if mode in ("RGB", "L"):
        return img
    if mode == "P":
        mode = "RGBA" if "transparency" in img.info else "RGB"
        img = img.convert(mode)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img)
        if arr.max(initial=0) > 255:  # 16-bit samples: keep the top 8 bits, do not clip
            arr = arr.astype(np.uint32) >> 8
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if mode in ("1", "F"):
        return img.convert("L")
    if mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        background = Image.new("RGB", img.size, (WHITE, WHITE, WHITE))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV...


def _transform(
    img: Image.Image,
    geo: Geometry,
    opts: FetchOptions,
    scale: int,
    original: tuple[int, int],
    boxes: Sequence[Box] = (),
) -> Image.Image:
    if geo.size is None:
        return blur_boxes(img, boxes) if boxes else img
    if boxes:
        # img2dataset blurs the whole resized image, then crops or pads: resize it all first
        # (the one-step crop-and-resize below would blur without the pixels around the crop).
        assert geo.scaled is not None
        name = opts.downscale_interpolation if geo.downscale else opts.upscale_interpolation
        ratio = min(img.width / geo.scaled[0], img.height / geo.scaled[1])
        if img.size != geo.scaled:
            img = img.resize(geo.scaled, _filter(name, ratio))
        img = blur_boxes(img, boxes)
        if geo.box is not None:  # center_crop
            x0, y0 = (geo.scaled[0] - geo.size[0]) // 2, (geo.scaled[1] - geo.size[1]) // 2
            img = img.crop((x0, y0, x0 + geo.size[0], y0 + geo.size[1]))
        return _pad(img, geo)
    # Coordinates of the original, mapped to the (possibly reduced) decoded image.
    box = geo.box or (0.0, 0.0, float(original[0]), float(original[1]))
    box = (box[0] / scale, box[1] / scale, box[2] / scale, box[3] / scale)
    whole = box == (0.0, 0.0, float(img.width), float(img.height))
    if geo.size != img.size or not whole:
        name = opts.downscale_interpolation if geo.downscale else opts.upscale_interpolation
        ratio = min((box[2] - box[0]) / geo.size[0], (box[3] - box[1]) / geo.size[1])
        img = img.resize(geo.size, _filter(name, ratio), box=box)
    return _pad(img, geo)


def _pad(img: Image.Image, geo: Geometry) -> Image.Image:
    """border mode: centre on a white square."""
    if geo.canvas is None or img.size == (geo.canvas, geo.canvas):
        return img
    fill: Any = WHITE if img.mode == "L" else (WHITE, WHITE, WHITE)
    canvas = Image.new(img.mode, (geo.canvas, geo.canvas), fill)
    canvas.paste(img, ((geo.canvas - img.width) // 2, (geo.canvas - img.height) // 2))
    return canvas


def _filter(name: str, ratio: float) -> Image.Resampling:
    """The Pillow filter for an img2dataset interpolation name at a given shrink ratio.

    Pillow's box filter weighs whole input pixels by their centres, so under a 2x shrink it
    degenerates towards nearest-neighbour sampling (jagged edges), unlike OpenCV's exact
    pixel-area averaging that img2dataset's "area" means. Below 2x (always the case after a
    reduced-size JPEG decode) a triangle filter is the faithful area average."""
    if name == "area" and ratio < 2:
        return Image.Resampling.BILINEAR
    return RESAMPLING[name]


def encode(img: Image.Image, opts: FetchOptions) -> bytes:
    buf = io.BytesIO()
    fmt = FORMATS[opts.encode_format][0]
    if fmt == "PNG":
        img.save(buf, fmt, compress_level=opts.encode_quality)
    else:
        img.save(buf, fmt, quality=opts.encode_quality)
    return buf.getvalue()
