"""The IPTC "data mining" opt-out an image carries in its own XMP metadata.

IPTC Photo Metadata (2023.1) names the PLUS property `plus:DataMining`
(namespace `http://ns.useplus.org/ldf/xmp/1.0/`) for a rights holder's word on data mining,
with values from the PLUS vocabulary `http://ns.useplus.org/ldf/vocab/`. These refuse an
image (`refusal` returns the value, the sample fails with
`disallowed by IPTC data mining: <value>`):

- DMI-PROHIBITED: prohibited;
- DMI-PROHIBITED-AIMLTRAINING: prohibited for AI/ML training;
- DMI-PROHIBITED-GENAIMLTRAINING: prohibited for generative AI/ML training;
- DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING: prohibited except for search engine indexing.

These do not: DMI-UNSPECIFIED, DMI-ALLOWED, and the three DMI-PROHIBITED-SEE... values
(SEECONSTRAINT, SEEEMBEDDEDRIGHTSEXPR, SEELINKEDRIGHTSEXPR), which point at constraints stated
elsewhere (plus:OtherConstraints, an embedded or linked rights expression) that a machine
cannot read reliably: they are not refused, so as not to refuse images on a guess.

The check runs on every downloaded image, before decoding, so it looks only where XMP lives:
JPEG APP1 segments (`http://ns.adobe.com/xap/1.0/`) before the scan data, PNG `iTXt` chunks
named `XML:com.adobe.xmp` before the image data, WebP `XMP ` chunks (when the VP8X header
says there is one), the TIFF tag 700 of the first IFD, and for GIF and AVIF an `<x:xmpmeta`
packet within the first `SCAN_BYTES` (GIF's "XMP DataXMP" extension and AVIF's XMP item hold
the packet as plain text; one written after the image data is not seen). BMP and ICO carry
none. An image without XMP costs a walk over its few headers (a few microseconds) or, for
GIF and AVIF, one search of 64 KiB (a few tens).
"""

from __future__ import annotations

import re
import zlib
from typing import Literal

SCAN_BYTES = 64 * 1024  # of a GIF or an AVIF, searched for an XMP packet
MAX_PACKET_BYTES = 1 << 20  # of an XMP packet read (a compressed PNG one is inflated to this)
JPEG_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
PNG_XMP_KEYWORD = b"XML:com.adobe.xmp"
PROHIBITING = frozenset(
    {
        "DMI-PROHIBITED",
        "DMI-PROHIBITED-AIMLTRAINING",
        "DMI-PROHIBITED-GENAIMLTRAINING",
        "DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING",
    }
)
MESSAGE = "disallowed by IPTC data mining: {}"

# plus:DataMining as an attribute, an element's text, or an rdf:resource.
_DATA_MINING = re.compile(
    rb"""[\w.-]+:DataMining\b(?:
        \s*=\s*(?P<q>["'])(?P<attr>[^"'<>]{0,512})(?P=q)
      | (?P<tag>[^<>]{0,512}?)(?:/>|>(?P<text>[^<]{0,512})<)
    )""",
    re.VERBOSE,
)
_RESOURCE = re.compile(rb"""rdf:resource\s*=\s*["']([^"'<>]{0,512})["']""")


def refusal(data: bytes, fmt: str) -> str | None:
    """The data-mining value of the image's XMP that prohibits using it for AI/ML, or None."""
    for packet in packets(data, fmt):
        if b"DataMining" not in packet:
            continue
        value = data_mining(packet)
        if value is not None and value in PROHIBITING:
            return value
    return None


def data_mining(packet: bytes) -> str | None:
    """The vocabulary code of a packet's plus:DataMining (`DMI-...`, upper case), or None."""
    for m in _DATA_MINING.finditer(packet):
        raw = m.group("attr")
        if raw is None and m.group("tag") is not None:
            resource = _RESOURCE.search(m.group("tag"))
            raw = resource.group(1) if resource else m.group("text")
        if raw is None:
            continue
        value = raw.decode("utf-8", "replace").strip().rstrip("/")
        code = value.rsplit("/", 1)[-1].strip().upper()
        if code.startswith("DMI-"):
            return code
    return None


def packets(data: bytes, fmt: str) -> list[bytes]:
    """The XMP packets of an image of format `fmt` (formats.sniff's name)."""
    if fmt == "jpeg":
        return _jpeg(data)
    if fmt == "png":
        return _png(data)
    if fmt == "webp":
        return _webp(data)
    if fmt == "tiff":
        return _tiff(data)
    if fmt in ("gif", "avif"):
        return _scan(data)
    return []


def _jpeg(data: bytes) -> list[bytes]:
    out = []
    pos = 2
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # scan data, or the end: no more metadata
            break
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2:
            break
        if marker == 0xE1 and data.startswith(JPEG_XMP, pos + 4):
            start = pos + 4 + len(JPEG_XMP)
            out.append(data[start : min(pos + 2 + length, start + MAX_PACKET_BYTES)])
        pos += 2 + length
    return out


def _png(data: bytes) -> list[bytes]:
    out = []
    pos = 8
    n = len(data)
    while pos + 8 <= n:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind in (b"IDAT", b"IEND"):
            break
        start = pos + 8
        if kind == b"iTXt" and data.startswith(PNG_XMP_KEYWORD + b"\x00", start):
            chunk = data[start : min(start + length, n)]
            packet = _itxt_text(chunk[len(PNG_XMP_KEYWORD) + 1 :])
            if packet is not None:
                out.append(packet)
        pos = start + length + 4  # and the CRC
    return out


def _itxt_text(rest: bytes) -> bytes | None:
    """An iTXt chunk's text, after its keyword: compression flag and method, language and
    translated keyword (each NUL-terminated), then the text (zlib when flagged)."""
    if len(rest) < 2:
        return None
    compressed = rest[0] == 1
    lang_end = rest.find(b"\x00", 2)
    if lang_end < 0:
        return None
    translated_end = rest.find(b"\x00", lang_end + 1)
    if translated_end < 0:
        return None
    text = rest[translated_end + 1 :]
    if not compressed:
        return text[:MAX_PACKET_BYTES]
    try:
        return zlib.decompressobj().decompress(text, MAX_PACKET_BYTES)
    except zlib.error:
        return None


def _webp(data: bytes) -> list[bytes]:
    # RIFF header (12 bytes), then chunks; XMP only in the extended format, flagged in VP8X.
    if data[12:16] != b"VP8X" or len(data) < 21 or not data[20] & 0x04:
        return []
    out = []
    pos = 12
    n = len(data)
    while pos + 8 <= n:
        kind = data[pos : pos + 4]
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        start = pos + 8
        if kind == b"XMP ":
            out.append(data[start : min(start + length, start + MAX_PACKET_BYTES)])
        pos = start + length + (length & 1)
    return out


def _tiff(data: bytes) -> list[bytes]:
    order: Literal["little", "big"] = "little" if data[:2] == b"II" else "big"
    if len(data) < 8:
        return []
    ifd = int.from_bytes(data[4:8], order)
    if ifd < 8 or ifd + 2 > len(data):
        return []
    count = int.from_bytes(data[ifd : ifd + 2], order)
    for i in range(min(count, 4096)):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(data):
            break
        if int.from_bytes(data[entry : entry + 2], order) != 700:  # XMP
            continue
        size = int.from_bytes(data[entry + 4 : entry + 8], order)  # BYTE or UNDEFINED
        if size <= 4:
            return [data[entry + 8 : entry + 8 + size]]
        offset = int.from_bytes(data[entry + 8 : entry + 12], order)
        return [data[offset : offset + min(size, MAX_PACKET_BYTES)]]
    return []


def _scan(data: bytes) -> list[bytes]:
    start = data.find(b"<x:xmpmeta", 0, SCAN_BYTES)
    if start < 0:
        return []
    end = data.find(b"</x:xmpmeta", start, start + MAX_PACKET_BYTES)
    return [data[start : end if end >= 0 else start + MAX_PACKET_BYTES]]
