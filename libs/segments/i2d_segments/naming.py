"""Deterministic, zero-padded object names, fixed by the data and the owner's epoch."""

from __future__ import annotations

import re

SEGMENTS_PREFIX = "segments/"
STAGING_PREFIX = "staging/"

_SEGMENT_RE = re.compile(r"^segments/p(\d{5})/(\d{20})-e(\d+)\.tar$")


def partition_prefix(partition: int) -> str:
    return f"{SEGMENTS_PREFIX}p{partition:05d}/"


def segment_object_name(partition: int, first_offset: int, epoch: int) -> str:
    return f"{partition_prefix(partition)}{first_offset:020d}-e{epoch}.tar"


def segment_id_of(object_name: str) -> str:
    """A segment's id is its object name without the `segments/` prefix and `.tar` suffix."""
    if not _SEGMENT_RE.match(object_name):
        raise ValueError(f"not a segment object name: {object_name!r}")
    return object_name[len(SEGMENTS_PREFIX) : -len(".tar")]


def object_name_of(segment_id: str) -> str:
    return f"{SEGMENTS_PREFIX}{segment_id}.tar"


def parse_segment_name(object_name: str) -> tuple[int, int, int]:
    """(partition, first_offset, epoch) of a segment object name."""
    m = _SEGMENT_RE.match(object_name)
    if not m:
        raise ValueError(f"not a segment object name: {object_name!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def sidecar_name(segment_id: str, suffix: str) -> str:
    """Materialized files live next to their segment: `segments/p00000/<first>-e1<suffix>`."""
    return f"{SEGMENTS_PREFIX}{segment_id}{suffix}"


def staging_name(item_id: str) -> str:
    return f"{STAGING_PREFIX}{item_id}"
