"""Streaming segment writer: tar bytes go to a sink as they are produced, never buffered whole.

The sink is typically `SegmentUpload.write`, which ships S3 parts as they fill, so a segment of
any size costs only one sample's worth of memory here. Every byte passes through one sha256 on
its way out, which gives the digest the index records without reading the object back.

Output is a function of the inputs and `mtime` alone (uid/gid 0, empty user/group names, mode
0644), so a segment rebuilt from the same records is byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from i2d_segments.segment.format import (
    BLOCK_SIZE,
    MemberLocation,
    member_name,
    validate_ext,
    validate_key,
    validate_metadata_name,
)

# Octal size and mtime fields hold 11 digits; beyond that tarfile adds PAX records.
_USTAR_NUMBER_LIMIT = 8**11
_USTAR_NAME_LIMIT = 100
# Data at least this large goes to the sink as its own call instead of being joined with the
# neighbouring headers: joining small pieces saves sink calls, copying big ones would cost.
_DIRECT_WRITE_MIN = 64 * 1024
_END_OF_ARCHIVE = bytes(2 * BLOCK_SIZE)

# The return value is ignored, so `file.write` (which returns a count) is a sink as it is.
Sink = Callable[[bytes], object]


@dataclass(frozen=True, slots=True)
class SegmentDigest:
    """The finished segment: its size and the sha256 hex of every byte written."""

    bytes: int
    sha256: str


class SegmentWriter:
    """Writes WebDataset samples as a POSIX (ustar, PAX for long names) tar stream to `sink`.

    `mtime` stamps every member (default 0) so output stays deterministic.
    """

    def __init__(self, sink: Sink, *, mtime: int | None = None) -> None:
        mtime = 0 if mtime is None else mtime
        if not 0 <= mtime < _USTAR_NUMBER_LIMIT:
            raise ValueError(f"mtime {mtime} does not fit a ustar header")
        self._sink = sink
        self._mtime = mtime
        self._template = _header_template(mtime)
        self._template_sum = sum(self._template)
        self._sha256 = hashlib.sha256()
        self._position = 0
        self._sample_count = 0
        self._digest: SegmentDigest | None = None
        self._failed = False

    @property
    def bytes_written(self) -> int:
        return self._position

    @property
    def sample_count(self) -> int:
        return self._sample_count

    def add_sample(self, key: str, members: Sequence[tuple[str, bytes]]) -> list[MemberLocation]:
        """Append one sample: `(ext, data)` pairs become adjacent members `<key>.<ext>`.

        Returns each member's name and the offset/length of its data in the stream. Invalid
        input raises ValueError before anything is written, so the writer stays usable.
        """
        self._check_writable()
        validate_key(key)
        if not members:
            raise ValueError(f"sample {key!r} has no members")
        seen: set[str] = set()
        for ext, _ in members:
            validate_ext(ext)
            if ext in seen:
                raise ValueError(f"sample {key!r} has two {ext!r} members")
            seen.add(ext)
        planned = []
        for ext, data in members:
            name = member_name(key, ext)
            planned.append((name, self._header(name, len(data)), data))
        locations = self._write_members(planned)
        self._sample_count += 1
        return locations

    def add_metadata(self, name: str, data: bytes) -> MemberLocation:
        """Append a segment-level member that is not a sample, such as the manifest the appender
        writes last. `name` must be `__<word>__`: WebDataset skips such members as metadata,
        and having no extension they belong to no sample for `iter_samples` either."""
        self._check_writable()
        validate_metadata_name(name)
        return self._write_members([(name, self._header(name, len(data)), data)])[0]

    def _write_members(self, planned: list[tuple[str, bytes, bytes]]) -> list[MemberLocation]:
        """Emit `(name, header, data)` members, returning where each one's data landed."""
        locations: list[MemberLocation] = []
        pending: list[bytes] = []
        try:
            for name, header, data in planned:
                pending.append(header)
                self._position += len(header)
                size = len(data)
                locations.append(MemberLocation(name, self._position, size))
                if size >= _DIRECT_WRITE_MIN:
                    self._emit_joined(pending)
                    self._emit(data)
                elif size:
                    pending.append(data)
                self._position += size
                padding = -size % BLOCK_SIZE
                if padding:
                    pending.append(bytes(padding))
                    self._position += padding
            self._emit_joined(pending)
        except BaseException:
            # Part of a member may have reached the sink: the stream is no longer a tar.
            self._failed = True
            raise
        return locations

    def finish(self) -> SegmentDigest:
        """Write the end-of-archive marker and return the digest. Calling it again returns the
        same digest; nothing can be added afterwards."""
        if self._digest is not None:
            return self._digest
        self._check_writable()
        try:
            self._emit(_END_OF_ARCHIVE)
        except BaseException:
            self._failed = True
            raise
        self._position += len(_END_OF_ARCHIVE)
        self._digest = SegmentDigest(bytes=self._position, sha256=self._sha256.hexdigest())
        return self._digest

    def _check_writable(self) -> None:
        if self._failed:
            raise RuntimeError("segment writer failed earlier; its output is incomplete")
        if self._digest is not None:
            raise RuntimeError("segment writer already finished")

    def _emit(self, chunk: bytes) -> None:
        self._sha256.update(chunk)
        self._sink(chunk)

    def _emit_joined(self, pending: list[bytes]) -> None:
        if pending:
            chunk = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            self._emit(chunk)

    def _header(self, name: str, size: int) -> bytes:
        """The header block(s) of a regular file member.

        The common case (short ASCII name) patches a precomputed block, ten times cheaper than
        building a TarInfo; anything else goes through tarfile's PAX machinery. Both produce
        the same bytes for the same member (the tests compare them).
        """
        if size < _USTAR_NUMBER_LIMIT and len(name) <= _USTAR_NAME_LIMIT and name.isascii():
            encoded = name.encode("ascii")
            size_field = b"%011o\x00" % size
            # The checksum is the byte sum with its own field as spaces; the template's part of
            # it is precomputed, so only the name and size bytes are summed here.
            checksum = self._template_sum + sum(encoded) + sum(size_field)
            block = bytearray(self._template)
            block[: len(encoded)] = encoded
            block[124:136] = size_field
            block[148:156] = b"%06o\x00 " % checksum
            return bytes(block)
        return _tarinfo(name, size, self._mtime).tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def _tarinfo(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _header_template(mtime: int) -> bytes:
    """A ustar header with empty name and size fields (zeros) and the checksum field blanked
    to spaces, ready to be patched."""
    block = bytearray(_tarinfo("", 0, mtime).tobuf(tarfile.PAX_FORMAT, "utf-8", "strict"))
    assert len(block) == BLOCK_SIZE
    block[124:136] = bytes(12)
    block[148:156] = b" " * 8
    return bytes(block)


def sample_members(
    item_id: str, ext: str, image: bytes, meta: dict[str, Any], caption: str | None
) -> list[tuple[str, bytes]]:
    """The members of one stored item, in order: the image, its `.json` metadata (UTF-8,
    sorted keys, compact, so equal metadata gives equal bytes) and `.txt` when captioned."""
    validate_key(item_id)
    validate_ext(ext)
    if ext in ("json", "txt"):
        raise ValueError(f"image extension {ext!r} collides with a metadata member")
    text = json.dumps(meta, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    members = [(ext, image), ("json", text.encode("utf-8"))]
    if caption is not None:
        members.append(("txt", caption.encode("utf-8")))
    return members
