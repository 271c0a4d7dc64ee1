"""Reading segments sequentially: members, WebDataset samples, locations only, verification.

Every function takes a plain binary stream read front to back, so a local file and a
non-seekable S3 body work alike. Offsets are the true positions of the data in the object,
the same numbers the writer returned and the index holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from i2d_segments.segment.format import MemberLocation, SegmentFormatError, split_name
from i2d_segments.segment.tarscan import ByteSource, iter_entries


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    data_offset: int
    data_length: int
    data: bytes

    @property
    def location(self) -> MemberLocation:
        return MemberLocation(self.name, self.data_offset, self.data_length)


@dataclass(slots=True)
class SegmentSample:
    """One WebDataset sample: adjacent members sharing a key.

    `data` maps ext -> bytes for the members that were loaded; `locations` maps ext -> location
    for every member of the sample, loaded or not.
    """

    key: str
    data: dict[str, bytes] = field(default_factory=dict)
    locations: dict[str, MemberLocation] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """`ok` when the sha256 matches and the tar parsed through its end-of-archive marker."""

    ok: bool
    sha256: str
    bytes: int
    complete: bool
    member_count: int
    error: str | None


def _want_all(_: str) -> bool:
    return True


def _want_none(_: str) -> bool:
    return False


def iter_members(stream: BinaryIO) -> Iterator[Member]:
    """Every file member with its data, in stream order. Raises SegmentFormatError."""
    for entry in iter_entries(ByteSource(stream), _want_all):
        assert entry.data is not None
        yield Member(entry.name, entry.data_offset, entry.data_length, entry.data)


def scan_locations(stream: BinaryIO) -> Iterator[MemberLocation]:
    """Every file member's location; data is skipped (seeked over when the stream allows)."""
    for entry in iter_entries(ByteSource(stream), _want_none):
        yield MemberLocation(entry.name, entry.data_offset, entry.data_length)


def iter_samples(
    stream: BinaryIO, *, load: Collection[str] | None = None
) -> Iterator[SegmentSample]:
    """Samples as WebDataset groups them: adjacent members with the same key (the name up to
    the first dot of its basename). Members without an extension are not part of any sample.

    `load` limits which extensions have their bytes read (say `{"json"}` to rebuild the index
    without reading images); the default loads everything. A key repeating an extension within
    one sample raises SegmentFormatError, as it would make the sample ambiguous.
    """
    exts = None if load is None else frozenset(load)

    def want(name: str) -> bool:
        return exts is None or split_name(name)[1] in exts

    current: SegmentSample | None = None
    for entry in iter_entries(ByteSource(stream), want):
        key, ext = split_name(entry.name)
        if not ext:
            continue
        if current is None or current.key != key:
            if current is not None:
                yield current
            current = SegmentSample(key)
        if ext in current.locations:
            raise SegmentFormatError(f"sample {key!r} has two {ext!r} members")
        current.locations[ext] = MemberLocation(entry.name, entry.data_offset, entry.data_length)
        if entry.data is not None:
            current.data[ext] = entry.data
    if current is not None:
        yield current


def verify_stream(
    stream: BinaryIO, expected_sha256: str, *, expected_bytes: int | None = None
) -> VerifyResult:
    """Hash and count the whole stream while parsing it as a tar to its end.

    A flipped byte shows as a sha256 mismatch (and, in a header, as a parse error); a truncated
    stream as `complete=False`. I/O errors of the stream itself propagate: they say nothing
    about the object.
    """
    hasher = hashlib.sha256()
    source = ByteSource(stream, hasher)
    members = 0
    error: str | None = None
    complete = False
    try:
        for _ in iter_entries(source, _want_none):
            members += 1
        complete = True
    except SegmentFormatError as e:
        error = str(e)
    source.drain()
    digest = hasher.hexdigest()
    if error is None and digest != expected_sha256.lower():
        error = f"sha256 {digest} differs from the recorded {expected_sha256}"
    if error is None and expected_bytes is not None and source.consumed != expected_bytes:
        error = f"{source.consumed} bytes, {expected_bytes} recorded"
    return VerifyResult(
        ok=error is None,
        sha256=digest,
        bytes=source.consumed,
        complete=complete,
        member_count=members,
        error=error,
    )
