"""Exports on request: copies of a chosen part of the dataset in another layout.

The unit is the input row (sample), as in img2dataset's outputs: each selected row is written
with its own metadata and, when it has one, its image (two rows whose urls served the same bytes
each get a copy). Rows are selected by
- status (default: success only; rows without an image only reach the parquet layout),
- `min_image_size`: the smaller side of the original image, in pixels (img2dataset's option),
- an id list: sample ids or item ids, one per line (a subset, as DataComp's resharder takes).

Reading follows the segments: per segment, the selected rows' images come from one streaming
read of the segment, or from ranged reads when only a few of its items are wanted; an image
deduplicated into an earlier segment is one ranged read.

The export's key for a row (its file names, its tar members) is its sample_id when that is a
safe name: 1 to 64 ASCII letters, digits, `_` or `-` (img2dataset's keys, sha256 ids). Any
other sample_id (a 10 KB key, `/`, `..`, dots, NUL, newlines, spaces, non-ASCII...) is named
`sha256-<hex of its UTF-8>`: bounded, deterministic, never a safe sample_id itself (71
characters), so two rows never share a name and none can leave the destination. The metadata
(`key`, `sample_id` in the json and parquet) keeps the value itself.

The destination gets, besides the shards, `export.json` (what was selected, shard list) and,
for `webdataset`, `shards.txt` and a wids `wids.json`. A shard starts with its first row that
has an image (rows without one never reach a tar), so no listed shard is empty: each loads in
any WebDataset reader, Hugging Face `datasets` included, as the dataset's own manifests do.
The segments stay the truth: an export is never read back by the pipeline.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from i2d_materializer.export_writers import ExportRow, ExportWriter, make_writer
from i2d_segments.ids import sha256_hex
from i2d_segments.index import Index, ItemRow, SampleRow, SegmentRow
from i2d_segments.reader import DatasetReader, SegmentRows, sample_meta
from i2d_segments.store import SegmentStore

log = logging.getLogger(__name__)

# Below this share of a segment's items, ranged reads beat streaming the whole object.
RANGED_READ_SHARE = 0.125


class ExportError(RuntimeError):
    """The export cannot run as asked (destination not empty, destination is the dataset)."""


@dataclass(frozen=True)
class ExportFilter:
    statuses: frozenset[str] = frozenset({"success"})
    min_image_size: int = 0
    ids: frozenset[str] | None = None

    def accepts(self, sample: SampleRow) -> bool:
        if sample.status not in self.statuses:
            return False
        if self.ids is not None and not (
            sample.sample_id in self.ids
            or (sample.item_id is not None and sample.item_id in self.ids)
        ):
            return False
        if self.min_image_size > 0:
            w = sample.attrs.get("original_width") or sample.attrs.get("width")
            h = sample.attrs.get("original_height") or sample.attrs.get("height")
            if not isinstance(w, int) or not isinstance(h, int):
                return False
            if min(w, h) < self.min_image_size:
                return False
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "statuses": sorted(self.statuses),
            "min_image_size": self.min_image_size,
            "ids": None if self.ids is None else len(self.ids),
        }


@dataclass
class ExportReport:
    format: str
    samples: int = 0
    with_image: int = 0
    skipped_without_image: int = 0
    segments_streamed: int = 0
    ranged_reads: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)
    filter: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "samples": self.samples,
            "with_image": self.with_image,
            "skipped_without_image": self.skipped_without_image,
            "filter": self.filter,
            "shards": self.shards,
        }


def read_ids(path: str | Path, column: str | None = None) -> frozenset[str]:
    """Ids from a text file (one per line, blanks ignored) or a parquet file (`column`, default
    its first column)."""
    p = Path(path)
    if p.suffix == ".parquet":
        table = pq.read_table(p)
        name = column or table.column_names[0]
        return frozenset(str(v) for v in table.column(name).to_pylist() if v is not None)
    with p.open(encoding="utf-8") as f:
        return frozenset(line.strip() for line in f if line.strip())


def root_uri(store: SegmentStore) -> str:
    """The URI of a store's root folder (object names cannot be empty, so via a child)."""
    return store.uri("export.json").rsplit("/", 1)[0] + "/"


SAFE_KEY = re.compile(r"[A-Za-z0-9_\-]{1,64}")
HASHED_KEY_PREFIX = "sha256-"


def export_key(sample_id: str) -> str:
    """The name a row is exported under (module docstring): its sample_id if safe, else
    `sha256-` + the sha256 of its UTF-8 (a lone surrogate hashes as itself: no two ids meet)."""
    if SAFE_KEY.fullmatch(sample_id):
        return sample_id
    return HASHED_KEY_PREFIX + sha256_hex(sample_id.encode("utf-8", "surrogatepass"))


class Exporter:
    def __init__(
        self,
        store: SegmentStore,
        index: Index,
        dest: SegmentStore,
        fmt: str,
        *,
        samples_per_shard: int = 10_000,
        selection: ExportFilter | None = None,
        overwrite: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.reader = DatasetReader(store, index)
        self.index = index
        self.rows = SegmentRows(store, index)
        self.dest = dest
        self.selection = selection or ExportFilter()
        self.writer: ExportWriter = make_writer(fmt, dest, samples_per_shard)
        self.report = ExportReport(format=fmt, filter=self.selection.describe())
        self.overwrite = overwrite
        self.progress = progress
        self._fmt = fmt
        if dest.uri("x") == store.uri("x"):
            raise ExportError("the export destination is the dataset itself")

    def _prepare_destination(self) -> None:
        existing = list(self.dest.list(""))
        if existing and not self.overwrite:
            raise ExportError(
                f"destination {root_uri(self.dest)} is not empty ({len(existing)} objects); "
                "pass overwrite to replace its contents"
            )
        for info in existing:
            self.dest.delete(info.name)

    def run(self) -> ExportReport:
        self._prepare_destination()
        try:
            for segment in self.index.segments():
                for row in self._segment_rows(segment):
                    self._write(row)
            shards = self.writer.close()
        except BaseException:
            self.writer.abort()
            raise
        ext = "parquet" if self._fmt == "parquet" else "tar" if self._fmt == "webdataset" else ""
        self.report.shards = [
            {"name": f"{s.name}.{ext}" if ext else f"{s.name}/", "nsamples": s.nsamples}
            for s in shards
        ]
        self._write_descriptions()
        return self.report

    def _write(self, row: ExportRow) -> None:
        if row.image is None and not self.writer.takes_rows_without_image:
            self.report.skipped_without_image += 1
            return
        self.writer.write(row)
        self.report.samples += 1
        self.report.with_image += int(row.image is not None)
        if self.progress is not None:
            self.progress(self.report.samples)

    def _write_descriptions(self) -> None:
        body = json.dumps(self.report.as_dict(), indent=1, sort_keys=True).encode()
        self.dest.put("export.json", body)
        if self._fmt == "webdataset":
            names = [s["name"] for s in self.report.shards]
            self.dest.put("shards.txt", "".join(f"{self.dest.uri(n)}\n" for n in names).encode())
            wids = {
                "wids_version": 1,
                "name": "img2dataset-export",
                "shardlist": [
                    {"url": s["name"], "nsamples": s["nsamples"]} for s in self.report.shards
                ],
            }
            self.dest.put("wids.json", json.dumps(wids, indent=1).encode())

    # -- reading one segment's selected rows ---------------------------------------------------

    def _segment_rows(self, segment: SegmentRow) -> Iterator[ExportRow]:
        sid = segment.segment_id
        selected = [s for s in self.rows.samples_for_segment(sid) if self.selection.accepts(s)]
        if not selected:
            return
        here = {i.item_id: i for i in self.rows.items_for_segment(sid)}
        by_item: dict[str, list[SampleRow]] = {}
        elsewhere: list[SampleRow] = []
        without: list[SampleRow] = []
        for s in selected:
            if s.item_id is None:
                without.append(s)
            elif s.item_id in here:
                by_item.setdefault(s.item_id, []).append(s)
            else:
                elsewhere.append(s)
        if by_item:
            if len(by_item) < RANGED_READ_SHARE * len(here):
                rows = sorted((here[i] for i in by_item), key=lambda r: r.data_offset)
                for item in rows:
                    yield from self._rows(by_item[item.item_id], item.ext, self._ranged(item))
            else:
                self.report.segments_streamed += 1
                for it in self.reader.iter_segment(sid):
                    if it.item_id in by_item:
                        yield from self._rows(by_item[it.item_id], it.ext, it.image)
        for s in elsewhere:
            assert s.item_id is not None
            item_row = self.rows.item(s.item_id)
            if item_row is None:
                log.warning(
                    "sample %s points at item %s, which is not indexed", s.sample_id, s.item_id
                )
                yield from self._rows([s], None, None)
            else:
                yield from self._rows([s], item_row.ext, self._ranged(item_row))
        yield from self._rows(without, None, None)

    def _ranged(self, item: ItemRow) -> bytes:
        self.report.ranged_reads += 1
        return self.reader.read_image(item)

    @staticmethod
    def _rows(
        samples: Iterable[SampleRow], ext: str | None, image: bytes | None
    ) -> Iterator[ExportRow]:
        for s in samples:
            yield ExportRow(export_key(s.sample_id), s, sample_meta(s), ext, image)
