"""What decoding a body will cost, read from its bytes before any decoder runs.

Pillow's own guard looks at `Image.open`'s size only, and that is not what a decoder holds:

- a progressive (or non-interleaved) JPEG keeps a coefficient buffer for the whole image,
  whatever reduced size `Image.draft` asks for;
- an ICO file is decoded inside `Image.open`, and its entries (a PNG, or a BMP whose real
  size is in its own header) may be any size, whatever the directory says; an ICNS or CUR
  entry likewise;
- an animated GIF or WebP, a multi-page TIFF, an AVIF declare sizes per frame, page, item or
  in the AV1 stream itself; a TIFF tile may be larger than its page;
- WebP and AVIF decoders hold several canvases (RGBA copies, YUV planes) per pixel.

`inspect` parses the headers of every format the fetcher can be allowed to take (formats.py)
and returns an `Estimate`: the largest pixel buffer the decode can hold (`pixels`, what the
pixel limit counts) and the memory the decode needs at its peak (`nbytes`). Headers only: a
normal JPEG costs a walk over a dozen marker segments. Anything it cannot parse raises
`Unreadable`: a body whose size cannot be told is not decoded (a decoding error).

The memory model per format was measured (peak RSS of a process decoding images of each kind,
tests/fetcher/test_bombs.py), in bytes per pixel of the buffer that dominates, with margin.
"""

from __future__ import annotations

import contextlib
import math
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

MiB = 1 << 20
FIXED = 2 * MiB  # decoder state, tables, a few rows: what any decode costs on top

# Pillow's bytes per pixel by mode (RGB is stored as 4 bytes, like RGBA).
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2}
_WIDE = 4

# A decode may hold at most the memory of an RGBA image at the pixel limit, plus this.
CAP_SLACK = 32 * MiB
MAX_TIFF_PAGES = 1024  # pages further on are not examined (only the first is ever decoded)
MAX_TIFF_ENTRIES = 100_000  # nor pages past this many tags in all (IFDs may overlap)
MAX_ICON_ENTRIES = 1024
# Headers are walked in Python: a body of a hundred thousand segments, chunks, boxes or icon
# entries (no real file has) is refused rather than walked; GIF sub-blocks are walked no
# further than a million (the first frame, the one decoded, is read first).
MAX_STEPS = 100_000
MAX_GIF_SUB_BLOCKS = 1_000_000
_walk = threading.local()


class Unreadable(Exception):
    """The header does not parse: the size cannot be told, so the body is not decoded."""


@dataclass(frozen=True, slots=True)
class JpegLayout:
    """What libjpeg will allocate, from the frame header and the first scan header."""

    width: int
    height: int
    components: int
    coefficients: int  # bytes of whole-image coefficient buffers, 0 if none
    lossless: bool
    body: int  # Pillow keeps every APP segment (EXIF, ICC, XMP...): up to the body's size


@dataclass(frozen=True, slots=True)
class Estimate:
    width: int  # the image a message names (the largest frame, page, entry...)
    height: int
    pixels: int  # the largest pixel buffer the decode holds (a JPEG's: at its reduced size)
    nbytes: int  # memory the decode needs at its peak
    jpeg: JpegLayout | None = None  # a JPEG's cost depends on the reduced-size decode

    def at_scale(self, scale: int) -> Estimate:
        """The cost once a JPEG is decoded at 1/`scale` (`Image.draft`): the output shrinks,
        not the coefficient buffers of a progressive or multi-scan image, nor a lossless
        image (libjpeg cannot scale those)."""
        j = self.jpeg
        if j is None or scale == 1 or j.lossless:
            return self
        out = _ceil_div(j.width, scale) * _ceil_div(j.height, scale)
        pixels = j.width * j.height if j.coefficients else out
        return replace(self, pixels=pixels, nbytes=_jpeg_bytes(j, out))


def memory_cap(max_decoded_pixels: int) -> int:
    """The most memory one decode may need: an RGBA image at the pixel limit, plus slack."""
    return max_decoded_pixels * _WIDE + CAP_SLACK


def inspect(data: bytes, fmt: str) -> Estimate:
    """The cost of decoding `data`, a body of format `fmt` (formats.py's name)."""
    _walk.steps = 0
    try:
        return _PARSERS[fmt](memoryview(data))
    except (struct.error, IndexError, ValueError, ZeroDivisionError) as e:
        raise Unreadable(str(e)) from None


def _step() -> None:
    """One more segment, chunk, box or entry walked for this body."""
    _walk.steps += 1
    if _walk.steps > MAX_STEPS:
        raise Unreadable("too many header structures to walk")


def _estimate(width: int, height: int, nbytes: int) -> Estimate:
    if width <= 0 or height <= 0:
        raise Unreadable(f"empty image {width}x{height}")
    return Estimate(width, height, width * height, nbytes + FIXED)


def _largest(parts: list[Estimate]) -> Estimate:
    """Several buffers, decoded one at a time: the largest pixel count, the costliest."""
    if not parts:
        raise Unreadable("no image in the container")
    big = max(parts, key=lambda e: e.pixels)
    return replace(big, nbytes=max(e.nbytes for e in parts))


# --------------------------------------------------------------------------- JPEG

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xDE}
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_LOSSLESS = {0xC3, 0xC7, 0xCB, 0xCF}
# Markers without a length (Pillow's table: RSTn, SOI, EOI, JPG, JPGn).
_STANDALONE = {0xC8, *range(0xD0, 0xDA), *range(0xF0, 0xFE)}
_ROW_BYTES_JPEG = 256  # libjpeg's row groups: up to 16 rows x 3 components x context, a pixel


def _jpeg_bytes(j: JpegLayout, out_pixels: int) -> int:
    mode_bytes = 1 if j.components == 1 else _WIDE
    rows = j.width * _ROW_BYTES_JPEG
    return j.coefficients + out_pixels * mode_bytes + rows + j.body + FIXED


def _jpeg(b: memoryview) -> Estimate:
    """Walk the marker segments as Pillow does (junk between segments skipped) up to the
    first scan: the frame header gives the size and sampling, the scan header whether
    libjpeg will buffer the whole image (a progressive image, or a first scan that does not
    hold every component)."""
    frames: list[tuple[int, int, int, list[tuple[int, int]]]] = []
    raw = b.obj if isinstance(b.obj, bytes) and len(b.obj) == len(b) else bytes(b)
    pos, n = 2, len(b)
    scan_components = 0
    while pos < n:
        _step()
        if b[pos] != 0xFF:
            pos = raw.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        if pos + 1 >= n:
            break
        marker = b[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x00:  # an escaped 0xFF out of place: skipped
            pos += 2
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if not 0xC0 <= marker <= 0xFE:
            raise Unreadable(f"no JPEG marker at {pos}")
        (length,) = struct.unpack_from(">H", b, pos + 2)
        body = b[pos + 4 : pos + 2 + length]
        if len(body) < length - 2 or length < 2:
            raise Unreadable("truncated JPEG header")
        if marker in _SOF:
            height, width, count = struct.unpack_from(">HHB", body, 1)
            sampling = [
                (max(1, body[6 + 3 * i + 1] >> 4), max(1, body[6 + 3 * i + 1] & 15))
                for i in range(count)
            ]
            frames.append((marker, width, height, sampling))
        elif marker == 0xDA:
            scan_components = body[0]
            break
        pos += 2 + length
    if not frames or not scan_components:
        raise Unreadable("no JPEG frame or scan header")
    parts = []
    for marker, width, height, sampling in frames:
        if width <= 0 or height <= 0:
            raise Unreadable(f"JPEG of {width}x{height}")
        lossless = marker in _LOSSLESS
        whole = marker in _PROGRESSIVE or scan_components < len(sampling)
        coefficients = _coefficient_bytes(width, height, sampling) if whole else 0
        if whole and lossless:  # difference buffers: an int per sample
            coefficients = width * height * len(sampling) * 4
        layout = JpegLayout(width, height, len(sampling), coefficients, lossless, len(b))
        parts.append(
            Estimate(width, height, width * height, _jpeg_bytes(layout, width * height), layout)
        )
    return _largest(parts) if len(parts) > 1 else parts[0]


def _coefficient_bytes(width: int, height: int, sampling: list[tuple[int, int]]) -> int:
    """libjpeg's whole-image coefficient arrays (jdcoefct.c): per component, its blocks
    rounded up to its sampling factors, 64 coefficients of 2 bytes each."""
    hmax = max(h for h, _ in sampling)
    vmax = max(v for _, v in sampling)
    total = 0
    for h, v in sampling:
        wb = _ceil_div(_ceil_div(width * h, hmax), 8)
        hb = _ceil_div(_ceil_div(height * v, vmax), 8)
        total += _ceil_div(wb, h) * h * _ceil_div(hb, v) * v * 128
    return total


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# --------------------------------------------------------------------------- PNG

_PNG_MODE_BYTES = {0: 1, 2: _WIDE, 3: 1, 4: _WIDE, 6: _WIDE}  # Pillow: L, RGB, P, LA, RGBA
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png(b: memoryview) -> Estimate:
    """The IHDR chunk: the canvas. Pillow reads chunks up to the first IDAT and the last IHDR
    there wins, so all of them count. APNG frames are regions of the canvas (Pillow refuses
    a frame that is not), and only the default image is decoded."""
    pos, n = 8, len(b)
    parts = []
    while pos + 8 <= n:
        _step()
        length, tag = struct.unpack_from(">I4s", b, pos)
        if tag == b"IHDR":
            parts.append(_ihdr(b, pos + 8))
        elif tag in (b"IDAT", b"fdAT", b"IEND"):
            break
        pos += 12 + length
    return _largest(parts)


def _ihdr(b: memoryview, pos: int) -> Estimate:
    width, height, depth, color = struct.unpack_from(">IIBB", b, pos)
    mode_bytes = _PNG_MODE_BYTES.get(color)
    if mode_bytes is None:
        raise Unreadable(f"PNG colour type {color}")
    if color == 0 and depth == 16:
        mode_bytes = MODE_BYTES["I;16"]
    row = 1 + (width * _PNG_CHANNELS[color] * depth + 7) // 8
    return _estimate(width, height, width * height * mode_bytes + 2 * row)


# --------------------------------------------------------------------------- GIF


def _gif(b: memoryview) -> Estimate:
    """The logical screen and every frame: Pillow grows the canvas to hold a frame that
    overflows it, so the canvas is the screen extended to every frame's extent."""
    screen_w, screen_h, flags = struct.unpack_from("<HHB", b, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    cw, ch = screen_w, screen_h
    first = 0
    frames = 0
    n = len(b)
    steps = 0  # sub-blocks walked
    while pos < n and steps < MAX_GIF_SUB_BLOCKS:
        block = b[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            pos, walked = _skip_sub_blocks(b, pos + 2, MAX_GIF_SUB_BLOCKS - steps)
        elif block == 0x2C:  # image descriptor
            x, y, w, h, f = struct.unpack_from("<HHHHB", b, pos + 1)
            cw, ch = max(cw, x + w), max(ch, y + h)
            if not frames:
                first = w * h
            frames += 1
            pos += 10 + (3 << ((f & 7) + 1) if f & 0x80 else 0)
            # after the LZW minimum code size
            pos, walked = _skip_sub_blocks(b, pos + 1, MAX_GIF_SUB_BLOCKS - steps)
        else:
            break  # junk after the frames: Pillow stops there too
        steps += walked
    if not frames:
        raise Unreadable("GIF without frames")
    # Frame 0 decodes into the canvas (1 byte a pixel), with a frame-sized disposal buffer.
    return _estimate(cw, ch, cw * ch + first)


def _skip_sub_blocks(b: memoryview, pos: int, most: int) -> tuple[int, int]:
    """The position after a chain of sub-blocks, and how many there were (at most `most`:
    then the end of the body)."""
    n = len(b)
    count = 0
    while pos < n:
        if count >= most:
            return n, count
        size = b[pos]
        pos += 1 + size
        count += 1
        if size == 0:
            break
    return pos, count


# --------------------------------------------------------------------------- WebP

# libwebp's animation decoder (Pillow decodes every WebP through it) holds the canvas twice
# (current and previous frame, RGBA), Pillow copies it into a bytes object then into the
# image: 16 bytes a canvas pixel, measured 16-17 with the frame's own decode.
_WEBP_CANVAS_BYTES = 17
_WEBP_FRAME_BYTES = 1


def _webp(b: memoryview) -> Estimate:
    canvas: tuple[int, int] | None = None
    frames: list[tuple[int, int]] = []
    for tag, body in _riff_chunks(b, 12, len(b)):
        if tag == b"VP8X":
            cw = int.from_bytes(body[4:7], "little") + 1
            ch = int.from_bytes(body[7:10], "little") + 1
            canvas = (cw, ch)
        elif tag == b"ANMF":
            fw = int.from_bytes(body[6:9], "little") + 1
            fh = int.from_bytes(body[9:12], "little") + 1
            frames.append((fw, fh))
            frames.extend(
                _webp_bitstream(t, c) for t, c in _riff_chunks(body, 16, len(body)) if _is_vp8(t)
            )
        elif _is_vp8(tag):
            frames.append(_webp_bitstream(tag, body))
    if not frames:
        raise Unreadable("WebP without image data")
    fw, fh = max(frames, key=lambda f: f[0] * f[1])
    cw, ch = canvas or (fw, fh)
    big = max((cw, ch), (fw, fh), key=lambda s: s[0] * s[1])
    nbytes = cw * ch * _WEBP_CANVAS_BYTES + fw * fh * _WEBP_FRAME_BYTES + len(b)
    return _estimate(*big, nbytes)


def _is_vp8(tag: bytes) -> bool:
    return tag in (b"VP8 ", b"VP8L")


def _webp_bitstream(tag: bytes, body: memoryview) -> tuple[int, int]:
    if tag == b"VP8L":
        if body[0] != 0x2F:
            raise Unreadable("bad VP8L signature")
        (bits,) = struct.unpack_from("<I", body, 1)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if bytes(body[3:6]) != b"\x9d\x01\x2a":
        raise Unreadable("bad VP8 start code")
    w, h = struct.unpack_from("<HH", body, 6)
    return w & 0x3FFF, h & 0x3FFF


def _riff_chunks(b: memoryview, pos: int, end: int) -> Iterator[tuple[bytes, memoryview]]:
    end = min(end, len(b))
    while pos + 8 <= end:
        _step()
        tag = bytes(b[pos : pos + 4])
        (size,) = struct.unpack_from("<I", b, pos + 4)
        yield tag, b[pos + 8 : min(end, pos + 8 + size)]
        pos += 8 + size + (size & 1)


# --------------------------------------------------------------------------- BMP, ICO, CUR

_DIB_ENTRY_BYTES = 14  # an icon's DIB: pixels, a copy of the raw data, mask, RGBA conversion


def _bmp(b: memoryview) -> Estimate:
    width, height, bits, compression = _dib_header(b, 14)
    mode_bytes = 1 if bits <= 8 else _WIDE
    nbytes = width * height * mode_bytes + (width * bits + 31) // 8
    if compression in (1, 2):  # RLE: Pillow decodes into a bytearray, then a bytes copy
        nbytes += 2 * width * height
    return _estimate(width, height, nbytes)


def _dib_header(b: memoryview, pos: int) -> tuple[int, int, int, int]:
    """(width, height, bits, compression) as Pillow's BMP reader takes them."""
    (size,) = struct.unpack_from("<I", b, pos)
    if size == 12:
        width, height, _, bits = struct.unpack_from("<HHHH", b, pos + 4)
        return width, height, bits, 0
    if size in (40, 52, 56, 64, 108, 124):
        width, height, _, bits, compression = struct.unpack_from("<IIHHI", b, pos + 4)
        if b[pos + 11] == 0xFF:  # top-down: a negative height
            height = 2**32 - height
        return width, height, bits, compression
    raise Unreadable(f"BMP header of {size} bytes")


def _icon_entry(b: memoryview, offset: int) -> Estimate:
    """An ICO or CUR entry: a PNG file, or a DIB whose height counts the mask too. Read from
    its offset on, as Pillow does, whatever length the directory gives it."""
    blob = b[offset:]
    if bytes(blob[:8]) == b"\x89PNG\r\n\x1a\n":
        return _png(blob)
    width, height, _, _ = _dib_header(blob, 0)
    height //= 2
    return _estimate(width, height, width * height * _DIB_ENTRY_BYTES)


def _icon_directory(b: memoryview) -> Estimate:
    """Every entry of the directory, by its own header (the directory's sizes are at most
    256 and say nothing of the data). The one Pillow decodes must parse; another that does
    not is never decoded."""
    (kind, count) = struct.unpack_from("<HH", b, 2)
    entries = [struct.unpack_from("<BBBBHHII", b, 6 + 16 * i) for i in range(count)]
    if not entries:
        raise Unreadable("icon without entries")
    if kind == 2:  # CurImagePlugin: the first entry, or a later one larger on both sides
        chosen = 0
        for i, e in enumerate(entries):
            if e[0] > entries[chosen][0] and e[1] > entries[chosen][1]:
                chosen = i
    else:  # IcoImagePlugin: the largest declared square, then the lowest colour depth

        def depth(e: tuple[int, ...]) -> int:
            colors, bpp = e[2], e[5]
            return bpp or (colors and math.ceil(math.log(colors, 2))) or 256

        def order(i: int) -> tuple[int, int, int]:
            e = entries[i]
            return (-(e[0] or 256) * (e[1] or 256), depth(e), i)

        chosen = min(range(len(entries)), key=order)
    parts = []
    for i, e in enumerate(entries[:MAX_ICON_ENTRIES]):
        _step()
        try:
            parts.append(_icon_entry(b, e[7]))
        except (struct.error, IndexError, ValueError, Unreadable):
            if i == chosen:
                raise
    if chosen >= MAX_ICON_ENTRIES:
        parts.append(_icon_entry(b, entries[chosen][7]))
    return _largest(parts)


# --------------------------------------------------------------------------- ICNS

_ICNS_LEGACY = {  # fixed sizes, RLE or raw: no header to lie
    b"is32": 16,
    b"s8mk": 16,
    b"il32": 32,
    b"l8mk": 32,
    b"ih32": 48,
    b"h8mk": 48,
    b"it32": 128,
    b"t8mk": 128,
}


def _icns(b: memoryview) -> Estimate:
    """Every entry: PNG and JPEG 2000 ones by their own header. Pillow decodes the entries of
    the largest declared size, whatever size their data really has."""
    (total,) = struct.unpack_from(">I", b, 4)
    pos, end = 8, min(total, len(b))
    parts = []
    while pos + 8 <= end:
        _step()
        tag = bytes(b[pos : pos + 4])
        (size,) = struct.unpack_from(">I", b, pos + 4)
        if size < 8:
            raise Unreadable("bad ICNS entry")
        blob = b[pos + 8 : pos + size]
        if tag in _ICNS_LEGACY:
            side = _ICNS_LEGACY[tag]
            parts.append(_estimate(side, side, side * side * 2 * _WIDE))
        elif bytes(blob[:8]) == b"\x89PNG\r\n\x1a\n":
            parts.append(_png(b[pos + 8 :]))  # Pillow reads it on, past the entry's length
        elif bytes(blob[:4]) == b"\xff\x4f\xff\x51" or bytes(blob[4:8]) == b"jP  ":
            parts.append(_jpeg2000(blob))
        pos += size
    total_bytes = sum(p.nbytes for p in parts)  # an entry and its mask are decoded together
    return replace(_largest(parts), nbytes=total_bytes)


def _jpeg2000(b: memoryview) -> Estimate:
    """A JPEG 2000 codestream (SIZ) or JP2 file (ihdr, then the codestream's SIZ): OpenJPEG
    decodes a tile at a time into int32 samples; Pillow's image, then its RGBA copy."""
    if bytes(b[:4]) == b"\xff\x4f\xff\x51":
        return _j2k_siz(b, 4)
    sizes = []
    code: Estimate | None = None
    for tag, body in _boxes(b, 0, len(b)):
        if tag == b"jp2h":
            for t, c in _boxes(body, 0, len(body)):
                if t == b"ihdr":
                    height, width, comps = struct.unpack_from(">IIH", c, 0)
                    sizes.append(_j2k_cost(width, height, comps, width * height))
        elif tag == b"jp2c" and bytes(body[:4]) == b"\xff\x4f\xff\x51":
            code = _j2k_siz(body, 4)
    if code is not None:
        sizes.append(code)
    return _largest(sizes)


def _j2k_siz(b: memoryview, pos: int) -> Estimate:
    (
        _length,
        _caps,
        xsiz,
        ysiz,
        xo,
        yo,
        xt,
        yt,
        _xto,
        _yto,
        comps,
    ) = struct.unpack_from(">HHIIIIIIIIH", b, pos)
    width, height = xsiz - xo, ysiz - yo
    return _j2k_cost(width, height, comps, min(xt * yt, width * height))


def _j2k_cost(width: int, height: int, comps: int, tile: int) -> Estimate:
    return _estimate(width, height, width * height * 2 * _WIDE + 2 * 4 * comps * tile)


# --------------------------------------------------------------------------- TIFF

_TIFF_TYPES = {1: (1, "B"), 3: (2, "H"), 4: (4, "I"), 16: (8, "Q")}  # BYTE SHORT LONG LONG8
_TIFF_WANTED = {256, 257, 258, 259, 262, 277, 278, 322, 323}


def _tiff(b: memoryview) -> Estimate:
    """Every page (IFD) up to MAX_TIFF_PAGES: its size, and for the first (the one decoded)
    the strip or tile libtiff reads at once."""
    order = "<" if bytes(b[:2]) == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", b, 4)
    seen: set[int] = set()
    parts: list[Estimate] = []
    entries = 0
    while ifd and ifd not in seen and len(parts) < MAX_TIFF_PAGES:
        seen.add(ifd)
        (count,) = struct.unpack_from(order + "H", b, ifd)
        entries += count
        if parts and entries > MAX_TIFF_ENTRIES:
            break
        tags, ifd = _tiff_ifd(b, order, ifd)
        parts.append(_tiff_page(tags, first=not parts, body=len(b)))
    return _largest(parts)


def _tiff_ifd(b: memoryview, order: str, pos: int) -> tuple[dict[int, list[int]], int]:
    (count,) = struct.unpack_from(order + "H", b, pos)
    tags: dict[int, list[int]] = {}
    for i in range(count):
        tag, typ, n = struct.unpack_from(order + "HHI", b, pos + 2 + 12 * i)
        if tag not in _TIFF_WANTED or typ not in _TIFF_TYPES:
            continue
        size, code = _TIFF_TYPES[typ]
        n = min(n, 16)  # BitsPerSample per sample: a few are enough
        at = pos + 2 + 12 * i + 8
        if size * n > 4:
            (at,) = struct.unpack_from(order + "I", b, at)
        tags[tag] = list(struct.unpack_from(f"{order}{n}{code}", b, at))
    (nxt,) = struct.unpack_from(order + "I", b, pos + 2 + 12 * count)
    return tags, nxt


def _tiff_page(tags: dict[int, list[int]], first: bool, body: int) -> Estimate:
    try:
        width, height = tags[256][0], tags[257][0]
    except (KeyError, IndexError):
        raise Unreadable("TIFF page without dimensions") from None
    spp = (tags.get(277) or [1])[0]
    bps = max(tags.get(258) or [1])
    bits = spp * bps
    mode_bytes = 1 if bits <= 8 else 2 if (spp == 1 and bps == 16) else _WIDE
    if 322 in tags and 323 in tags:
        block_w, block_h = tags[322][0], tags[323][0]  # a tile may exceed the page
    else:
        rows = (tags.get(278) or [height])[0]
        block_w, block_h = width, min(max(rows, 1), height)
    block = block_w * block_h
    if not first:  # never decoded: only its size counts
        return _estimate(width, height, 0) if block <= width * height else _block(block_w, block_h)
    raw = _ceil_div(block * bits, 8)
    nbytes = width * height * mode_bytes + raw + body  # Pillow gives libtiff the whole body
    if (tags.get(259) or [1])[0] in (6, 7) or (tags.get(262) or [0])[0] == 6:
        # JPEG or YCbCr: Pillow reads through libtiff's RGBA interface (an RGBA strip), and
        # a JPEG strip may be progressive (its coefficients)
        nbytes += block * (_WIDE + 6)
    page = _estimate(width, height, nbytes)
    return page if block <= width * height else replace(_block(block_w, block_h), nbytes=nbytes)


def _block(width: int, height: int) -> Estimate:
    return _estimate(width, height, width * height)


# --------------------------------------------------------------------------- AVIF

# libavif decodes AV1 into YUV planes (dav1d's picture, then libavif's image), converts to
# RGBA, and Pillow copies that into a bytes object, then into the image: measured 9.3 bytes a
# pixel at 8-bit 4:2:0, 11 at 4:4:4.
_AVIF_RGB_BYTES = 8


@dataclass
class _Av1:
    yuv: float = 1.5  # bytes a pixel of the YUV planes (8-bit 4:2:0 unless av1C says)


def _avif(b: memoryview) -> Estimate:
    """Every size the file declares, the largest: image spatial extents ('ispe'), grid
    outputs, track and sample entry sizes (sequences), and the maximum frame size in each
    AV1 sequence header (av1C's and the one at the start of each AV1 item or first sample):
    the AV1 decoder allocates what its own stream says, not what the container says."""
    sizes: list[tuple[int, int]] = []
    av1 = _Av1()
    items: dict[int, bytes] = {}  # item id -> type
    locations: dict[int, tuple[int, int, int]] = {}  # item id -> (method, offset, length)
    idat = 0
    samples: list[int] = []  # file offsets of the first sample of each track

    def visit(tag: bytes, body: memoryview, start: int) -> None:
        nonlocal idat
        if tag in (b"meta",):
            for t, c, s in _boxes_at(body, 4, start):
                visit(t, c, s)
        elif tag in (b"iprp", b"ipco", b"moov", b"trak", b"mdia", b"minf", b"stbl"):
            for t, c, s in _boxes_at(body, 0, start):
                visit(t, c, s)
        elif tag == b"ispe":
            sizes.append(struct.unpack_from(">II", body, 4))
        elif tag == b"av1C":
            _av1c(body, av1, sizes)
        elif tag == b"iinf":
            _iinf(body, items)
        elif tag == b"iloc":
            _iloc(body, locations)
        elif tag == b"idat":
            idat = start
        elif tag == b"tkhd":
            version = body[0]
            at = 4 + (32 if version == 1 else 20) + 52
            w, h = struct.unpack_from(">II", body, at)
            sizes.append((w >> 16, h >> 16))
        elif tag == b"stsd":
            for t, c, s in _boxes_at(body, 8, start):
                if t == b"av01":
                    sizes.append(struct.unpack_from(">HH", c, 24))
                    for t2, c2, s2 in _boxes_at(c, 78, s):
                        visit(t2, c2, s2)
        elif tag in (b"stco", b"co64"):
            (count,) = struct.unpack_from(">I", body, 4)
            if count:
                fmt = ">I" if tag == b"stco" else ">Q"
                samples.append(struct.unpack_from(fmt, body, 8)[0])

    for tag, body, start in _boxes_at(b, 0, 0):
        visit(tag, body, start)
    for item, (method, offset, length) in locations.items():
        kind = items.get(item)
        at = offset + (idat if method == 1 else 0)
        chunk = b[at : at + length] if length else b[at:]
        if kind == b"av01":
            _obus(chunk, av1, sizes)
        elif kind == b"grid":
            flags = chunk[1]
            fmt = ">II" if flags & 1 else ">HH"
            sizes.append(struct.unpack_from(fmt, chunk, 4))
    for at in samples:
        _obus(b[at : at + (1 << 16)], av1, sizes)
    if not sizes:
        raise Unreadable("AVIF without a size")
    width, height = max(sizes, key=lambda s: s[0] * s[1])
    return _estimate(width, height, int(width * height * (2 * av1.yuv + _AVIF_RGB_BYTES)) + len(b))


def _av1c(body: memoryview, av1: _Av1, sizes: list[tuple[int, int]]) -> None:
    flags = body[2]
    high, twelve, mono = flags & 0x40, flags & 0x20, flags & 0x10
    sub_x, sub_y = flags & 0x08, flags & 0x04
    chroma = 0.0 if mono else 0.25 if (sub_x and sub_y) else 0.5 if sub_x else 1.0
    yuv = (1 + 2 * chroma) * (2 if (high or twelve) else 1)
    av1.yuv = max(av1.yuv, yuv)
    _obus(body[4:], av1, sizes)


def _obus(b: memoryview, av1: _Av1, sizes: list[tuple[int, int]]) -> None:
    """Every AV1 sequence header among the OBUs of `b`: its maximum frame size. Anything
    unparseable is left to the decoder (the container's sizes still count)."""
    pos, n = 0, len(b)
    while pos < n:
        _step()
        header = b[pos]
        kind, extension, has_size = (header >> 3) & 15, header & 4, header & 2
        pos += 2 if extension else 1
        if has_size:
            size, pos = _leb128(b, pos)
        else:
            size = n - pos
        if kind == 1:  # OBU_SEQUENCE_HEADER
            with contextlib.suppress(IndexError, ValueError):
                sizes.append(_sequence_header(b[pos : pos + size]))
        pos += size


def _leb128(b: memoryview, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        byte = b[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise ValueError("bad leb128")


class _BitReader:
    def __init__(self, b: memoryview) -> None:
        self.b = b
        self.pos = 0

    def f(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.b[self.pos >> 3]
            value = (value << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def uvlc(self) -> int:
        zeros = 0
        while not self.f(1):
            zeros += 1
            if zeros >= 32:
                return (1 << 32) - 1
        return self.f(zeros) + (1 << zeros) - 1


def _sequence_header(b: memoryview) -> tuple[int, int]:
    """max_frame_width/height of an AV1 sequence header (AV1 spec 5.5.1)."""
    r = _BitReader(b)
    r.f(3)  # seq_profile
    r.f(1)  # still_picture
    reduced = r.f(1)
    if reduced:
        r.f(5)  # seq_level_idx[0]
    else:
        decoder_model = 0
        buffer_delay_bits = 0
        if r.f(1):  # timing_info_present_flag
            r.f(32)
            r.f(32)
            if r.f(1):  # equal_picture_interval
                r.uvlc()
            decoder_model = r.f(1)
            if decoder_model:
                buffer_delay_bits = r.f(5) + 1
                r.f(32)
                r.f(5)
                r.f(5)
        initial_display_delay = r.f(1)
        for _ in range(r.f(5) + 1):  # operating points
            r.f(12)
            if r.f(5) > 7:
                r.f(1)
            if decoder_model and r.f(1):
                r.f(buffer_delay_bits)
                r.f(buffer_delay_bits)
                r.f(1)
            if initial_display_delay and r.f(1):
                r.f(4)
    width_bits = r.f(4) + 1
    height_bits = r.f(4) + 1
    return r.f(width_bits) + 1, r.f(height_bits) + 1


def _iinf(body: memoryview, items: dict[int, bytes]) -> None:
    version = body[0]
    count_size = 2 if version == 0 else 4
    pos = 4 + count_size
    for tag, c, _ in _boxes_at(body, pos, 0):
        if tag != b"infe":
            continue
        v = c[0]
        if v >= 2:
            if v == 2:
                (item,) = struct.unpack_from(">H", c, 4)
                kind = bytes(c[8:12])
            else:
                (item,) = struct.unpack_from(">I", c, 4)
                kind = bytes(c[10:14])
            items[item] = kind


def _iloc(body: memoryview, out: dict[int, tuple[int, int, int]]) -> None:
    version = body[0]
    sizes = body[4]
    offset_size, length_size = sizes >> 4, sizes & 15
    base_size, index_size = body[5] >> 4, (body[5] & 15 if version in (1, 2) else 0)
    pos = 6
    if version < 2:
        (count,) = struct.unpack_from(">H", body, pos)
        pos += 2
    else:
        (count,) = struct.unpack_from(">I", body, pos)
        pos += 4

    def read(n: int) -> int:
        nonlocal pos
        value = int.from_bytes(body[pos : pos + n], "big") if n else 0
        if len(body[pos : pos + n]) < n:
            raise Unreadable("truncated iloc")
        pos += n
        return value

    for _ in range(count):
        _step()
        item = read(2 if version < 2 else 4)
        method = read(2) & 15 if version in (1, 2) else 0
        read(2)  # data_reference_index
        base = read(base_size)
        extents = read(2)
        for e in range(extents):
            read(index_size)
            offset = read(offset_size)
            length = read(length_size)
            if e == 0:
                out[item] = (method, base + offset, length)


def _boxes(b: memoryview, pos: int, end: int) -> Iterator[tuple[bytes, memoryview]]:
    for tag, body, _ in _boxes_at(b[:end], pos, 0):
        yield tag, body


def _boxes_at(b: memoryview, pos: int, base: int) -> Iterator[tuple[bytes, memoryview, int]]:
    """ISO-BMFF boxes of `b` from `pos`: (type, payload, payload's offset in the file, where
    `b` starts at `base`)."""
    n = len(b)
    while pos + 8 <= n:
        _step()
        size, tag = struct.unpack_from(">I4s", b, pos)
        head = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", b, pos + 8)
            head = 16
        elif size == 0:
            size = n - pos
        if size < head:
            raise Unreadable("bad box size")
        yield tag, b[pos + head : pos + size], base + pos + head
        pos += size


_PARSERS: dict[str, Callable[[memoryview], Estimate]] = {
    "jpeg": _jpeg,
    "png": _png,
    "gif": _gif,
    "webp": _webp,
    "bmp": _bmp,
    "ico": _icon_directory,
    "cur": _icon_directory,
    "icns": _icns,
    "tiff": _tiff,
    "avif": _avif,
}
