"""Which image format a body is, from its first bytes (magic numbers), before any decoder runs.

A downloaded body is untrusted: Pillow alone would try every plugin it has on it (some parse
exotic formats, EPS even hands the bytes to Ghostscript). Sniffing first means a body reaches
exactly one decoder, the one for the format it declares, and only when that format is allowed
(`allowed_image_formats`); anything else fails with a clear reason and costs no decoding.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ImageFormat:
    name: str  # the option's spelling: jpeg, png, ...
    pillow: str  # Pillow's format id, the only plugin allowed to open the body
    ext: str  # member suffix when the original bytes are stored as they are
    mime: str


FORMATS: dict[str, ImageFormat] = {
    f.name: f
    for f in (
        ImageFormat("jpeg", "JPEG", "jpg", "image/jpeg"),  # MPO (camera) files are JPEGs too
        ImageFormat("png", "PNG", "png", "image/png"),
        ImageFormat("webp", "WEBP", "webp", "image/webp"),
        ImageFormat("gif", "GIF", "gif", "image/gif"),
        ImageFormat("bmp", "BMP", "bmp", "image/bmp"),
        ImageFormat("tiff", "TIFF", "tiff", "image/tiff"),
        ImageFormat("avif", "AVIF", "avif", "image/avif"),
        ImageFormat("ico", "ICO", "ico", "image/x-icon"),
        # Not allowed by default; a user may allow them.
        ImageFormat("cur", "CUR", "cur", "image/x-win-bitmap"),
        ImageFormat("icns", "ICNS", "icns", "image/icns"),
    )
}
ALIASES = {"jpg": "jpeg", "tif": "tiff"}
# encode_format (jpg, png, webp) -> the format whose bytes skip_reencode may keep as they are
ENCODED_AS = {"jpg": "jpeg", "png": "png", "webp": "webp"}

_AVIF_BRANDS = (b"avif", b"avis")


def sniff(head: bytes) -> str | None:
    """The format named by the first bytes of a body, or None for anything else (HTML, an
    empty body, a format not listed in FORMATS)."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[4:8] == b"ftyp" and any(b in head[8:32] for b in _AVIF_BRANDS):
        return "avif"  # ISO-BMFF: the major brand, or a compatible one, says AVIF
    if head[:4] == b"\x00\x00\x01\x00":
        return "ico"
    if head[:4] == b"\x00\x00\x02\x00":
        return "cur"
    if head[:4] == b"icns":
        return "icns"
    return None


def normalize(name: str) -> str:
    """The canonical spelling of a format name users type (`JPG` -> `jpeg`)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in FORMATS:
        raise ValueError(f"unknown image format {name!r}; known: {', '.join(FORMATS)}")
    return key
