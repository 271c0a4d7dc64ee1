"""Manifests handed from the appender to a reader in the same process, not parsed back.

In `download` and `service` the appender and the materializer share a process: the
materializer read each segment's manifest back from the store and parsed it (JSON lines, one
per row), right after the appender had encoded it from the very rows it still held. Parsing
was 60% of the materializer's CPU, 9% of that process's on a list of urls that all answer 404,
and the last segment's parse adds itself to the end of every run.

The appender of such a process (`hand_off_manifests`; `serve appender` holds none, its
materializer being elsewhere) `offer`s a segment's manifest once its index commit succeeded;
the manifest loader (`reader.segment_rows.store_manifests`) `take`s it for that same committed
object (segment id and sha256 both match) instead of reading and parsing it. Anything else
(another process, an older segment, one taken already) reads the store as before. The rows are
the objects the manifest was encoded from, so they are what parsing it gives back
(tests/segments/test_handoff.py checks it on rows of every kind).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from i2d_segments.index.base import SegmentRow
from i2d_segments.segment.manifest import SegmentManifest

# Manifests held at most: the materializer takes each soon after its commit; an offer nobody
# takes (it was busy with an older segment, or stopped) is dropped when newer ones come.
HELD = 2

_lock = threading.Lock()
_held: OrderedDict[tuple[str, str], SegmentManifest] = OrderedDict()


def offer(segment: SegmentRow, manifest: SegmentManifest) -> None:
    """`manifest` is the one written in the committed `segment` (its sha256 covers it)."""
    with _lock:
        _held[(segment.segment_id, segment.sha256)] = manifest
        while len(_held) > HELD:
            _held.popitem(last=False)


def take(segment: SegmentRow) -> SegmentManifest | None:
    """The manifest offered for this committed segment, once; None if there is none."""
    with _lock:
        return _held.pop((segment.segment_id, segment.sha256), None)


def clear() -> None:
    with _lock:
        _held.clear()
