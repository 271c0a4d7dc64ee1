"""Output layouts of `img2dataset materialize --export`: each writes rows into shards of N.

Every layout also writes, per shard, img2dataset's metadata parquet of the rows it holds
(`{shard}.parquet`; the parquet layout's shard is that file, with the image bytes added).

- `webdataset`: `{shard:05d}.tar`, samples `<key>.<ext>`, `.json`, `.txt` (the segment format);
- `files`: `{shard:05d}/<key>.<ext>`, `.json`, `.txt`, as img2dataset's `files` output;
- `parquet`: `{shard:05d}.parquet` with the metadata columns plus `ext` and `image` (bytes);
  the one layout that can hold rows without an image (failures), with nulls there.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from i2d_materializer.metadata import metadata_table, parquet_bytes
from i2d_segments.index import SampleRow
from i2d_segments.segment import SegmentWriter, sample_members
from i2d_segments.store import SegmentStore

FORMATS = ("webdataset", "files", "parquet")


@dataclass(frozen=True, slots=True)
class ExportRow:
    key: str
    sample: SampleRow
    meta: dict[str, Any]
    ext: str | None = None
    image: bytes | None = None


@dataclass
class ShardInfo:
    name: str
    nsamples: int
    rows: list[SampleRow] = field(default_factory=list, repr=False)


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


class ExportWriter(ABC):
    """Rolls shards every `samples_per_shard` rows; `close()` finishes the last one."""

    takes_rows_without_image = False
    # Every layout gets img2dataset's metadata parquet per shard, except the one whose shard
    # already is that parquet.
    writes_metadata_parquet = True

    def __init__(self, dest: SegmentStore, samples_per_shard: int) -> None:
        if samples_per_shard < 1:
            raise ValueError("samples_per_shard must be >= 1")
        self.dest = dest
        self.samples_per_shard = samples_per_shard
        self.shards: list[ShardInfo] = []
        self._open: ShardInfo | None = None

    def write(self, row: ExportRow) -> None:
        if self._open is None:
            self._open = ShardInfo(shard_name(len(self.shards)), 0)
            self._begin(self._open)
        self._add(self._open, row)
        self._open.rows.append(row.sample)
        self._open.nsamples += 1
        if self._open.nsamples >= self.samples_per_shard:
            self._finish_open()

    def close(self) -> list[ShardInfo]:
        if self._open is not None:
            self._finish_open()
        return self.shards

    def abort(self) -> None:
        """Drop the shard in progress (an error stopped the export)."""
        self._open = None

    def _finish_open(self) -> None:
        assert self._open is not None
        shard, self._open = self._open, None
        self._finish(shard)
        if self.writes_metadata_parquet:
            self.dest.put(f"{shard.name}.parquet", parquet_bytes(metadata_table(shard.rows)))
        shard.rows = []
        self.shards.append(shard)

    def _begin(self, shard: ShardInfo) -> None:  # noqa: B027 - optional hook
        """Start a shard."""

    @abstractmethod
    def _add(self, shard: ShardInfo, row: ExportRow) -> None: ...

    @abstractmethod
    def _finish(self, shard: ShardInfo) -> None: ...


class WebdatasetExportWriter(ExportWriter):
    def __init__(self, dest: SegmentStore, samples_per_shard: int) -> None:
        super().__init__(dest, samples_per_shard)
        self._writer: SegmentWriter | None = None
        self._upload: Any = None

    def _begin(self, shard: ShardInfo) -> None:
        self._upload = self.dest.begin_upload(f"{shard.name}.tar")
        self._writer = SegmentWriter(self._upload.write)

    def _add(self, shard: ShardInfo, row: ExportRow) -> None:
        assert self._writer is not None and row.ext is not None and row.image is not None
        caption = row.sample.caption
        self._writer.add_sample(
            row.key, sample_members(row.key, row.ext, row.image, row.meta, caption)
        )

    def _finish(self, shard: ShardInfo) -> None:
        assert self._writer is not None and self._upload is not None
        self._writer.finish()
        self._upload.complete()
        self._writer, self._upload = None, None

    def abort(self) -> None:
        if self._upload is not None:
            self._upload.abort()
        self._writer, self._upload = None, None
        super().abort()


class FilesExportWriter(ExportWriter):
    def _add(self, shard: ShardInfo, row: ExportRow) -> None:
        assert row.ext is not None and row.image is not None
        base = f"{shard.name}/{row.key}"
        self.dest.put(f"{base}.{row.ext}", row.image)
        text = json.dumps(row.meta, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        self.dest.put(f"{base}.json", text.encode("utf-8"))
        if row.sample.caption is not None:
            self.dest.put(f"{base}.txt", row.sample.caption.encode("utf-8"))

    def _finish(self, shard: ShardInfo) -> None:
        pass


class ParquetExportWriter(ExportWriter):
    takes_rows_without_image = True
    writes_metadata_parquet = False

    def __init__(self, dest: SegmentStore, samples_per_shard: int) -> None:
        super().__init__(dest, samples_per_shard)
        self._exts: list[str | None] = []
        self._images: list[bytes | None] = []

    def _add(self, shard: ShardInfo, row: ExportRow) -> None:
        self._exts.append(row.ext)
        self._images.append(row.image)

    def _finish(self, shard: ShardInfo) -> None:
        table = metadata_table(shard.rows)
        table = table.append_column("ext", pa.array(self._exts, type=pa.string()))
        table = table.append_column("image", pa.array(self._images, type=pa.binary()))
        self.dest.put(f"{shard.name}.parquet", parquet_bytes(table))
        self._exts, self._images = [], []

    def abort(self) -> None:
        self._exts, self._images = [], []
        super().abort()


def make_writer(fmt: str, dest: SegmentStore, samples_per_shard: int) -> ExportWriter:
    writers: dict[str, type[ExportWriter]] = {
        "webdataset": WebdatasetExportWriter,
        "files": FilesExportWriter,
        "parquet": ParquetExportWriter,
    }
    if fmt not in writers:
        raise ValueError(f"unknown export format {fmt!r} (want one of {', '.join(FORMATS)})")
    return writers[fmt](dest, samples_per_shard)
