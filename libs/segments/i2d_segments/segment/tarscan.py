"""Sequential tar parsing that knows the true byte position of every member's data.

`tarfile`'s stream mode would read non-seekable bodies too, but it treats a stream that stops at
a member boundary, or inside a header, as a normal end of archive: a truncated segment would
pass for a shorter valid one. This parser requires the end-of-archive marker, tracks positions
itself, and can hash every byte it consumes (for `verify`). Header blocks are decoded by
`tarfile.TarInfo.frombuf`; PAX (`x`, `g`) and GNU long-name (`L`, `K`) records are applied here.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from i2d_segments.segment.format import BLOCK_SIZE, SegmentFormatError, TruncatedSegmentError

if TYPE_CHECKING:
    from hashlib import _Hash

_CHUNK = 256 * 1024
_ZERO_BLOCK = bytes(BLOCK_SIZE)
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"
# Types that carry data blocks and are files to a reader; others (directories, links, devices)
# have no data in the archive whatever their size field says, as tarfile treats them.
_FILE_TYPES = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE))
_DATALESS_TYPES = frozenset(
    (
        tarfile.DIRTYPE,
        tarfile.SYMTYPE,
        tarfile.LNKTYPE,
        tarfile.CHRTYPE,
        tarfile.BLKTYPE,
        tarfile.FIFOTYPE,
    )
)


class ByteSource:
    """Reads exact byte counts from a (possibly non-seekable) stream in large chunks.

    `position` counts bytes handed to the parser; `consumed` counts bytes taken from the stream
    (read-ahead included), and those are the ones fed to `hasher`.
    """

    def __init__(self, stream: BinaryIO, hasher: _Hash | None = None) -> None:
        self._stream = stream
        self._hasher = hasher
        self._buf = b""
        self._off = 0
        self.position = 0
        self.consumed = 0
        self._can_seek = hasher is None and _seekable(stream)

    def _raw_read(self, n: int) -> bytes:
        chunk = self._stream.read(n) or b""
        if chunk:
            self.consumed += len(chunk)
            if self._hasher is not None:
                self._hasher.update(chunk)
        return chunk

    def read_exact(self, n: int) -> bytes:
        """Exactly `n` bytes; TruncatedSegmentError if the stream ends first."""
        buf, off = self._buf, self._off
        end = off + n
        if end <= len(buf):
            self._off = end
            self.position += n
            return buf[off:end]
        parts = [buf[off:]] if off < len(buf) else []
        have = len(buf) - off
        self._buf, self._off = b"", 0
        while have < n:
            # A large read goes straight to the stream for exactly what is missing (no copy
            # through the buffer); a small one refills the buffer for the headers that follow.
            chunk = self._raw_read(max(n - have, _CHUNK))
            if not chunk:
                raise TruncatedSegmentError(
                    f"stream ended at byte {self.position + have}, {n - have} bytes short"
                )
            parts.append(chunk)
            have += len(chunk)
        joined = parts[0] if len(parts) == 1 else b"".join(parts)
        self.position += n
        if have == n:
            return joined
        self._buf, self._off = joined, n
        return joined[:n]

    def skip(self, n: int) -> None:
        """Move past `n` bytes without keeping them (seeks when nothing needs to see them)."""
        avail = len(self._buf) - self._off
        if n <= avail:
            self._off += n
            self.position += n
            return
        self._buf, self._off = b"", 0
        self.position += avail
        rest = n - avail
        if self._can_seek:
            # Seeking past the end goes unnoticed here; the next header read then fails.
            self._stream.seek(rest, 1)
            self.position += rest
            return
        while rest:
            chunk = self._raw_read(min(rest, _CHUNK))
            if not chunk:
                raise TruncatedSegmentError(f"stream ended at byte {self.position}, {rest} short")
            rest -= len(chunk)
            self.position += len(chunk)

    def drain(self) -> None:
        """Consume (and hash) whatever follows, such as record padding after the marker."""
        self._buf, self._off = b"", 0
        while self._raw_read(_CHUNK):
            pass


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


@dataclass(frozen=True, slots=True)
class Entry:
    """One file member: its name, where its data is, and the data when it was asked for."""

    name: str
    data_offset: int
    data_length: int
    data: bytes | None


def _padding(size: int) -> int:
    return -size % BLOCK_SIZE


def _parse_pax(data: bytes, at: int) -> dict[str, str]:
    """PAX records `"<len> <key>=<value>\\n"`, where <len> counts the whole record."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        digits = data[pos:space] if space > pos else b""
        length = int(digits) if digits.isdigit() else 0
        end = pos + length
        if length <= len(digits) + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise SegmentFormatError(f"malformed PAX header at offset {at}")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise SegmentFormatError(f"malformed PAX record at offset {at}")
        records[key.decode(_ENCODING, _ERRORS)] = value.decode(_ENCODING, _ERRORS)
        pos = end
    return records


def iter_entries(source: ByteSource, want: Callable[[str], bool]) -> Iterator[Entry]:
    """File members in stream order; data is read for names `want` accepts, skipped otherwise.

    Raises SegmentFormatError (TruncatedSegmentError) for anything but a complete tar.
    """
    long_name: str | None = None
    long_size: int | None = None
    while True:
        header_at = source.position
        block = source.read_exact(BLOCK_SIZE)
        if block == _ZERO_BLOCK:
            if long_name is not None or long_size is not None:
                raise SegmentFormatError(f"extended header without a member at {header_at}")
            if source.read_exact(BLOCK_SIZE) != _ZERO_BLOCK:
                raise SegmentFormatError(f"lone zero block at offset {header_at}")
            return
        try:
            info = tarfile.TarInfo.frombuf(block, _ENCODING, _ERRORS)
        except (tarfile.HeaderError, ValueError) as e:
            raise SegmentFormatError(f"invalid tar header at offset {header_at}: {e}") from e
        kind = info.type
        if kind in (tarfile.XHDTYPE, tarfile.XGLTYPE):
            records = _parse_pax(source.read_exact(info.size), header_at)
            source.skip(_padding(info.size))
            if any(k.startswith("GNU.sparse.") for k in records):
                raise SegmentFormatError(f"sparse member at offset {header_at} is not supported")
            if kind == tarfile.XHDTYPE:  # global headers carry no per-member path or size
                long_name = records.get("path", long_name)
                if "size" in records:
                    try:
                        long_size = int(records["size"])
                    except ValueError as e:
                        raise SegmentFormatError(f"bad PAX size at offset {header_at}") from e
            continue
        if kind == tarfile.GNUTYPE_LONGNAME:
            raw = source.read_exact(info.size)
            source.skip(_padding(info.size))
            long_name = raw.split(b"\x00", 1)[0].decode(_ENCODING, _ERRORS)
            continue
        if kind == tarfile.GNUTYPE_LONGLINK:
            source.skip(info.size + _padding(info.size))
            continue
        if kind == tarfile.GNUTYPE_SPARSE:
            raise SegmentFormatError(f"sparse member at offset {header_at} is not supported")

        name = info.name if long_name is None else long_name
        size = info.size if long_size is None else long_size
        long_name = long_size = None
        if kind in _DATALESS_TYPES:
            continue
        data_offset = source.position
        data: bytes | None = None
        if kind in _FILE_TYPES and want(name):
            data = source.read_exact(size)
            source.skip(_padding(size))
        else:
            source.skip(size + _padding(size))
        if kind in _FILE_TYPES:
            yield Entry(name, data_offset, size, data)
