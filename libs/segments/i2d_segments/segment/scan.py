"""One pass over a whole segment object: its sha256 and size, every member's location, and
the `__segment__` manifest's bytes. What `reindex` and `verify` both need, read front to back
once (a plain stream, so an S3 body works as a local file does).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import BinaryIO

from i2d_segments.segment.format import MemberLocation, SegmentFormatError
from i2d_segments.segment.manifest import MANIFEST_NAME
from i2d_segments.segment.tarscan import ByteSource, iter_entries


@dataclass(slots=True)
class SegmentScan:
    """`error` is None when the tar parsed through its end-of-archive marker."""

    sha256: str
    size: int
    locations: dict[str, MemberLocation] = field(default_factory=dict)
    manifest: bytes | None = None
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.error is None


def scan_segment(stream: BinaryIO) -> SegmentScan:
    """Hash and parse the whole stream; only the manifest member's data is kept in memory.

    A malformed or truncated tar is reported in `error` (with the hash of what was there), not
    raised; I/O errors of the stream itself propagate.
    """
    hasher = hashlib.sha256()
    source = ByteSource(stream, hasher)
    locations: dict[str, MemberLocation] = {}
    manifest: bytes | None = None
    error: str | None = None
    try:
        for entry in iter_entries(source, lambda name: name == MANIFEST_NAME):
            if entry.name in locations:
                raise SegmentFormatError(f"member {entry.name!r} appears twice")
            locations[entry.name] = MemberLocation(entry.name, entry.data_offset, entry.data_length)
            if entry.data is not None:
                manifest = entry.data
    except SegmentFormatError as e:
        error = str(e)
    source.drain()
    return SegmentScan(
        sha256=hasher.hexdigest(),
        size=source.consumed,
        locations=locations,
        manifest=manifest,
        error=error,
    )
