"""DatasetReader: the dataset as training code sees it, sequential or random access.

- Sequential: every item of every committed segment, in segment order (partition, first
  offset), streaming each segment object once from the folder or S3. The segment list comes
  from the index when there is one, else from `manifests/wids.json` (bucket access only); it
  names the segments that hold images, as the manifests do (`reader.manifest.holds_images`):
  one of failures only has no item, and is no shard to read or to hand out to a worker.
- Samples: `iter_samples()`, every input row with an image, each with its own caption (an
  image several rows share is yielded once per row).
- Random access: by item_id (one index lookup, one ranged read), by sample_id or url (the
  sample row, then the item). Full rows come from the index's refs and the segments'
  manifests (`SegmentRows`, which keeps recent manifests parsed). Ranged reads are checked
  against the stored bytes' sha256.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from i2d_segments.folder import INNER_FOLDER, FolderError, OutputFolder
from i2d_segments.ids import sha256_hex
from i2d_segments.index import Index, ItemRow, SampleRow
from i2d_segments.naming import object_name_of
from i2d_segments.reader.dataset_manifest import WIDS_NAME, segment_ids_from_wids, shard_segments
from i2d_segments.reader.item import Item
from i2d_segments.reader.segment_rows import DEFAULT_CACHE_ROWS, SegmentRows
from i2d_segments.segment import SegmentSample, iter_samples
from i2d_segments.store import SegmentStore

log = logging.getLogger(__name__)

METADATA_EXTS = frozenset({"json", "txt"})


class CorruptItemError(ValueError):
    """A ranged read did not return the bytes the index recorded (sha256 mismatch)."""


class DatasetReader:
    """Reads a dataset from its store, with its index when given (random access needs it)."""

    def __init__(
        self,
        store: SegmentStore,
        index: Index | None = None,
        *,
        close_both: bool = False,
        cache_rows: int = DEFAULT_CACHE_ROWS,
    ) -> None:
        """`cache_rows`: `SegmentRows`' budget of parsed manifest rows."""
        self.store = store
        self.index = index
        self.rows = None if index is None else SegmentRows(store, index, cache_rows=cache_rows)
        self._close_both = close_both

    @classmethod
    def open(
        cls,
        location: str,
        *,
        index_url: str | None = None,
        s3_endpoint_url: str | None = None,
        s3_region: str | None = None,
    ) -> DatasetReader:
        """An output folder (`out`, `file:///abs/out`) or a bucket prefix (`s3://bucket/ds/`).

        A folder is resolved as every command resolves it (`OutputFolder.find`): its dataset
        is the folder's own, or the one a download in img2dataset's layouts keeps in
        `out/_segments/`, and its index the one the folder records (`--index_name`).
        The index is `index_url` (`postgresql://...` or `sqlite:///...`) when given, else the
        folder's when it has one, else none: sequential reads then follow the manifests and
        random access is unavailable.
        """
        from i2d_segments.connect import open_index, open_store

        folder = None if location.startswith("s3://") else _local_dataset(location)
        if folder is not None:
            store: SegmentStore = folder.open_store()
        else:
            store = open_store(location, s3_endpoint_url=s3_endpoint_url, s3_region=s3_region)
        index: Index | None = None
        try:
            if index_url is not None:
                index = open_index(index_url)
            elif folder is not None:
                from i2d_segments.index.sqlite import SqliteIndex

                # As it is: reading records no descriptor, and migrates only an index written
                # before the compact one (0007), whose lookups could not answer otherwise.
                index = SqliteIndex(folder.index_path)
                if index.needs_migration():
                    log.info("migrating the index %s to the current schema", folder.index_path)
                    index.migrate()
        except BaseException:
            store.close()
            raise
        return cls(store, index, close_both=True)

    def close(self) -> None:
        if self._close_both:
            if self.index is not None:
                self.index.close()
            self.store.close()

    def __enter__(self) -> DatasetReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the segment list -----------------------------------------------------------------

    def segment_ids(self) -> list[str]:
        """Committed segments that hold images, in segment order: from the index, else from
        the wids manifest (one written before empty segments were left out may list them, with
        `nsamples` 0: skipped too)."""
        if self.index is not None:
            return [s.segment_id for s in shard_segments(self.index.segments())]
        try:
            body = self.store.get(WIDS_NAME)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no index and no {WIDS_NAME} in the store: nothing says which segments exist"
            ) from None
        return [segment_id for segment_id, n in segment_ids_from_wids(body) if n > 0]

    def shard_urls(self) -> list[str]:
        """The URIs of `segment_ids()`, for WebDataset, Hugging Face `datasets` or any tar
        reader: the same list as `manifests/shards.txt`."""
        return [self.store.uri(object_name_of(s)) for s in self.segment_ids()]

    # -- sequential -----------------------------------------------------------------------

    def __iter__(self) -> Iterator[Item]:
        return self.iter_items()

    def iter_items(
        self, segment_ids: Iterable[str] | None = None, *, load_images: bool = True
    ) -> Iterator[Item]:
        """Every item of the given segments (default: `segment_ids()`), streaming each once.
        `load_images=False` reads metadata only (image data is skipped, `image` is empty)."""
        for segment_id in self.segment_ids() if segment_ids is None else segment_ids:
            yield from self.iter_segment(segment_id, load_images=load_images)

    def iter_segment(self, segment_id: str, *, load_images: bool = True) -> Iterator[Item]:
        load = None if load_images else METADATA_EXTS
        with self.store.open_stream(object_name_of(segment_id)) as stream:
            for sample in iter_samples(stream, load=load):
                item = _item_from_sample(segment_id, sample)
                if item is not None:
                    yield item

    def iter_samples(
        self, segment_ids: Iterable[str] | None = None, *, verify: bool = True
    ) -> Iterator[Item]:
        """Every input row that has an image, as (image, its own caption and metadata):
        every row is a sample (docs/architecture.md, "Identities"), so an image shared by
        several rows (COCO's five captions of one image, two urls serving the same bytes) is
        yielded once per row, with that row's caption and metadata (`sample_meta`). Segment by
        segment (default: every committed segment, in segment order: one without images may
        hold rows whose image is stored by another), each streamed once; a row whose image
        another segment stores (deduplicated) costs one ranged read. Needs the index (the rows
        are its samples)."""
        rows = self._require_rows()
        if segment_ids is None:
            wanted = [(s.segment_id, s.item_count > 0) for s in rows.index.segments()]
        else:
            wanted = [(s, True) for s in segment_ids]
        for segment_id, holds_items in wanted:
            by_item: dict[str, list[SampleRow]] = {}
            for sample in rows.samples_for_segment(segment_id):
                if sample.item_id is not None:
                    by_item.setdefault(sample.item_id, []).append(sample)
            if not by_item:
                continue
            if holds_items:
                for item in self.iter_segment(segment_id):
                    for sample in by_item.pop(item.item_id, ()):
                        yield _as_sample(item, sample)
            for samples in by_item.values():  # images stored by another segment
                for sample in samples:
                    found = self._sample_item(sample, verify)
                    if found is not None:
                        yield found

    # -- random access --------------------------------------------------------------------

    def _require_rows(self) -> SegmentRows:
        if self.rows is None:
            raise RuntimeError("random access needs the index (pass index_url)")
        return self.rows

    def read_image(self, row: ItemRow, *, verify: bool = True) -> bytes:
        """The stored image of an index row: one ranged read, checked against its sha256."""
        data = self.store.read_range(
            object_name_of(row.segment_id), row.data_offset, row.data_length
        )
        if verify and row.data_sha256 is not None and sha256_hex(data) != row.data_sha256:
            raise CorruptItemError(
                f"item {row.item_id}: bytes at {row.segment_id}@{row.data_offset} do not match "
                "the recorded sha256"
            )
        return data

    def get(self, item_id: str, *, verify: bool = True) -> Item | None:
        """The item stored under `item_id`: one index lookup, one ranged read."""
        row = self._require_rows().item(item_id)
        return None if row is None else self._read_item(row, _item_meta(row), None, verify)

    def get_sample(self, sample_id: str, *, verify: bool = True) -> Item | None:
        """The image of one input row (None if unknown or failed), with that row's metadata."""
        sample = self._require_rows().sample(sample_id)
        return None if sample is None else self._sample_item(sample, verify)

    def get_url(self, url: str, *, verify: bool = True) -> list[Item]:
        """The images stored for every input row with this url (usually one)."""
        out = []
        for sample in self._require_rows().samples_by_url(url):
            item = self._sample_item(sample, verify)
            if item is not None:
                out.append(item)
        return out

    def _sample_item(self, sample: SampleRow, verify: bool) -> Item | None:
        if sample.item_id is None:
            return None
        row = self._require_rows().item(sample.item_id)
        if row is None:
            return None
        return self._read_item(row, sample_meta(sample), sample.caption, verify)

    def _read_item(
        self, row: ItemRow, meta: dict[str, Any], caption: str | None, verify: bool
    ) -> Item:
        """The item of an index row, its bytes by one ranged read."""
        return Item(
            item_id=row.item_id,
            segment_id=row.segment_id,
            ext=row.ext,
            image=self.read_image(row, verify=verify),
            meta=meta,
            caption=caption,
            data_offset=row.data_offset,
            data_length=row.data_length,
        )


def _item_from_sample(segment_id: str, sample: SegmentSample) -> Item | None:
    """A tar sample as an Item; members without an image extension are not items."""
    image_exts = [e for e in sample.locations if e not in METADATA_EXTS]
    if len(image_exts) != 1:
        return None
    ext = image_exts[0]
    location = sample.locations[ext]
    meta_bytes = sample.data.get("json")
    caption = sample.data.get("txt")
    return Item(
        item_id=sample.key,
        segment_id=segment_id,
        ext=ext,
        image=sample.data.get(ext, b""),
        meta=json.loads(meta_bytes) if meta_bytes else {},
        caption=None if caption is None else caption.decode("utf-8"),
        data_offset=location.data_offset,
        data_length=location.data_length,
    )


def _as_sample(item: Item, sample: SampleRow) -> Item:
    """`item`'s image with the metadata and caption of one of its input rows."""
    return Item(
        item_id=item.item_id,
        segment_id=item.segment_id,
        ext=item.ext,
        image=item.image,
        meta=sample_meta(sample),
        caption=sample.caption,
        data_offset=item.data_offset,
        data_length=item.data_length,
    )


def _item_meta(row: ItemRow) -> dict[str, Any]:
    return {
        "item_id": row.item_id,
        "mime": row.mime,
        "width": row.width,
        "height": row.height,
        "original_width": row.original_width,
        "original_height": row.original_height,
    }


def sample_meta(sample: SampleRow) -> dict[str, Any]:
    """img2dataset's metadata of one input row, from its index row (the parquet row's fields)."""
    meta: dict[str, Any] = {
        "url": sample.url,
        "caption": sample.caption,
        "status": sample.status,
        "error_message": sample.error,
    }
    meta.update(sample.attrs)
    meta["sample_id"] = sample.sample_id
    meta["item_id"] = sample.item_id
    return meta


def _local_dataset(location: str) -> OutputFolder | None:
    """The dataset of a local folder, or None when it holds none (a copy of its segments and
    manifests alone). A descriptor that cannot be read is an error, not a folder without an
    index: reading on from the manifests would hide it."""
    path = Path(location[len("file://") :] if location.startswith("file://") else location)
    try:
        return OutputFolder.find(path)
    except FolderError:
        # `at` raises only for a descriptor it cannot read (what `find` tried first).
        OutputFolder.at(path)
        OutputFolder.at(path / INNER_FOLDER)
        return None
