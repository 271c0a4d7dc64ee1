"""Segment objects for tests that build their commits by hand: the rows of a commit are full
rows only together with the segment's manifest (`SegmentRows`), so the object must exist."""

from __future__ import annotations

import io
from dataclasses import replace

from i2d_segments.index import SegmentCommit
from i2d_segments.naming import object_name_of
from i2d_segments.segment import SegmentWriter
from i2d_segments.segment.manifest import MANIFEST_NAME, SegmentManifest, encode_manifest
from i2d_segments.store import SegmentStore


def manifest_of(commit: SegmentCommit) -> SegmentManifest:
    """The manifest the appender writes for this commit: its rows, as committed."""
    seg = commit.segment
    return SegmentManifest(
        segment_id=seg.segment_id,
        topic=seg.topic,
        partition=seg.partition,
        first_offset=seg.first_offset,
        last_offset=seg.last_offset,
        epoch=seg.epoch,
        created_at=seg.created_at,
        items=list(commit.items),
        samples=list(commit.samples),
    )


def store_segment(
    store: SegmentStore, commit: SegmentCommit, *, images: bool = True
) -> SegmentCommit:
    """Write the commit's segment object (each item a member of its `data_length` bytes, then
    the manifest) and return the commit with the locations, size and sha256 written.
    `images=False`: the manifest alone (its items keep their offsets; `make scale`, whose
    readers only read rows)."""
    out = io.BytesIO()
    writer = SegmentWriter(out.write)
    seg = commit.segment
    items = list(commit.items)
    if images:
        items = []
        for item in commit.items:
            [loc] = writer.add_sample(item.item_id, [(item.ext, b"\xff" * item.data_length)])
            items.append(replace(item, data_offset=loc.data_offset))
    manifest = manifest_of(replace(commit, items=items))
    where = writer.add_metadata(MANIFEST_NAME, encode_manifest(manifest))
    digest = writer.finish()
    store.put(object_name_of(seg.segment_id), out.getvalue())
    segment = replace(seg, manifest_offset=where.data_offset, manifest_length=where.data_length)
    if images:
        segment = replace(segment, bytes=digest.bytes, sha256=digest.sha256)
    return replace(commit, segment=segment, items=items)
