"""What a segment is made of: member names, their locations, and the errors a reader raises.

A segment is a POSIX tar whose members are WebDataset samples: `<key>.<ext>`, the members of one
sample adjacent. WebDataset splits a name at the first dot of its basename, so a key must not
contain a dot (or a slash, which would make it a directory) or samples would regroup wrongly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BLOCK_SIZE = 512

# An extension is one or more dot-separated words (`jpg`, `seg.png`), as WebDataset reads them.
_EXT_RE = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")
# A segment-level member: `__word__`, no dot and no slash. WebDataset's tar reader skips names
# that start and end with `__` as metadata; without an extension it is in no sample either.
_METADATA_RE = re.compile(r"__[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*__")


class SegmentFormatError(ValueError):
    """The bytes are not a well-formed segment (bad header, bad grouping, missing end marker)."""


class TruncatedSegmentError(SegmentFormatError):
    """The stream ended before the tar did."""


@dataclass(frozen=True, slots=True)
class MemberLocation:
    """Where one member's data sits in the segment: a ranged read of
    `[data_offset, data_offset + data_length)` returns exactly its bytes."""

    name: str
    data_offset: int
    data_length: int


def validate_key(key: str) -> None:
    """Raise ValueError unless `key` is usable as a WebDataset sample key."""
    if not key:
        raise ValueError("sample key is empty")
    if "." in key or "/" in key or "\\" in key:
        raise ValueError(f"sample key {key!r} contains '.', '/' or '\\'")
    if not key.isprintable():
        raise ValueError(f"sample key {key!r} contains control characters")


def validate_ext(ext: str) -> None:
    """Raise ValueError unless `ext` is a member extension such as `jpg` or `json`."""
    if not _EXT_RE.fullmatch(ext):
        raise ValueError(f"invalid member extension {ext!r}")


def validate_metadata_name(name: str) -> None:
    """Raise ValueError unless `name` is a metadata member name such as `__segment__`."""
    if not _METADATA_RE.fullmatch(name):
        raise ValueError(f"metadata member name {name!r} is not of the form __word__")


def is_metadata_name(name: str) -> bool:
    return _METADATA_RE.fullmatch(name) is not None


def member_name(key: str, ext: str) -> str:
    return f"{key}.{ext}"


def split_name(name: str) -> tuple[str, str]:
    """(key, ext) the way WebDataset groups members: the key runs to the first dot of the
    basename (keeping any directory part), the extension is everything after it.
    A name without a dot in its basename has ext ""."""
    base = name.rfind("/") + 1
    dot = name.find(".", base)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]
