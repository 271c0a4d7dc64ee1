"""Synthetic photo-like images, deterministic per (seed, width, height).

Flat colours would make JPEGs a few KB and flatter every benchmark; real photos have smooth
light, hard edges and texture at every scale. So an image here is a tilted two-colour gradient
(light), soft colour blotches, a few filled shapes (objects, hard edges), luminance texture at
three scales and a fine grain. Most of the work runs in C (Pillow resizes and draws, numpy adds
and clips), so a 1600x1200 JPEG takes a few tens of milliseconds.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw

MIN_SIZE = (200, 200)
MAX_SIZE = (1600, 1200)
GRAIN_TILE = 128  # the fine grain is a random tile repeated: cheap, and JPEG cannot exploit it


def _rng(seed: int, width: int, height: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFFFFFF, width, height, salt])


def size_for_seed(seed: int) -> tuple[int, int]:
    """The size of `/img/<seed>.jpg`: uniform over 200x200..1600x1200, fixed by the seed."""
    rng = np.random.default_rng([seed & 0xFFFFFFFFFFFF, 0xC0FFEE])
    return (
        int(rng.integers(MIN_SIZE[0], MAX_SIZE[0] + 1)),
        int(rng.integers(MIN_SIZE[1], MAX_SIZE[1] + 1)),
    )


def _field(
    rng: np.random.Generator, cells: tuple[int, int], size: tuple[int, int], channels: int
) -> np.ndarray:
    """A random low-resolution field upscaled smoothly to `size`: structure at one scale."""
    cw, ch = max(2, cells[0]), max(2, cells[1])
    low = rng.integers(0, 256, size=(ch, cw, channels), dtype=np.uint8)
    img = Image.fromarray(low[..., 0] if channels == 1 else low, "L" if channels == 1 else "RGB")
    up = np.asarray(img.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    return up if channels > 1 else up[..., None]


def _gradient(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Light: two related colours along a random direction."""
    w, h = size
    top = rng.integers(40, 230, size=3).astype(np.float32)
    bottom = np.clip(top + rng.normal(0, 60, size=3), 0, 255).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle) + 0.5
    t = np.clip(t, 0, 1)[..., None]
    return (top * (1 - t) + bottom * t).astype(np.int16)


def _shapes(rng: np.random.Generator, img: Image.Image) -> None:
    w, h = img.size
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 10))):
        xs = np.sort(rng.integers(-w // 4, w + w // 4, 2))
        ys = np.sort(rng.integers(-h // 4, h + h // 4, 2))
        box = (int(xs[0]), int(ys[0]), int(xs[1]), int(ys[1]))
        fill = tuple(int(c) for c in rng.integers(20, 236, 3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse(box, fill=fill)
        elif kind == 1:
            draw.rectangle(box, fill=fill)
        else:
            n = int(rng.integers(3, 7))
            pts = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(n)]
            draw.polygon(pts, fill=fill)


def _small(n: int, div: int) -> int:
    return max(2, -(-n // div))


def render(seed: int, width: int, height: int) -> np.ndarray:
    """The RGB pixels (height, width, 3) of one synthetic photo.

    Smooth parts are built at 1/8 (colour) and 1/4 (texture) resolution and upscaled once:
    upscaling a tiny field straight to full size is what costs, not the pixels.
    """
    rng = _rng(seed, width, height)
    full = (width, height)
    small = (_small(width, 8), _small(height, 8))
    colour = _gradient(rng, small)
    blend = float(rng.uniform(0.15, 0.35))
    blotches = _field(rng, (width // 200 + 2, height // 200 + 2), small, 3)
    colour = (colour * (1 - blend) + blotches * blend).astype(np.uint8)
    img = Image.fromarray(colour, "RGB").resize(full, Image.Resampling.BILINEAR)
    _shapes(rng, img)
    # Luminance texture at three scales (coarse shading to fine detail), the same on all
    # channels as in real scenes, where texture is mostly brightness.
    mid = (_small(width, 4), _small(height, 4))
    texture = np.full((mid[1], mid[0], 1), 128 * 128, dtype=np.int32)
    for div, amp in ((48, 18), (12, 12), (4, 7)):
        texture += (_field(rng, (width // div, height // div), mid, 1) - 128) * amp
    texture_img = Image.fromarray((texture[..., 0] // 128).astype(np.uint8), "L")
    texture_full = texture_img.resize(full, Image.Resampling.BILINEAR)
    px = np.asarray(img, dtype=np.int16)
    px += np.asarray(texture_full, dtype=np.int16)[..., None] - 128
    grain_amp = int(rng.integers(4, 8))
    tile = rng.integers(-grain_amp, grain_amp + 1, size=(GRAIN_TILE, GRAIN_TILE, 3), dtype=np.int16)
    reps = (height // GRAIN_TILE + 1, width // GRAIN_TILE + 1, 1)
    px += np.tile(tile, reps)[:height, :width]
    np.clip(px, 0, 255, out=px)
    return px.astype(np.uint8)


def jpeg_quality_for(seed: int) -> int:
    """Web JPEGs come at varied qualities; fixed per seed for determinism."""
    return int(np.random.default_rng([seed & 0xFFFFFFFFFFFF, 0x0A]).integers(78, 93))


def encode(pixels: np.ndarray, fmt: str, quality: int = 85, exif: bytes | None = None) -> bytes:
    """Encode RGB or RGBA pixels as jpg, png or webp."""
    mode = "RGBA" if pixels.shape[-1] == 4 else "RGB"
    img = Image.fromarray(pixels, mode)
    buf = io.BytesIO()
    if fmt == "jpg":
        if exif is not None:
            img.save(buf, "JPEG", quality=quality, exif=exif)
        else:
            img.save(buf, "JPEG", quality=quality)
    elif fmt == "png":
        img.save(buf, "PNG", compress_level=1)
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=quality)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()


def photo(seed: int, width: int, height: int, fmt: str = "jpg") -> bytes:
    return encode(render(seed, width, height), fmt, jpeg_quality_for(seed))


def with_alpha(seed: int, width: int, height: int) -> bytes:
    """A PNG whose left half is fully transparent and right half opaque: after compositing on
    white, a client must see white on the left and the photo on the right."""
    rgb = render(seed, width, height)
    alpha = np.full((height, width, 1), 255, dtype=np.uint8)
    alpha[:, : width // 2] = 0
    return encode(np.concatenate([rgb, alpha], axis=2), "png")


def sample_exif() -> bytes:
    """A small EXIF block (camera, date, orientation) as cameras write it."""
    exif = Image.Exif()
    exif[0x010F] = "I2DCam"  # Make
    exif[0x0110] = "Model 1"  # Model
    exif[0x0112] = 1  # Orientation
    exif.get_ifd(0x8769)[0x9003] = "2024:05:01 12:00:00"  # DateTimeOriginal
    return exif.tobytes()


def photo_with_exif(seed: int, width: int, height: int) -> bytes:
    return encode(render(seed, width, height), "jpg", jpeg_quality_for(seed), exif=sample_exif())


def xmp_data_mining(value: str) -> bytes:
    """An XMP packet whose IPTC/PLUS `plus:DataMining` is `value` (a code such as
    DMI-PROHIBITED-AIMLTRAINING, or a full vocabulary url)."""
    if "/" not in value:
        value = "http://ns.useplus.org/ldf/vocab/" + value
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:plus="http://ns.useplus.org/ldf/xmp/1.0/">'
        f"<plus:DataMining>{value}</plus:DataMining>"
        '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def jpeg_with_xmp(jpeg: bytes, packet: bytes) -> bytes:
    """The JPEG with an XMP APP1 segment right after its SOI marker."""
    body = b"http://ns.adobe.com/xap/1.0/\x00" + packet
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def png_bomb(width: int, height: int) -> bytes:
    """A valid greyscale PNG of `width` x `height` black pixels: tiny on the wire, huge in
    memory once decoded (deflate packs ~1000:1 on zeros).

    Built without compressing gigabytes: after a full flush a deflate stream carries no
    history, so compressing the same block of rows again yields the same bytes, which can be
    repeated. The zlib trailer is the Adler-32 of all-zero data: a = 1, b = length mod 65521.
    """

    def chunk(tag: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(tag + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)

    row = width + 1  # filter byte + pixels, all zero
    rows_per_block = max(1, (1 << 20) // row)
    blocks, rest = divmod(height, rows_per_block)
    comp = zlib.compressobj(9)
    parts = [comp.compress(b"")]  # the 2-byte zlib header comes out with the first data
    if blocks:
        block = bytes(row * rows_per_block)
        first = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
        parts.append(first)
        if blocks > 1:
            again = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
            parts.append(again * (blocks - 1))
    tail = comp.compress(bytes(row * rest)) + comp.flush(zlib.Z_FINISH)
    total = row * height
    adler = ((total % 65521) << 16) | 1
    parts.append(tail[:-4] + struct.pack(">I", adler))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", b"".join(parts)),
            chunk(b"IEND", b""),
        )
    )


def gzip_bomb(decoded_bytes: int) -> bytes:
    """A gzip stream of zeros: what a client must cap by decoded, not transferred, bytes."""
    buf = io.BytesIO()
    block = b"\x00" * (1 << 20)
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as gz:
        remaining = decoded_bytes
        while remaining > 0:
            gz.write(block[: min(remaining, len(block))])
            remaining -= len(block)
    return buf.getvalue()


NOT_AN_IMAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Moved</title></head>"
    b"<body><p>This page is HTML, whatever the Content-Type says.</p></body></html>\n"
)
