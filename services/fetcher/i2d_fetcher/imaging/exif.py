"""EXIF tags as img2dataset keeps them: a JSON string in exifread's key style.

Read only after the decompression-bomb guard: PNG may keep its EXIF after the pixels, and
reading it then means decoding them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from PIL import ExifTags, Image, TiffImagePlugin

_IFDS = (
    (ExifTags.IFD.Exif, "EXIF", ExifTags.TAGS),
    (ExifTags.IFD.GPSInfo, "GPS", ExifTags.GPSTAGS),
    (ExifTags.IFD.Interop, "Interoperability", ExifTags.TAGS),
)
_POINTERS = {int(ifd) for ifd, _, _ in _IFDS}
_SKIPPED = {0x927C, 0x9286}  # MakerNote and UserComment: vendor binary, often kilobytes
_MAX_VALUE_CHARS = 1024


def extract_exif(img: Image.Image) -> str | None:
    """The EXIF tags as img2dataset's JSON string: {"Image Make": "...", "EXIF ...": ...}
    (exifread's key style: IFD name, space, tag name). None when the block is unreadable."""
    try:
        exif = img.getexif()
        tags: dict[str, str] = {}
        _collect(tags, "Image", exif.items(), ExifTags.TAGS)
        for ifd, prefix, names in _IFDS:
            if int(ifd) in exif:
                _collect(tags, prefix, exif.get_ifd(ifd).items(), names)
        return json.dumps(tags)
    except Exception:
        return None


def _collect(out: dict[str, str], prefix: str, items: Any, names: dict[int, str]) -> None:
    for tag, value in items:
        if tag in _POINTERS or tag in _SKIPPED:
            continue
        text = _exif_text(value)
        if text is not None and text != "":
            out[f"{prefix} {names.get(tag, f'Tag 0x{tag:04X}')}"] = text[:_MAX_VALUE_CHARS]


def _exif_text(value: Any) -> str | None:
    if isinstance(value, bytes):
        text = value.rstrip(b"\x00").decode("ascii", errors="replace")
        return text.strip() if text.isprintable() else None
    if isinstance(value, TiffImagePlugin.IFDRational):
        num, den = value.numerator, value.denominator
        if den == 0:
            return None
        return str(num) if den == 1 else f"{num}/{den}"
    if isinstance(value, tuple):
        parts = [_exif_text(v) for v in value]
        return "[" + ", ".join(p for p in parts if p is not None) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return None
    return str(value).rstrip("\x00").strip()


def header_exif(img: Image.Image) -> str | None:
    """`extract_exif` without decoding any pixels (disable_all_reencoding): a PNG whose EXIF
    comes after the pixels, or that has none, would need a full decode to tell, so it is
    None (not read) rather than a guess."""
    if img.format == "PNG" and "exif" not in img.info:
        return None
    return extract_exif(img)
