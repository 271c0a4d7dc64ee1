"""Small files that declare huge images, in every format the fetcher can be allowed to decode,
and a way to measure what decoding one really costs (`measure`: peak RSS of a fresh process).

Every builder writes the bytes directly (no encoder ever holds the huge image), so a bomb
takes microseconds to make whatever size it declares. The pixel data is zeros, mostly
truncated: the decoders these files aim at allocate their buffers from the header, before
reading the data. The same builders make the heavy-but-legal images (a size within the limit,
complete data), only larger on the wire.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image


def _chunk(tag: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(tag + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)


# --------------------------------------------------------------------------- PNG, APNG

_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def _zeros_deflate(row: int, height: int) -> bytes:
    """zlib stream of `height` rows of `row` zero bytes, built without compressing them all:
    after a full flush a deflate stream carries no history, so compressing the same block of
    rows again yields the same bytes. The Adler-32 of zeros is a = 1, b = length mod 65521."""
    rows_per_block = max(1, (1 << 20) // row)
    blocks, rest = divmod(height, rows_per_block)
    comp = zlib.compressobj(9)
    parts = [comp.compress(b"")]
    if blocks:
        block = bytes(row * rows_per_block)
        parts.append(comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH))
        if blocks > 1:
            again = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
            parts.append(again * (blocks - 1))
    tail = comp.compress(bytes(row * rest)) + comp.flush(zlib.Z_FINISH)
    total = row * height
    adler = ((total % 65521) << 16) | 1
    parts.append(tail[:-4] + struct.pack(">I", adler))
    return b"".join(parts)


def png(
    width: int,
    height: int,
    color_type: int = 0,
    bit_depth: int = 8,
    *,
    transparent: bool = False,
    data: bool = True,
) -> bytes:
    """A PNG of zero samples (black; with colour type 3 palette entry 0, transparent if asked).
    `data=False` leaves the IDAT out: a header-only bomb."""
    channels = _PNG_CHANNELS[color_type]
    row = 1 + (width * channels * bit_depth + 7) // 8
    chunks = [
        _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))
    ]
    if color_type == 3:
        chunks.append(_chunk(b"PLTE", bytes([0, 0, 0, 255, 255, 255])))
        if transparent:
            chunks.append(_chunk(b"tRNS", b"\x00"))
    if data:
        chunks.append(_chunk(b"IDAT", _zeros_deflate(row, height)))
    else:
        chunks.append(_chunk(b"IDAT", zlib.compress(bytes(row))))
    chunks.append(_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def apng(canvas: tuple[int, int], frames: Sequence[tuple[int, int, int, int]]) -> bytes:
    """An animated PNG (8-bit greyscale): `frames` are (x, y, width, height) regions of the
    canvas, the first one in the IDAT (the default image is the first frame)."""
    width, height = canvas
    out = [_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))]
    out.append(_chunk(b"acTL", struct.pack(">II", len(frames), 0)))
    seq = 0
    for i, (x, y, w, h) in enumerate(frames):
        fctl = struct.pack(">IIIIIHHBB", seq, w, h, x, y, 1, 10, 0, 0)
        out.append(_chunk(b"fcTL", fctl))
        seq += 1
        data = zlib.compress(bytes(1 + w))  # one row: a truncated frame
        if i == 0:
            out.append(_chunk(b"IDAT", data))
        else:
            out.append(_chunk(b"fdAT", struct.pack(">I", seq) + data))
            seq += 1
    out.append(_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(out)


# --------------------------------------------------------------------------- JPEG


def _segment(marker: int, body: bytes) -> bytes:
    return struct.pack(">HH", marker, len(body) + 2) + body


_DQT = _segment(0xFFDB, b"\x00" + bytes([1] * 64))
# DC table 0 and AC table 0, each with one symbol (0: "no difference", end of block) coded
# on one bit: a stream of zero bits is a valid all-zero scan.
_DHT = _segment(0xFFC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00") + _segment(
    0xFFC4, b"\x10" + bytes([1] + [0] * 15) + b"\x00"
)


def jpeg(
    width: int,
    height: int,
    *,
    progressive: bool = False,
    sampling: Sequence[tuple[int, int]] = ((2, 2), (1, 1), (1, 1)),
    interleaved: bool = True,
    data: bool = True,
) -> bytes:
    """A JPEG of flat grey: one DC scan of zero differences (one bit per block), coded by hand
    so no encoder holds the image. `progressive` marks it SOF2 (a DC-only progressive image,
    valid); `interleaved=False` codes each component in its own scan (still baseline, and
    still a whole-image coefficient buffer in libjpeg); `data=False` ends after the first
    scan header (libjpeg pads the missing data: a tiny file, a full-size decode)."""
    comps = len(sampling)
    sof = struct.pack(">BHHB", 8, height, width, comps) + b"".join(
        struct.pack(">BBB", i + 1, (h << 4) | v, 0) for i, (h, v) in enumerate(sampling)
    )
    hmax = max(h for h, _ in sampling)
    vmax = max(v for _, v in sampling)
    mcus = -(-width // (8 * hmax)) * -(-height // (8 * vmax))
    out = [b"\xff\xd8", _DQT, _segment(0xFFC2 if progressive else 0xFFC0, sof), _DHT]
    scans = [list(range(comps))] if interleaved else [[c] for c in range(comps)]
    for scan in scans:
        sos = struct.pack(">B", len(scan)) + b"".join(struct.pack(">BB", c + 1, 0) for c in scan)
        sos += b"\x00\x00\x00" if progressive else b"\x00\x3f\x00"  # Ss Se AhAl
        out.append(_segment(0xFFDA, sos))
        if not data:
            out.append(b"\x00" * 16)
            break
        if len(scan) == 1:  # a non-interleaved scan codes each block of the component
            h, v = sampling[scan[0]]
            blocks = -(-width * h // (8 * hmax)) * -(-height * v // (8 * vmax))
        else:
            blocks = mcus * sum(h * v for h, v in sampling)
        # Baseline: DC bit and end-of-block bit per block; progressive DC scan: one bit.
        bits = blocks * (1 if progressive else 2)
        out.append(bytes(-(-bits // 8)))
    out.append(b"\xff\xd9")
    return b"".join(out)


# --------------------------------------------------------------------------- GIF


def _lzw_zeros(pixels: int) -> bytes:
    """GIF LZW data (minimum code size 2) for `pixels` zero indices, as sub-blocks.

    On a run of zeros an LZW encoder emits runs of length 1, 2, 3... (code 0, then the
    table's entries 6, 7, 8...: entry c is c - 4 zeros), so no table is needed: about 50,000
    codes for 100 Mpx. A clear code starts over before the table fills.
    """
    clear, end = 4, 5
    acc = nbits = 0
    out = bytearray()

    def emit(code: int, table: int) -> None:
        nonlocal acc, nbits
        # The decoder adds its entry one code later than the encoder: its table is one
        # smaller, and its code width follows its own table's size.
        acc |= code << nbits
        nbits += min(12, max(3, (table - 1).bit_length()))
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8

    emit(clear, 7)
    table, longest, left = 6, 0, pixels  # next free code, longest run in the table
    while left:
        if table >= 4095:
            emit(clear, table)
            table, longest = 6, 0
        run = min(left, max(1, longest))
        emit(0 if run == 1 else run + 4, table)
        left -= run
        table += 1  # the encoder's new entry: this run and one more zero
        if run == longest or longest == 0:
            longest = run + 1
    emit(end, table)
    if nbits:
        out.append(acc & 0xFF)
    blocks = b"".join(
        bytes([len(out[i : i + 255])]) + out[i : i + 255] for i in range(0, len(out), 255)
    )
    return b"\x02" + blocks + b"\x00"


def gif(
    screen: tuple[int, int], frames: Sequence[tuple[int, int, int, int]], *, data: bool = False
) -> bytes:
    """A GIF (global palette of 2 colours) whose frames are (x, y, width, height) regions of
    zero pixels; `data=False` gives each frame an empty LZW stream (a truncated frame)."""
    out = [b"GIF89a", struct.pack("<HHBBB", screen[0], screen[1], 0x80, 0, 0), bytes(6)]
    if len(frames) > 1:
        out.append(b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00")
    for x, y, w, h in frames:
        out.append(b"\x21\xf9\x04\x00\x0a\x00\x00\x00")  # graphic control: 100 ms
        out.append(b"\x2c" + struct.pack("<HHHHB", x, y, w, h, 0))
        out.append(_lzw_zeros(w * h) if data else b"\x02\x01\x2c\x00")  # clear, end
    out.append(b"\x3b")
    return b"".join(out)


# --------------------------------------------------------------------------- WebP


class _Bits:
    """Little-endian bit writer (VP8L's order)."""

    def __init__(self) -> None:
        self.value = 0
        self.n = 0

    def put(self, value: int, bits: int) -> None:
        self.value |= (value & ((1 << bits) - 1)) << self.n
        self.n += bits

    def bytes(self) -> bytes:
        return self.value.to_bytes((self.n + 7) // 8, "little")


def _riff(chunks: Iterable[bytes]) -> bytes:
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _webp_chunk(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) % 2 else b"")


def vp8l(width: int, height: int) -> bytes:
    """A lossless WebP bitstream of `width` x `height` transparent black pixels in a few
    bytes: every prefix code has a single symbol, so each pixel costs zero bits."""
    bits = _Bits()
    bits.put(0x2F, 8)
    bits.put(width - 1, 14)
    bits.put(height - 1, 14)
    bits.put(1, 1)  # alpha used
    bits.put(0, 3)  # version
    bits.put(0, 1)  # no transform
    bits.put(0, 1)  # no colour cache
    bits.put(0, 1)  # no meta prefix codes
    for _ in range(5):  # green, red, blue, alpha, distance: simple code, one 1-bit symbol 0
        bits.put(1, 1)
        bits.put(0, 1)
        bits.put(0, 1)
        bits.put(0, 1)
    return bits.bytes()


def webp(width: int, height: int) -> bytes:
    """A still lossless WebP (no VP8X): the bitstream declares the size."""
    return _riff([_webp_chunk(b"VP8L", vp8l(width, height))])


def webp_animated(canvas: tuple[int, int], frames: Sequence[tuple[int, int, int, int]]) -> bytes:
    """An animated WebP: VP8X canvas, ANMF frames of (x, y, width, height) (x, y even)."""
    cw, ch = canvas
    vp8x = (
        struct.pack("<B3x", 0x12) + (cw - 1).to_bytes(3, "little") + (ch - 1).to_bytes(3, "little")
    )
    chunks = [_webp_chunk(b"VP8X", vp8x), _webp_chunk(b"ANIM", struct.pack("<IH", 0, 0))]
    for x, y, w, h in frames:
        head = (
            (x // 2).to_bytes(3, "little")
            + (y // 2).to_bytes(3, "little")
            + (w - 1).to_bytes(3, "little")
            + (h - 1).to_bytes(3, "little")
            + (100).to_bytes(3, "little")
            + b"\x00"
        )
        chunks.append(_webp_chunk(b"ANMF", head + _webp_chunk(b"VP8L", vp8l(w, h))))
    return _riff(chunks)


# --------------------------------------------------------------------------- BMP, ICO, CUR


def dib(width: int, height: int, bits: int = 32, *, pixels: bool = False) -> bytes:
    """A BITMAPINFOHEADER (40 bytes) and, if asked, zero pixels (and palette for <= 8 bits)."""
    head = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, 0, 0, 0, 0, 0)
    if bits <= 8:
        head += bytes(4 << bits)
    if pixels:
        head += bytes(((width * bits + 31) // 32 * 4) * abs(height))
    return head


def bmp(width: int, height: int, bits: int = 24, *, pixels: bool = True) -> bytes:
    body = dib(width, height, bits, pixels=pixels)
    offset = 14 + 40 + (4 << bits if bits <= 8 else 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(body), 0, 0, offset) + body


def ico(entries: Sequence[bytes], *, kind: int = 1, declared: tuple[int, int] = (32, 32)) -> bytes:
    """An icon (kind 1) or cursor (kind 2) directory whose entries (PNG files or DIBs with
    their doubled height) all declare `declared` (at most 256: 0 means 256)."""
    head = struct.pack("<HHH", 0, kind, len(entries))
    offset = 6 + 16 * len(entries)
    dirs, blobs = [], []
    for blob in entries:
        w, h = (d % 256 for d in declared)
        dirs.append(struct.pack("<BBBBHHII", w, h, 0, 0, 1, 32, len(blob), offset))
        blobs.append(blob)
        offset += len(blob)
    return head + b"".join(dirs) + b"".join(blobs)


# --------------------------------------------------------------------------- ICNS


def icns(entries: Sequence[tuple[bytes, bytes]]) -> bytes:
    """An Apple icon of (type, data) entries: ic07..ic14 hold a PNG or JPEG 2000 file."""
    body = b"".join(t + struct.pack(">I", 8 + len(d)) + d for t, d in entries)
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def j2k(width: int, height: int, components: int = 3) -> bytes:
    """A JPEG 2000 codestream header (SOC, SIZ, COD, QCD) then end of codestream: the size it
    declares is all a decoder needs to allocate."""
    siz = struct.pack(">HIIIIIIIIH", 0, width, height, 0, 0, width, height, 0, 0, components)
    siz += b"".join(b"\x07\x01\x01" for _ in range(components))
    cod = struct.pack(">BBHBBBBBB", 0, 0, 1, 0, 5, 4, 4, 0, 0)
    qcd = struct.pack(">B", 0x40) + bytes([0x40] * 16)
    return (
        b"\xff\x4f"
        + struct.pack(">HH", 0xFF51, len(siz) + 2)
        + siz
        + struct.pack(">HH", 0xFF52, len(cod) + 2)
        + cod
        + struct.pack(">HH", 0xFF5C, len(qcd) + 2)
        + qcd
        + b"\xff\xd9"
    )


# --------------------------------------------------------------------------- TIFF


def tiff(
    pages: Sequence[tuple[int, int]],
    *,
    compression: int = 8,
    tile: int | None = None,
    data_full: bool = True,
) -> bytes:
    """A little-endian TIFF of 8-bit greyscale pages (width, height), deflate-compressed zeros
    in one strip each (or one tile of `tile` x `tile` on the first page), chained IFDs."""
    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    prev_link = 4
    for n, (w, h) in enumerate(pages):
        tiled = tile is not None and n == 0
        rows, row = (tile, tile) if tiled and tile is not None else (h, w)
        data = _zeros_deflate(row, rows) if data_full else zlib.compress(b"\x00")
        data_off = len(out)
        out += data
        if len(out) % 2:
            out += b"\x00"
        tags = [
            (256, 4, w),
            (257, 4, h),
            (258, 3, 8),
            (259, 3, compression),
            (262, 3, 1),
            (277, 3, 1),
        ]
        if tiled:
            assert tile is not None
            tags += [(322, 4, tile), (323, 4, tile), (324, 4, data_off), (325, 4, len(data))]
        else:
            tags += [(273, 4, data_off), (278, 4, h), (279, 4, len(data))]
        tags.sort()
        ifd_off = len(out)
        struct.pack_into("<I", out, prev_link, ifd_off)
        out += struct.pack("<H", len(tags))
        for tag, typ, value in tags:
            packed = (
                struct.pack("<H", value) + b"\x00\x00" if typ == 3 else struct.pack("<I", value)
            )
            out += struct.pack("<HHI", tag, typ, 1) + packed
        prev_link = len(out)
        out += b"\x00\x00\x00\x00"
    return bytes(out)


# --------------------------------------------------------------------------- AVIF


def avif_declaring(width: int, height: int) -> bytes:
    """A small real AVIF whose image spatial extents ('ispe') are rewritten to `width` x
    `height`: what a parser reads before the AV1 decoder says otherwise."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 200)).save(buf, "AVIF", quality=30, speed=10)
    data = bytearray(buf.getvalue())
    at = data.find(b"ispe")
    assert at > 0
    while at > 0:
        struct.pack_into(">II", data, at + 8, width, height)
        at = data.find(b"ispe", at + 4)
    return bytes(data)


def _box(tag: bytes, body: bytes, full: int | None = None) -> bytes:
    if full is not None:
        body = struct.pack(">I", full) + body
    return struct.pack(">I", 8 + len(body)) + tag + body


def av1_sequence_header(width: int, height: int) -> bytes:
    """An AV1 sequence header OBU (reduced still-picture header) whose maximum frame size is
    `width` x `height`: what the AV1 decoder allocates frames by."""
    bits = []
    for value, n in ((0, 3), (1, 1), (1, 1), (31, 5), (15, 4), (15, 4)):
        bits += [(value >> (n - 1 - i)) & 1 for i in range(n)]
    for value in (width - 1, height - 1):
        bits += [(value >> (15 - i)) & 1 for i in range(16)]
    bits += [0] * (-len(bits) % 8)
    payload = bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))
    return bytes([(1 << 3) | 2, len(payload)]) + payload  # OBU_SEQUENCE_HEADER, sized


def avif_synthetic(ispe: tuple[int, int], stream: tuple[int, int]) -> bytes:
    """An AVIF container whose primary item declares `ispe` while its AV1 data (in av1C and
    in the item itself) starts with a sequence header of maximum frame size `stream`."""
    seq = av1_sequence_header(*stream)
    av1c = _box(b"av1C", bytes([0x81, 0x1F, 0x0C, 0x00]) + seq)
    ipco = _box(b"ipco", _box(b"ispe", struct.pack(">II", *ispe), 0) + av1c)
    ipma = _box(b"ipma", struct.pack(">IHB", 1, 1, 2) + bytes([0x81, 0x82]), 0)
    infe = _box(b"infe", struct.pack(">HH4s", 1, 0, b"av01") + b"\x00", 2 << 24)
    iinf = _box(b"iinf", struct.pack(">H", 1) + infe, 0)
    hdlr = _box(b"hdlr", bytes(4) + b"pict" + bytes(12) + b"\x00", 0)
    pitm = _box(b"pitm", struct.pack(">H", 1), 0)
    ftyp = _box(b"ftyp", b"avif" + bytes(4) + b"avifmif1miaf")

    def meta(offset: int) -> bytes:
        iloc = _box(
            b"iloc", bytes([0x44, 0x00]) + struct.pack(">HHHHII", 1, 1, 0, 1, offset, len(seq)), 0
        )
        return _box(b"meta", hdlr + pitm + iloc + iinf + _box(b"iprp", ipco + ipma), 0)

    head = len(ftyp) + len(meta(0)) + 8
    return ftyp + meta(head) + _box(b"mdat", seq)


# --------------------------------------------------------------------------- measuring

_CHILD = r"""
import contextlib, json, os, resource, sys
from i2d_fetcher.imaging.pipeline import ImageRejected, process_image
from i2d_fetcher.options import FetchOptions

class Recorder:  # a decode gate that records what process_image reserves
    reserved = None

    @contextlib.contextmanager
    def hold(self, nbytes):
        self.reserved = nbytes
        yield

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)

for line in sys.stdin:
    job = json.loads(line)
    data = open(job["path"], "rb").read()
    opts = FetchOptions(**job["options"])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a fresh copy of this process per image: its peak is this image's alone
        os.close(r)
        # A regression must fail the test, not take the machine: a few GB of address space
        # over what the process already maps.
        extra = job["address_space_mb"] << 20
        limit = status("VmSize") * 1024 + extra
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        before = status("VmRSS")
        gate = Recorder()
        try:
            out = process_image(data, opts, gate=gate)
            result = {"ok": True, "size": [out.width, out.height]}
        except ImageRejected as e:
            result = {"ok": False, "message": e.message}
        except MemoryError:
            result = {"ok": False, "message": "MemoryError"}
        result["peak_mb"] = (status("VmHWM") - before) / 1024
        if gate.reserved is not None:
            result["reserved_mb"] = gate.reserved / (1 << 20)
        os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    answer = b""
    while chunk := os.read(r, 65536):
        answer += chunk
    os.close(r)
    os.waitpid(pid, 0)
    sys.stdout.write((answer.decode() or '{"ok": false, "message": "child died"}') + "\n")
    sys.stdout.flush()
"""


@dataclass(frozen=True)
class Measured:
    ok: bool
    message: str | None
    size: tuple[int, int] | None
    peak_mb: float  # peak RSS over the process's RSS before process_image, in MiB
    reserved_mb: float | None  # what process_image reserved in its decode gate, in MiB


def measure(
    files: Sequence[Path],
    options: dict[str, Any] | None = None,
    address_space_mb: int = 3072,
    processes: int = 1,
) -> list[Measured]:
    """process_image on each file, each in a fresh fork of a process that has imported the
    fetcher (so only the decode's own memory shows); its peak RSS over what it started with.
    The files are shared out over `processes` such processes running at once."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    shares = [list(range(i, len(files), processes)) for i in range(processes)]
    running = []
    for share in shares:
        if not share:
            continue
        jobs = "".join(
            json.dumps(
                {
                    "path": str(files[i]),
                    "options": options or {},
                    "address_space_mb": address_space_mb,
                }
            )
            + "\n"
            for i in share
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdin is not None
        proc.stdin.write(jobs)
        proc.stdin.close()
        running.append((share, proc))
    results: dict[int, Measured] = {}
    for share, proc in running:
        assert proc.stdout is not None
        lines = proc.stdout.read().splitlines()
        assert proc.wait(timeout=300) == 0
        for i, line in zip(share, lines, strict=True):
            r = json.loads(line)
            size = tuple(r["size"]) if r.get("size") else None
            peak = r.get("peak_mb", float("inf"))  # none: the child died
            results[i] = Measured(r["ok"], r.get("message"), size, peak, r.get("reserved_mb"))  # type: ignore[arg-type]
    return [results[i] for i in range(len(files))]
