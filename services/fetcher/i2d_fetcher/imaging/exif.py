"""EXIF tags exactly as img2dataset writes them: its `exif` column is

    json.dumps({k: str(v).strip() for k, v in exifread.process_file(img_stream,
               details=False).items() if v is not None})

over the downloaded bytes, or None when that raises. The strings are exifread's printable
values ("Image Orientation": "Horizontal (normal)", "EXIF ExposureTime": "1/250",
"EXIF FNumber": "14/5", its lists "[48, 51, 2959/100]") and its quirks (a BYTE value reads as
0, so "GPS GPSVersionID": "[0, 0, 0, 0]"; "Image ExifOffset" and "Image GPSInfo" are kept;
PNG, GIF and the other formats it does not read are "{}"). Reproducing that without exifread
would mean copying its tag tables and re-creating each of its quirks, so exifread itself
runs here, pinned to the release img2dataset installs (exifread-nocycle 3.0.1).

exifread reads the bytes only (no pixel is decoded), but hostile EXIF can make it loop or
work for minutes: an IFD of 65535 entries of 999 values each, a chain of IFDs, ASCII values
that each re-read the whole body, a HEIC box of size 0 that it re-reads forever. Its reads
are counted and bounded (`MAX_READS`, `MAX_READ_BYTES`): past them the sample's exif is None,
as img2dataset's would be had exifread raised. A camera photo takes ~150-1000 reads. A value
longer than `MAX_VALUE_CHARS` is cut there, and tags past `MAX_EXIF_CHARS` in all are left
out, so no row carries megabytes of metadata (img2dataset keeps them whole).
"""

from __future__ import annotations

import io
import json
import logging

import exifread

# img2dataset silences exifread the same way (a PNG is "File format not recognized").
logging.getLogger("exifread").setLevel(logging.CRITICAL)

MAX_READS = 50_000  # ~0.15 s of exifread's work
MAX_READ_BYTES = 8 << 20
MAX_VALUE_CHARS = 16 << 10  # an ImageDescription of a whole article still fits
MAX_EXIF_CHARS = 64 << 10  # a camera photo's tags are 2-5 KiB


class ExifTooCostly(Exception):
    """exifread read more than a real EXIF block needs."""


class _BoundedBytes(io.BytesIO):
    """The body as exifread's file, counting its reads."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0
        self.read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.reads > MAX_READS:
            raise ExifTooCostly(f"more than {MAX_READS} reads")
        chunk = super().read(size)
        self.read_bytes += len(chunk)
        if self.read_bytes > MAX_READ_BYTES:
            raise ExifTooCostly(f"more than {MAX_READ_BYTES} bytes read")
        return chunk


def extract_exif(data: bytes) -> str | None:
    """img2dataset's `exif` of a downloaded body: a JSON object of exifread's tag names
    ("Image Make", "EXIF DateTimeOriginal", "GPS GPSLatitude"...) and printable values,
    "{}" when it has none or is a format exifread does not read, None when exifread fails
    on it or reads past the bounds."""
    try:
        tags = exifread.process_file(_BoundedBytes(data), details=False)
        kept: dict[str, str] = {}
        size = 2
        for name, tag in tags.items():
            if tag is None:
                continue
            text = str(tag).strip()[:MAX_VALUE_CHARS]
            size += len(json.dumps(name)) + len(json.dumps(text)) + 4
            if size > MAX_EXIF_CHARS:
                break
            kept[name] = text
        return json.dumps(kept)
    except Exception:  # as img2dataset: exifread failing on a body is no exif, not a failure
        return None
