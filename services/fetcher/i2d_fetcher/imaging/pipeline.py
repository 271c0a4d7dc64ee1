"""Decode, filter, resize and encode one image: img2dataset's resizer, on Pillow.

`process_image` is a pure CPU function of picklable arguments so it can run in a process
pool. What it does, in order, and why:

0. Tell the format from the magic bytes: anything but an allowed image format fails here,
   and the body is opened by that format's plugin only. An image whose XMP metadata
   prohibits AI/ML data mining (IPTC/PLUS `plus:DataMining`, xmp.py) is refused here, when
   `respect_iptc_data_mining`. `disable_all_reencoding` stops here and keeps the bytes.
1. Open lazily (header only) and apply the size filters on the original dimensions: a
   rejected image costs no decoding.
2. Plan the geometry from the original size (img2dataset's rules per resize mode).
3. For JPEGs much larger than the target, ask libjpeg for a reduced-size decode (DCT
   scaling, `Image.draft`): decoding at 1/2, 1/4 or 1/8 is several times cheaper than
   decoding everything and throwing most of it away. The decode stays at least as large as
   the target, and the last (< 2x) step uses a smooth filter (see `_filter`), so the output
   stays within a few dB of a full decode + area resize at about twice the speed.
4. Refuse to decode more than `max_decoded_pixels` (a decompression bomb is a rejected
   sample, never a memory blow-up). guard.py reads what the decode will hold from the
   bytes, before `Image.open` (which decodes an ICO, and sets up WebP and AVIF decoders):
   every frame, page, icon entry, AV1 sequence header; a progressive JPEG's full-size
   coefficients whatever the reduced size. The limit bounds the largest pixel buffer, and
   the decode's memory to that of an RGBA image of that many pixels (guard.memory_cap).
5. Decode, composite alpha on white, resize (area to shrink, lanczos to enlarge by
   default), blur the `bbox_col` boxes, crop or pad, encode. With `skip_reencode`, an image
   that needs none of that and already is `encode_format` keeps its downloaded bytes.
   A large image is converted and resized by strips (`_resize_by_strips`): its decoded pixels
   stay the only full-size buffer (converting a palette or RGBA image whole would add one
   or two more). A heavy decode first reserves its memory in the `DecodeGate` the worker
   processes share, when one is given (gate.py).
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# Every plugin of formats.FORMATS, imported to register it: opening by format name then finds
# it without Image.init(), which imports each of Pillow's ~45 plugins (~0.05 s of every
# fetch workers' fork server start). test_imaging checks the list against FORMATS.
from PIL import (
    AvifImagePlugin,  # noqa: F401
    BmpImagePlugin,  # noqa: F401
    CurImagePlugin,  # noqa: F401
    GifImagePlugin,  # noqa: F401
    IcnsImagePlugin,  # noqa: F401
    IcoImagePlugin,  # noqa: F401
    Image,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,  # noqa: F401
    WebPImagePlugin,  # noqa: F401
)

from i2d_fetcher.imaging import formats, guard, xmp
from i2d_fetcher.imaging.blur import Box, blur_boxes
from i2d_fetcher.imaging.exif import extract_exif
from i2d_fetcher.imaging.gate import GATE_FLOOR, DecodeGate
from i2d_fetcher.options import FetchOptions
from i2d_segments.records import SampleStatus

# Our own guard (max_decoded_pixels, checked on the size the decode would really have, before
# any pixel is decoded) replaces Pillow's: its warning, and its hard error at twice its own
# threshold, which would refuse images the user's limit allows and quote Pillow's number.
Image.MAX_IMAGE_PIXELS = None
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

DRAFT_MARGIN = 1  # a reduced-size decode keeps at least the target size on each axis
# Decoded images at least this large (in Pillow's memory) are converted and resized by strips
# of about STRIP_PIXELS source pixels.
STRIPS_FROM_BYTES = 16 * guard.MiB
STRIP_PIXELS = 1 << 20
# What a strip costs at most per source pixel: its crop, a numpy copy or an RGBA conversion,
# the RGB result, the alpha mask.
_STRIP_BYTES = 24

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
# Formats whose Image.open decodes the pixels already (IcoImagePlugin loads the entry).
DECODED_BY_OPEN = frozenset({"ico"})
# Pillow keeps up to 64 MB of PNG text chunks (decompressed) from Image.open on: metadata the
# fetcher does not use, and memory no pixel limit counts. A PNG with more fails to open.
PngImagePlugin.MAX_TEXT_MEMORY = 8 * PngImagePlugin.MAX_TEXT_CHUNK
# Pillow can open more formats than the web uses, some through external programs (EPS runs
# Ghostscript): a body is only ever opened by the one plugin its magic bytes name, among the
# plugins imported above.

# Pillow's pixel memory, in a process that decodes image after image (keep_image_blocks): blocks
# of at most IMAGE_BLOCK_BYTES (an image of 1 Mpx in RGBA fits in one), up to IMAGE_BLOCKS of
# them kept for reuse when an image is freed: what a decode, resize and pad hold at once.
IMAGE_BLOCK_BYTES = 4 * guard.MiB
IMAGE_BLOCKS = 8

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


def keep_image_blocks() -> None:
    """Let Pillow reuse the memory of freed images (for a process that decodes many).

    Pillow allocates an image's pixels in blocks (16 MiB by default) and, by default, frees
    each block with its image. Where buffers of 1 MiB and more are mapped on their own (the
    fetch workers: pool/worker.py), every decoded image, resize intermediate and padded canvas
    was then a fresh mapping that the kernel had to fault in and zero page by page: ~150 page
    faults and 0.3-0.4 ms of CPU per bench photo, 15% of its decode, resize and encode. Kept
    blocks are reused (realloc'd to the size asked). What stays held is bounded by
    IMAGE_BLOCKS x IMAGE_BLOCK_BYTES (32 MiB) per process, whatever the images: a larger
    image is split into more blocks, and a kept block is cut down to the block size."""
    Image.core.set_block_size(IMAGE_BLOCK_BYTES)
    Image.core.set_blocks_max(IMAGE_BLOCKS)


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


def process_image(
    data: bytes,
    opts: FetchOptions,
    boxes: Sequence[Box] = (),
    gate: DecodeGate | None = None,
    cpu: dict[str, float] | None = None,
) -> ProcessedImage:
    """Decode, filter, resize, blur `boxes` and encode; raises ImageRejected for a sample that
    fails. With a `gate`, a heavy decode first waits for its memory in the gate's budget.
    `cpu`, if given, gets this thread's CPU seconds of the `resize` and `encode` steps (the
    rest of the call is the decode's: format checks, header, filters, the decode itself)."""
    fmt = check_format(data, opts)
    if opts.respect_iptc_data_mining:
        prohibited = xmp.refusal(data, fmt.name)
        if prohibited is not None:
            message = xmp.MESSAGE.format(prohibited)
            raise ImageRejected(SampleStatus.FAILED_TO_DOWNLOAD, message)
    if opts.disable_all_reencoding:  # img2dataset: raw bytes, no filters, no sizes
        return ProcessedImage(data, fmt.ext, fmt.mime, None, None, None, None, _exif(data, opts))
    try:
        cost = guard.inspect(data, fmt.name)
    except guard.Unreadable:
        raise _rejected(DECODING_ERROR) from None
    # The least this decode can cost (a JPEG at 1/8), before Image.open: an ICO is decoded
    # there, WebP and AVIF decoders are set up there.
    check_cost(cost.at_scale(8), opts)
    with contextlib.ExitStack() as reserved:
        early = fmt.name in DECODED_BY_OPEN
        if gate is not None and early:  # the most it can cost, decode and conversion
            geo = plan(cost.width, cost.height, opts)
            need = cost.nbytes + transform_bytes("RGBA", geo, 1, (cost.width, cost.height))
            reserved.enter_context(gate.hold(need))
        try:
            img = Image.open(io.BytesIO(data), formats=(fmt.pillow,))
        except Exception:
            raise _rejected(DECODING_ERROR) from None
        with img:
            width, height = img.size
            check_filters(width, height, opts)
            geo = plan(width, height, opts)
            # skip_reencode: the bytes are kept, but still decoded once so a broken image
            # fails as it would otherwise (a JPEG cheaply: at 1/8 size, which still reads
            # every scan).
            keep = (
                opts.skip_reencode
                and geo.size is None
                and not boxes
                and formats.ENCODED_AS[opts.encode_format] == fmt.name
            )
            scale = _reduce(img, geo, width, height, verify_only=keep)
            cost = cost.at_scale(scale)
            check_cost(cost, opts)
            check_output(width, height, geo, opts)
            if gate is not None and not early:
                convert = 0 if keep else transform_bytes(img.mode, geo, scale, (width, height))
                reserved.enter_context(gate.hold(cost.nbytes + convert))
            try:
                img.load()
            except Exception:
                raise _rejected(DECODING_ERROR) from None
            if keep:
                exif = _exif(data, opts)
                return ProcessedImage(data, fmt.ext, fmt.mime, width, height, width, height, exif)
            decoded = time.thread_time()
            try:
                out = _transform(img, geo, opts, scale, (width, height), boxes)
            except _ConversionError:
                raise _rejected(DECODING_ERROR) from None
            resized = time.thread_time()
            encoded = encode(out, opts)
    result = ProcessedImage(
        data=encoded,
        ext=opts.encode_format,
        mime=FORMATS[opts.encode_format][1],
        width=out.width,
        height=out.height,
        original_width=width,
        original_height=height,
        exif=_exif(data, opts),
    )
    if cpu is not None:
        cpu["resize"] = resized - decoded
        cpu["encode"] = time.thread_time() - resized
    return result


def check_output(width: int, height: int, geo: Geometry, opts: FetchOptions) -> None:
    """The pixel limit on the resize's result too: keep_ratio or center_crop enlarge an image
    of an extreme aspect ratio to image_size on its short side (a 200x400000 strip would
    become 256x512000)."""
    out = geo.scaled or geo.size
    if out is not None and out[0] * out[1] > opts.max_decoded_pixels:
        raise _rejected(
            f"decompression bomb: {width}x{height} image would resize to {out[0] * out[1]}"
            f" pixels, over the limit of {opts.max_decoded_pixels}"
        )


# A decode of at most this many pixels (the full size, whatever a JPEG's reduced decode would
# save) runs on the fetcher's event loop: a few ms, which cost less than the imaging thread's
# two thread switches and executor hand-offs (bench corpus, 2000 photos of 0.04-1.9 Mpx: -5%
# CPU and -6% wall clock per image). Heavier ones run on the imaging thread, so the loop never
# waits long on one image; a light one skips the decode gate, so it never waits for another
# process's decode either (row.py).
INLINE_MAX_PIXELS = 1 << 21
# Formats whose decode time follows their pixels. Not AVIF (AV1 decoding is slow), TIFF or ICO
# (whatever they wrap), nor a progressive, multi-scan or lossless JPEG (its decode time
# follows its scans, and a small image can carry thousands).
INLINE_FORMATS = frozenset({"jpeg", "png", "webp", "gif", "bmp"})


def is_light(data: bytes, opts: FetchOptions) -> bool:
    """Whether `data` is an allowed image of INLINE_FORMATS whose header says it decodes to at
    most INLINE_MAX_PIXELS, far below what the decode gate budgets. Never raises: a body it
    cannot tell about is not light (and fails, if it must, on the imaging thread)."""
    name = formats.sniff(data[:32])
    if name is None or name not in INLINE_FORMATS or name not in opts.allowed_image_formats:
        return False
    try:
        cost = guard.inspect(data, name)
    except Exception:
        return False
    if cost.jpeg is not None and (cost.jpeg.coefficients or cost.jpeg.lossless):
        return False
    return cost.pixels <= INLINE_MAX_PIXELS and cost.nbytes < GATE_FLOOR


def check_cost(cost: guard.Estimate, opts: FetchOptions) -> None:
    """The pixel limit, on the largest buffer the decode holds, then on its memory."""
    limit = opts.max_decoded_pixels
    if cost.pixels > limit:
        raise _rejected(
            f"decompression bomb: {cost.width}x{cost.height} image would decode to"
            f" {cost.pixels} pixels, over the limit of {limit}"
        )
    cap = guard.memory_cap(limit)
    if cost.nbytes > cap:
        raise _rejected(
            f"decompression bomb: {cost.width}x{cost.height} image would need"
            f" {cost.nbytes >> 20} MiB to decode, over the {cap >> 20} MiB the limit of"
            f" {limit} pixels allows"
        )


def _exif(data: bytes, opts: FetchOptions) -> str | None:
    """img2dataset's `exif` of a successful sample: read from the downloaded bytes (exif.py)."""
    return extract_exif(data) if opts.extract_exif else None


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


Flatten = Callable[[Image.Image], Image.Image]


class _ConversionError(Exception):
    """Pillow could not convert the decoded pixels: a decoding error, as a failed decode."""


def _flattener(img: Image.Image) -> Flatten:
    """The conversion to RGB (or L for greyscale, as img2dataset keeps it), alpha composited
    on white, for `img` or any region of it: what depends on the whole image (whether 16-bit
    samples use their top byte) is decided here, once."""
    try:
        convert = _conversion(img)
    except Exception as e:
        raise _ConversionError(str(e)) from e

    def flat(part: Image.Image) -> Image.Image:
        try:
            return convert(part)
        except Exception as e:
            raise _ConversionError(str(e)) from e

    return flat


def _conversion(img: Image.Image) -> Flatten:
    mode = img.mode
    if mode in ("RGB", "L"):
        return lambda part: part
    if mode == "P":
        target = "RGBA" if "transparency" in img.info else "RGB"
        return lambda part: _on_white(part.convert(target))
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        top = img.getextrema()[1]
        shift = isinstance(top, int | float) and top > 255
        return lambda part: _to_l(part, shift)
    if mode in ("1", "F"):
        return lambda part: part.convert("L")
    if mode in ("LA", "La", "PA", "RGBa", "RGBA"):
        return lambda part: _on_white(part if part.mode == "RGBA" else part.convert("RGBA"))
    return lambda part: part.convert("RGB")  # CMYK, YCbCr, LAB, HSV...


def _to_l(part: Image.Image, shift: bool) -> Image.Image:
    # Imported here, for the rare 16-bit or 32-bit greyscale image: numpy is a fifth of what
    # the fork server imports for the fetch workers (~0.2 s of CPU each run) otherwise.
    import numpy as np

    arr = np.asarray(part)
    if shift:  # 16-bit samples: keep the top 8 bits, do not clip
        arr = arr.astype(np.uint32) >> 8
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")


def _on_white(img: Image.Image) -> Image.Image:
    if img.mode != "RGBA":
        return img
    background = Image.new("RGB", img.size, (WHITE, WHITE, WHITE))
    background.paste(img, mask=img.getchannel("A"))
    return background


def _flatten(img: Image.Image) -> Image.Image:
    """The whole image converted (`_flattener`); a large one by strips into its result, so
    the decoded image and the result are the only full-size buffers."""
    if img.mode in ("RGB", "L"):
        return img
    flat = _flattener(img)
    if not _by_strips(img.mode, img.size):
        return flat(img)
    rows = max(1, STRIP_PIXELS // max(1, img.width))
    out: Image.Image | None = None
    for top in range(0, img.height, rows):
        part = flat(img.crop((0, top, img.width, min(img.height, top + rows))))
        if out is None:
            out = Image.new(part.mode, img.size)
        out.paste(part, (0, top))
    assert out is not None
    return out


def _by_strips(mode: str, size: tuple[int, int]) -> bool:
    """Whether an image is converted by strips: one that needs converting (RGB and L need
    none, and Pillow resizes them with no full-size copy), into at least STRIPS_FROM_BYTES."""
    return mode not in ("RGB", "L") and size[0] * size[1] * 4 >= STRIPS_FROM_BYTES


def _resize(
    img: Image.Image,
    size: tuple[int, int],
    resample: Image.Resampling,
    box: tuple[float, float, float, float] | None = None,
) -> Image.Image:
    """`img` converted (`_flattener`) and resized to `size` from `box` (all of it if None):
    a large image by strips."""
    if not _by_strips(img.mode, img.size):
        return _flattener(img)(img).resize(size, resample, box=box)
    return _resize_by_strips(img, size, resample, box)


def _resize_by_strips(
    img: Image.Image,
    size: tuple[int, int],
    resample: Image.Resampling,
    box: tuple[float, float, float, float] | None,
) -> Image.Image:
    """Pillow's resize, by strips. Its two passes are separable: each pixel of the horizontal
    pass depends on its own row only, and the vertical pass resamples the columns of that
    intermediate. So each strip of rows is converted and resized horizontally into a
    full-height intermediate `size[0]` pixels wide, which is then resized vertically, with
    Pillow's own coordinates and weights. Only a strip is ever converted at once: no
    full-size converted copy exists. The result is Pillow's whole-image resize to the bit
    when Pillow also runs the horizontal pass first (it may pick the vertical one first for
    some shapes: then the two differ by the rounding of the 8-bit intermediate, a level or
    two on some pixels); nearest neighbour is always identical (rows and columns are picked
    independently)."""
    flat = _flattener(img)
    x0, y0, x1, y1 = box or (0.0, 0.0, float(img.width), float(img.height))
    ow = size[0]
    rows = max(1, STRIP_PIXELS // img.width)
    inter: Image.Image | None = None
    for top in range(0, img.height, rows):
        bottom = min(img.height, top + rows)
        if img.width > STRIP_PIXELS:  # a row of over a million pixels: by pieces, too
            part = _row_pass_by_pieces(img, flat, ow, resample, (x0, x1), (top, bottom))
        else:
            strip = flat(img.crop((0, top, img.width, bottom)))
            part = strip.resize((ow, bottom - top), resample, box=(x0, 0, x1, bottom - top))
        if inter is None:
            inter = Image.new(part.mode, (ow, img.height))
        inter.paste(part, (0, top))
    assert inter is not None
    return inter.resize(size, resample, box=(0, y0, ow, y1))


def _row_pass_by_pieces(
    img: Image.Image,
    flat: Flatten,
    ow: int,
    resample: Image.Resampling,
    span: tuple[float, float],
    rows: tuple[int, int],
) -> Image.Image:
    """The horizontal pass of rows too wide to convert at once: by pieces of output columns,
    each from the source columns its filter windows reach (Pillow clips a window at the
    edges of what it is given: with that margin, the weights are the whole row's, up to
    float rounding in the coordinates, at most 1 level on rare pixels)."""
    (x0, x1), (top, bottom) = span, rows
    sx = (x1 - x0) / ow
    margin = _SUPPORT[resample] * max(sx, 1.0) + 2
    cols = max(1, int(STRIP_PIXELS / max(sx, 1.0) / (bottom - top)))
    out: Image.Image | None = None
    for c0 in range(0, ow, cols):
        c1 = min(ow, c0 + cols)
        left, right = x0 + c0 * sx, (x1 if c1 == ow else x0 + c1 * sx)
        t0 = max(0, math.floor(left - margin))
        t1 = min(img.width, math.ceil(right + margin))
        piece = flat(img.crop((t0, top, t1, bottom)))
        region = (max(0.0, left - t0), 0.0, min(right - t0, float(t1 - t0)), bottom - top)
        part = piece.resize((c1 - c0, bottom - top), resample, box=region)
        if out is None:
            out = Image.new(part.mode, (ow, bottom - top))
        out.paste(part, (c0, 0))
    assert out is not None
    return out


# Pillow's filter supports (source pixels each side of a sample, at scale 1).
_SUPPORT = {
    Image.Resampling.NEAREST: 0.5,
    Image.Resampling.BOX: 0.5,
    Image.Resampling.BILINEAR: 1.0,
    Image.Resampling.HAMMING: 1.0,
    Image.Resampling.BICUBIC: 2.0,
    Image.Resampling.LANCZOS: 3.0,
}


def transform_bytes(mode: str, geo: Geometry, scale: int, original: tuple[int, int]) -> int:
    """What converting, resizing and encoding the decoded image (`mode`, `original` size
    decoded at 1/`scale`) costs on top of the decode."""
    w, h = -(-original[0] // scale), -(-original[1] // scale)
    convert = 0
    if mode not in ("RGB", "L"):  # a strip at a time, or the whole image at once
        convert = _STRIP_BYTES * (2 * STRIP_PIXELS if _by_strips(mode, (w, h)) else w * h)
    if geo.size is None:  # the whole image kept: converted into a result, then encoded
        return convert + (4 * w * h if convert else 0) + 4 * w * h
    out = geo.scaled or geo.size
    outputs = 3 * 4 * (out[0] * out[1] + (geo.canvas or 0) ** 2)  # result, padded, encoded
    return convert + 4 * out[0] * h + outputs  # and Pillow's horizontal pass, full height


def _transform(
    img: Image.Image,
    geo: Geometry,
    opts: FetchOptions,
    scale: int,
    original: tuple[int, int],
    boxes: Sequence[Box] = (),
) -> Image.Image:
    if geo.size is None:
        img = _flatten(img)
        return blur_boxes(img, boxes) if boxes else img
    if boxes:
        # img2dataset blurs the whole resized image, then crops or pads: resize it all first
        # (the one-step crop-and-resize below would blur without the pixels around the crop).
        assert geo.scaled is not None
        name = opts.downscale_interpolation if geo.downscale else opts.upscale_interpolation
        ratio = min(img.width / geo.scaled[0], img.height / geo.scaled[1])
        if img.size != geo.scaled:
            img = _resize(img, geo.scaled, _filter(name, ratio))
        else:
            img = _flatten(img)
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
        img = _resize(img, geo.size, _filter(name, ratio), box=box)
    else:
        img = _flatten(img)
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
