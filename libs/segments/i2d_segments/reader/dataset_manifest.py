"""Dataset manifests: the shard lists training code points at, kept next to the segments.

The materializer writes them (`manifests/` in the store); the reader reads them when it has no
index (a trainer with only bucket access). Every file is a pure function of the committed
segments, in segment order, so rewriting them is idempotent:

- `manifests/shards.txt`: one segment URI per line (`file:///...` or `s3://bucket/...`);
- `manifests/shards_brace.txt`: the same list as one brace expression (`{a,b,...}`), the form
  WebDataset's `braceexpand` expands;
- `manifests/wids.json`: a wids dataset description (`wids_version` 1, `shardlist` of
  `{"url", "nsamples"}`); urls are relative to the manifest, so the folder or bucket can move;
- `manifests/summary.json`: counts of the dataset (see `i2d_materializer.dataset_manifests`).

The shard lists (the three first files) name only the segments that hold at least one image
(`holds_images`): a segment whose rows all failed stores no WebDataset sample (its
`__segment__` manifest is not one), and a reader that infers its columns from the first shard
(Hugging Face `datasets`) cannot load an empty one. No image is lost by the rule: an item
lives in the segment that wrote it, whose tar keeps it for good, so that segment is listed
even after all its rows moved to a newer one.
"""

from __future__ import annotations

import json
import os.path
from collections.abc import Iterable, Sequence
from typing import Any

from i2d_segments.index import SegmentRow
from i2d_segments.naming import SEGMENTS_PREFIX, object_name_of

MANIFESTS_PREFIX = "manifests/"
SHARDS_NAME = f"{MANIFESTS_PREFIX}shards.txt"
BRACE_NAME = f"{MANIFESTS_PREFIX}shards_brace.txt"
WIDS_NAME = f"{MANIFESTS_PREFIX}wids.json"
SUMMARY_NAME = f"{MANIFESTS_PREFIX}summary.json"
WIDS_VERSION = 1


def holds_images(segment: SegmentRow) -> bool:
    """Whether a tar reader finds a sample in the segment: it stored at least one image.

    `item_count` counts the image members the segment's tar holds, which never change: a
    segment of failures only (or of rows whose images an earlier segment already stores) has
    none, while a segment whose rows all moved to a newer one (a row delivered again with
    another outcome) still holds the images it wrote, the only copy of them."""
    return segment.item_count > 0


def shard_segments(segments: Iterable[SegmentRow]) -> list[SegmentRow]:
    """The segments a shard list names, in their order: those that hold images."""
    return [s for s in segments if holds_images(s)]


def relative_url(segment_id: str) -> str:
    """A segment's URL as seen from `manifests/` (wids resolves it against the JSON's folder)."""
    return "../" + object_name_of(segment_id)


def wids_description(segments: Sequence[SegmentRow], name: str = "img2dataset") -> dict[str, Any]:
    """The wids JSON: one shard per segment that holds images (`shard_segments`); `nsamples`
    is its WebDataset sample count (the items it stores). `segment_id` is an extra key wids
    ignores and the reader uses."""
    return {
        "wids_version": WIDS_VERSION,
        "name": name,
        "shardlist": [
            {
                "url": relative_url(s.segment_id),
                "nsamples": s.item_count,
                "segment_id": s.segment_id,
            }
            for s in shard_segments(segments)
        ],
    }


def segment_ids_from_wids(body: bytes) -> list[tuple[str, int]]:
    """(segment_id, nsamples) of each shard of a wids description this package wrote."""
    desc = json.loads(body)
    if desc.get("wids_version") != WIDS_VERSION:
        raise ValueError(f"unsupported wids_version {desc.get('wids_version')!r}")
    out = []
    for shard in desc["shardlist"]:
        segment_id = shard.get("segment_id")
        if segment_id is None:
            # A description without our extra key: derive the id from the relative url.
            path = os.path.normpath(os.path.join(MANIFESTS_PREFIX, shard["url"]))
            if not path.startswith(SEGMENTS_PREFIX) or not path.endswith(".tar"):
                raise ValueError(f"shard url {shard['url']!r} is not a segment of this dataset")
            segment_id = path[len(SEGMENTS_PREFIX) : -len(".tar")]
        out.append((str(segment_id), int(shard["nsamples"])))
    return out


def brace_expression(urls: Sequence[str]) -> str:
    """One brace expression expanding to exactly `urls`, in order: the common prefix and
    suffix outside, the differing middles as a comma list (braceexpand's `{a,b}` form).
    A single url is returned as it is; none gives ""."""
    if len(urls) <= 1:
        return urls[0] if urls else ""
    prefix = _common_prefix(urls)
    suffix = _common_prefix([u[len(prefix) :][::-1] for u in urls])[::-1]
    middles = [u[len(prefix) : len(u) - len(suffix)] for u in urls]
    for m in middles:
        if any(c in m for c in "{},"):
            raise ValueError(f"cannot brace-expand a url part containing braces or commas: {m!r}")
    return prefix + "{" + ",".join(middles) + "}" + suffix


def _common_prefix(texts: Sequence[str]) -> str:
    """The longest common prefix, character by character (not by path component)."""
    first, last = min(texts), max(texts)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]
