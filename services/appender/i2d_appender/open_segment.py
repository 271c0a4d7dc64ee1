"""One segment being written: TAR bytes stream to the store, index rows accumulate in memory.

Nothing here is visible to readers: the object appears at `complete()` and becomes part of the
dataset only when the service commits the rows this class collected. Just before the end of the
archive the rows themselves are written as the segment's manifest (`__segment__`), so the
segments alone can rebuild the index (`img2dataset reindex`).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from i2d_appender import crashpoints
from i2d_segments.bus import TopicPartition
from i2d_segments.ids import sha256_hex
from i2d_segments.index import ItemRow, SampleRow, SegmentCommit, SegmentRow
from i2d_segments.naming import segment_id_of, segment_object_name
from i2d_segments.records import STATUS_TEXT, AppendMeta, AppendRecord, SampleStatus
from i2d_segments.segment import SegmentWriter, sample_members
from i2d_segments.segment.manifest import MANIFEST_NAME, SegmentManifest, encode_manifest
from i2d_segments.store import SegmentStore

# Columns carried by SampleRow itself; everything else of img2dataset's row goes to `attrs`.
_SAMPLE_COLUMNS = ("url", "caption", "status", "error_message", "sample_id")


def sample_attrs(meta: AppendMeta) -> dict[str, Any]:
    """The row's metadata but SampleRow's own columns: `meta.sample_json()` without
    _SAMPLE_COLUMNS, keys in the same order, made without the whole of it (once per record).
    tests/services/test_appender.py checks the two agree."""
    attrs: dict[str, Any] = {
        "key": meta.key if meta.key is not None else meta.sample_id,
        "width": meta.width,
        "height": meta.height,
        "original_width": meta.original_width,
        "original_height": meta.original_height,
        "exif": meta.exif,
    }
    for name, digest in meta.hashes.items():
        if name not in _SAMPLE_COLUMNS:
            attrs[name] = digest
    for name, value in meta.extra.items():  # never one of the row's own (sample_json)
        if name not in attrs and name not in _SAMPLE_COLUMNS:
            attrs[name] = value
    return attrs


@dataclass(frozen=True, slots=True)
class ClosedSegment:
    commit: SegmentCommit
    staged: list[str]  # claim-check objects to delete once the commit is durable
    manifest: SegmentManifest  # the one written in the object (handed over once committed)


class OpenSegment:
    def __init__(
        self,
        store: SegmentStore,
        tp: TopicPartition,
        epoch: int,
        first_offset: int,
        resumed_from: int | None = None,
    ) -> None:
        self.tp = tp
        self.epoch = epoch
        self.first_offset = first_offset
        # The partition's committed next_offset when this segment opened: the index checks it
        # is still there at the commit (`SegmentCommit.resumed_from`).
        self.resumed_from = resumed_from
        self.last_offset = first_offset - 1
        self.name = segment_object_name(tp.partition, first_offset, epoch)
        self.segment_id = segment_id_of(self.name)
        self.created_at = time.time()
        self.opened = time.monotonic()
        self.last_append = self.opened
        self.records = 0
        self._upload = store.begin_upload(self.name)
        self._writer = SegmentWriter(self._upload.write, mtime=int(self.created_at))
        self._items: list[ItemRow] = []
        self._item_ids: set[str] = set()
        self._samples: dict[str, SampleRow] = {}
        # Of the sample rows held (a row appended twice counts once): for the live progress.
        self.successes = 0
        self.errors: Counter[str] = Counter()  # failed rows by error message
        self._staged: list[str] = []

    @property
    def samples(self) -> int:
        """Sample rows held (what the commit will record)."""
        return len(self._samples)

    @property
    def bytes_written(self) -> int:
        return self._writer.bytes_written

    def holds_item(self, item_id: str) -> bool:
        return item_id in self._item_ids

    def add(self, offset: int, record: AppendRecord, payload: bytes | None, stored: bool) -> None:
        """Add one APPEND record. `stored`: the item is already in the index or this segment, so
        only the sample row is recorded (dedup); `payload` is the image when it must be written."""
        meta = record.meta
        item_id: str | None = None
        if meta.status is SampleStatus.SUCCESS and meta.item_id:
            item_id = meta.item_id
            if not stored:
                if payload is None:
                    raise ValueError(f"success record at offset {offset} carries no payload")
                # The item's `.json` member (only an item written here has one).
                self._write_item(record, payload, meta.sample_json())
        if meta.staged:
            self._staged.append(meta.staged)
        previous = self._samples.get(meta.sample_id)
        if previous is not None:
            if previous.status == SampleStatus.SUCCESS.value:
                self.successes -= 1
            elif previous.error is not None:
                self.errors[previous.error] -= 1
                if self.errors[previous.error] <= 0:
                    del self.errors[previous.error]
        if meta.status is SampleStatus.SUCCESS:
            self.successes += 1
        elif meta.error_message is not None:
            self.errors[meta.error_message] += 1
        self._samples[meta.sample_id] = SampleRow(
            sample_id=meta.sample_id,
            url=meta.url,
            caption=meta.caption,
            status=STATUS_TEXT[meta.status],
            error=meta.error_message,
            item_id=item_id,
            segment_id=self.segment_id,
            attrs=sample_attrs(meta),
            updated_at=time.time(),
        )
        self.last_offset = offset
        self.records += 1
        self.last_append = time.monotonic()

    def _write_item(self, record: AppendRecord, payload: bytes, row: dict[str, Any]) -> None:
        meta = record.meta
        assert meta.item_id is not None
        ext = meta.ext or "jpg"
        members = sample_members(meta.item_id, ext, payload, row, meta.caption)
        image_location = self._writer.add_sample(meta.item_id, members)[0]
        self._items.append(
            ItemRow(
                item_id=meta.item_id,
                segment_id=self.segment_id,
                data_offset=image_location.data_offset,
                data_length=image_location.data_length,
                ext=ext,
                mime=meta.mime,
                width=meta.width,
                height=meta.height,
                original_width=meta.original_width,
                original_height=meta.original_height,
                data_sha256=sha256_hex(payload),
            )
        )
        self._item_ids.add(meta.item_id)
        crashpoints.reached("segment_write")

    def finish(self) -> ClosedSegment:
        """Write the manifest and the end of the archive, then publish the object
        (If-None-Match semantics: ObjectExistsError if the name is taken)."""
        samples = list(self._samples.values())
        manifest = SegmentManifest(
            segment_id=self.segment_id,
            topic=self.tp.topic,
            partition=self.tp.partition,
            first_offset=self.first_offset,
            last_offset=self.last_offset,
            epoch=self.epoch,
            created_at=self.created_at,
            items=self._items,
            samples=samples,
        )
        where = self._writer.add_metadata(MANIFEST_NAME, encode_manifest(manifest))
        digest = self._writer.finish()
        uri = self._upload.complete()
        segment = SegmentRow(
            segment_id=self.segment_id,
            topic=self.tp.topic,
            partition=self.tp.partition,
            first_offset=self.first_offset,
            last_offset=self.last_offset,
            epoch=self.epoch,
            uri=uri,
            item_count=len(self._items),
            sample_count=len(self._samples),
            bytes=digest.bytes,
            sha256=digest.sha256,
            created_at=self.created_at,
            manifest_offset=where.data_offset,
            manifest_length=where.data_length,
        )
        commit = SegmentCommit(
            epoch=self.epoch,
            segment=segment,
            items=self._items,
            samples=samples,
            next_offset=self.last_offset + 1,
            resumed_from=self.resumed_from,
        )
        return ClosedSegment(commit=commit, staged=self._staged, manifest=manifest)

    def abort(self) -> None:
        """Discard the upload (a failed store call may have left it half sent)."""
        self._upload.abort()
