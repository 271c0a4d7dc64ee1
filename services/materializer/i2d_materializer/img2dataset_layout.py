"""img2dataset's own output layouts, written from the segments after a download.

`img2dataset download --output_format files|parquet|tfrecord|dummy` writes what img2dataset 1.47
writes into the output folder, row for row: the rows of input shard N (rows
N x number_sample_per_shard ...) are shard `{N:0{oom_shard_count}d}`, named by img2dataset's
`key`, with img2dataset's metadata columns in its order:

- `files`: `{shard}/{key}.{encode_format}`, `{key}.json` (the metadata, indent 4) and
  `{key}.txt` (with caption_col) per image, `{shard}.parquet` (every row, failures too);
- `parquet`: `{shard}.parquet`, the metadata columns plus the image bytes in a column named
  after encode_format (`jpg`), null for failures;
- `tfrecord`: `{shard}.tfrecord`, one `tf.train.Example` per image (`key`, `jpg`, `txt` with
  caption_col, and every metadata field) written without TensorFlow (tfrecord.py), and
  `{shard}.parquet`;
- `dummy`: no images nor parquet;
- and for every format `{shard}_stats.json` (count, successes, failed_to_download,
  failed_to_resize, duration, start_time, end_time, status_dict), written last.

The segments stay the truth: the layout is a copy, rewritten shard by shard from the index.
A shard is written again only when what it would hold changed (its rows' metadata, the stored
bytes' sha256, or the layout options): the fingerprint of each shard written is kept in the
dataset's folder (`img2dataset_layout.json`), so a resumed or incremental download rewrites only
the shards its new rows fall in. Shards no longer in the dataset are removed.

Shard of a row: its img2dataset key divided by 10^ceil(log10(number_sample_per_shard)). A row
that carries its own non-numeric `key` (ours keep it; img2dataset ignores input keys) has no
place in a list shard: such rows go, in key order, to shards after the last numbered one, and
their files are named by `export_key` (a key that is not a safe file name is hashed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from i2d_materializer import tfrecord
from i2d_materializer.export import export_key
from i2d_materializer.metadata import _array
from i2d_materializer.tfrecord import encode_example, feature_of, frame
from i2d_segments.index import Index, ItemRow, SampleRow
from i2d_segments.reader import DatasetReader, SegmentRows
from i2d_segments.store import SegmentStore

log = logging.getLogger(__name__)

LAYOUT_FORMATS = ("files", "parquet", "tfrecord", "dummy")
STATE_FILE = "img2dataset_layout.json"
# Layout version: a change of what a shard holds for the same rows rewrites every shard.
VERSION = 1
_INT32_COLUMNS = ("width", "height", "original_width", "original_height")
_STATS_KEYS = ("count", "successes", "failed_to_download", "failed_to_resize")
# Segments whose rows are kept in memory at once (a shard's rows span one or two of them).
_SEGMENT_CACHE = 4
_PARQUET_BATCH = 100


@dataclass(frozen=True)
class LayoutSpec:
    """The download options that shape img2dataset's layout."""

    output_format: str
    number_sample_per_shard: int = 10_000
    oom_shard_count: int = 5
    encode_format: str = "jpg"
    input_format: str = "txt"
    caption: bool = False  # caption_col was given: `.txt` members / `txt` features
    additional_columns: tuple[str, ...] = ()  # save_additional_columns, then bbox_col
    extract_exif: bool = True
    compute_hash: str | None = "sha256"
    # verify_hash's [column, type]: img2dataset reads the column as the hash type's column
    verify_hash: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.output_format not in LAYOUT_FORMATS:
            raise ValueError(f"not an img2dataset layout: {self.output_format!r}")

    @property
    def row_digits(self) -> int:
        return math.ceil(math.log10(self.number_sample_per_shard))

    def shard_name(self, shard: int) -> str:
        return f"{shard:0{self.oom_shard_count}d}"

    def shard_of(self, key: Any) -> int | None:
        """The list shard of an img2dataset key; None for a key of the row's own."""
        if not isinstance(key, str) or not key.isascii() or not key.isdigit():
            return None
        return int(key) // 10**self.row_digits

    def _input_columns(self) -> list[str]:
        """img2dataset's reader's column_list (txt lists have only the url)."""
        if self.input_format.removesuffix(".gz") == "txt":
            return ["url"]
        cols = list(self.additional_columns)
        if self.caption:
            cols.append("caption")
        if self.verify_hash is not None:
            cols.append(self.verify_hash[1])
        cols.append("url")
        return list(dict.fromkeys(cols))

    def _tail(self) -> list[str]:
        tail = ["key", "status", "error_message", *_INT32_COLUMNS]
        if self.extract_exif:
            tail.append("exif")
        return tail

    def parquet_columns(self) -> list[str]:
        """The metadata parquet's columns in img2dataset's order (its schema)."""
        cols = [*self._input_columns(), *self._tail()]
        if self.compute_hash is not None and self.compute_hash not in cols:
            cols.append(self.compute_hash)
        return cols

    def json_columns(self) -> list[str]:
        """The per-sample json's fields in img2dataset's order (its meta dict): verify_hash's
        column comes last, as the hash computed from the bytes."""
        verified = self.verify_hash[1] if self.verify_hash is not None else None
        cols = [c for c in self._input_columns() if c != verified] + self._tail()
        if self.compute_hash is not None:
            cols.append(self.compute_hash)
        return list(dict.fromkeys(cols))

    def meta(self, sample: SampleRow) -> dict[str, Any]:
        """img2dataset's metadata of one row, in its json order."""
        success = sample.status == "success"
        attrs = sample.attrs
        hashes = {self.compute_hash} if self.compute_hash else set()
        if self.verify_hash is not None:
            hashes.add(self.verify_hash[1])
        meta: dict[str, Any] = {}
        for col in self.json_columns():
            if col == "url":
                meta[col] = sample.url
            elif col == "caption":
                meta[col] = sample.caption
            elif col == "status":
                meta[col] = sample.status
            elif col == "error_message":
                meta[col] = sample.error
            elif col in hashes or col == "exif":
                # img2dataset fills these from the bytes of an image it kept, only
                meta[col] = attrs.get(col) if success else None
            else:
                meta[col] = attrs.get(col)
        return meta

    def describe(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "output_format": self.output_format,
            "number_sample_per_shard": self.number_sample_per_shard,
            "oom_shard_count": self.oom_shard_count,
            "encode_format": self.encode_format,
            "columns": self.parquet_columns(),
            "json_columns": self.json_columns(),
            "caption": self.caption,
        }


@dataclass
class LayoutReport:
    output_format: str
    shards: int = 0
    written: int = 0
    unchanged: int = 0
    removed: int = 0
    rows: int = 0
    images: int = 0
    names: list[str] = field(default_factory=list, repr=False)


@dataclass
class _ShardPlan:
    """The segments holding a shard's rows; for a shard of rows with keys of their own, which
    rows (sample ids) it holds."""

    segments: set[str] = field(default_factory=set)
    samples: frozenset[str] | None = None


def _sort_key(sample: SampleRow) -> str:
    key = sample.attrs.get("key")
    return sample.sample_id if key is None else str(key)


@dataclass
class _Row:
    sample: SampleRow
    meta: dict[str, Any]
    item: ItemRow | None


class Img2datasetLayout:
    """Writes img2dataset's layout of the dataset (`store` + `index`) into `dest`; keeps its
    shard fingerprints in `state_path`."""

    def __init__(
        self,
        store: SegmentStore,
        index: Index,
        dest: Path,
        spec: LayoutSpec,
        state_path: Path,
    ) -> None:
        self.reader = DatasetReader(store, index)
        self.index = index
        self.rows = SegmentRows(store, index)
        self.dest = Path(dest)
        self.spec = spec
        self.state_path = Path(state_path)
        self._samples: OrderedDict[str, list[SampleRow]] = OrderedDict()
        self._items: OrderedDict[str, dict[str, ItemRow]] = OrderedDict()
        self._created: dict[str, float] = {}  # segment -> when it was opened
        self._slow_crc_said = False

    # -- the plan: which segments hold each shard's rows ---------------------------------------

    def _plan(self) -> dict[int, _ShardPlan]:
        plans: dict[int, _ShardPlan] = {}
        own_keys: list[tuple[str, str, str]] = []  # (key, sample_id, segment): keys of their own
        for segment in self.index.segments():
            sid = segment.segment_id
            self._created[sid] = segment.created_at
            for s in self._segment_samples(sid):
                shard = self.spec.shard_of(s.attrs.get("key"))
                if shard is None:
                    own_keys.append((_sort_key(s), s.sample_id, sid))
                else:
                    plans.setdefault(shard, _ShardPlan()).segments.add(sid)
        plan = dict(sorted(plans.items()))
        # Beyond the list's shards, in key order, number_sample_per_shard rows per shard.
        own_keys.sort()
        first = max(plans, default=-1) + 1
        per = self.spec.number_sample_per_shard
        for i in range(0, len(own_keys), per):
            chunk = own_keys[i : i + per]
            plan[first + i // per] = _ShardPlan(
                {sid for _, _, sid in chunk}, frozenset(sample for _, sample, _ in chunk)
            )
        return plan

    def _segment_samples(self, segment_id: str) -> list[SampleRow]:
        cached = self._samples.get(segment_id)
        if cached is None:
            cached = self.rows.samples_for_segment(segment_id)
            self._samples[segment_id] = cached
            while len(self._samples) > _SEGMENT_CACHE:
                self._samples.popitem(last=False)
        else:
            self._samples.move_to_end(segment_id)
        return cached

    def _item(self, sample: SampleRow) -> ItemRow | None:
        if sample.item_id is None:
            return None
        items = self._items.get(sample.segment_id)
        if items is None:
            items = {i.item_id: i for i in self.rows.items_for_segment(sample.segment_id)}
            self._items[sample.segment_id] = items
            while len(self._items) > _SEGMENT_CACHE:
                self._items.popitem(last=False)
        row = items.get(sample.item_id)
        # an image deduplicated into an earlier segment
        return row if row is not None else self.rows.item(sample.item_id)

    def _shard_rows(self, shard: int, plan: _ShardPlan) -> list[_Row]:
        samples: list[SampleRow] = []
        for sid in sorted(plan.segments):
            for s in self._segment_samples(sid):
                if plan.samples is None:
                    if self.spec.shard_of(s.attrs.get("key")) == shard:
                        samples.append(s)
                elif s.sample_id in plan.samples:
                    samples.append(s)
        samples.sort(key=lambda s: (_sort_key(s), s.sample_id))
        rows = []
        for s in samples:
            item = self._item(s) if s.status == "success" else None
            if s.status == "success" and item is None:
                log.warning("row %s points at item %s, not indexed", s.sample_id, s.item_id)
            rows.append(_Row(s, self.spec.meta(s), item))
        return rows

    # -- writing -------------------------------------------------------------------------------

    def run(self) -> LayoutReport:
        report = LayoutReport(self.spec.output_format)
        old = self._load_state()
        state: dict[str, str] = {}
        self.dest.mkdir(parents=True, exist_ok=True)
        for shard, plan in self._plan().items():
            name = self.spec.shard_name(shard)
            rows = self._shard_rows(shard, plan)
            fingerprint = self._fingerprint(rows)
            report.shards += 1
            report.rows += len(rows)
            report.images += sum(r.item is not None for r in rows)
            report.names.append(name)
            if old.get(name) == fingerprint and (self.dest / f"{name}_stats.json").is_file():
                report.unchanged += 1
            else:
                self._remove(name)
                self._write_shard(name, rows)
                report.written += 1
            state[name] = fingerprint
            if report.written and report.written % 50 == 0:
                self._save_state(state, old)  # progress survives an interruption
        for name in sorted(set(old) - set(state)):
            self._remove(name)
            report.removed += 1
        if report.written or report.removed:
            os.sync()  # the files on disk before the record that says they are written
        self._save_state(state, {})
        return report

    def _fingerprint(self, rows: Sequence[_Row]) -> str:
        h = hashlib.sha256(json.dumps(self.spec.describe(), sort_keys=True).encode())
        for r in rows:
            data = None if r.item is None else (r.item.data_sha256 or r.item.item_id)
            line = json.dumps([r.meta, data], sort_keys=True, default=str, ensure_ascii=False)
            h.update(line.encode("utf-8", "surrogatepass") + b"\n")
        return h.hexdigest()

    def _load_state(self) -> dict[str, str]:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        if not isinstance(state, dict) or state.get("dest") != str(self.dest.absolute()):
            return {}
        shards = state.get("shards")
        return dict(shards) if isinstance(shards, dict) else {}

    def _save_state(self, state: dict[str, str], old: dict[str, str]) -> None:
        # While running, shards not reached yet keep their old entries: an interruption
        # leaves them known, so they are removed or kept by the next run.
        shards = {**old, **state}
        body = {
            "dest": str(self.dest.absolute()),
            "spec": self.spec.describe(),
            "shards": dict(sorted(shards.items())),
        }
        _write_atomic(self.state_path, json.dumps(body, indent=1).encode())

    def _remove(self, name: str) -> None:
        """Whatever a shard of any img2dataset layout left under this name."""
        folder = self.dest / name
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
        for suffix in ("_stats.json", ".parquet", ".tfrecord", ".tar"):
            (self.dest / f"{name}{suffix}").unlink(missing_ok=True)

    def _write_shard(self, name: str, rows: Sequence[_Row]) -> None:
        fmt = self.spec.output_format
        if fmt == "files":
            self._write_files(name, rows)
        if fmt == "tfrecord":
            self._write_tfrecord(name, rows)
        if fmt != "dummy":
            self._write_parquet(name, rows, with_images=fmt == "parquet")
        _write_atomic(self.dest / f"{name}_stats.json", self._stats(rows))

    def _image(self, row: _Row) -> bytes:
        assert row.item is not None
        return self.reader.read_image(row.item)

    def _with_image(self, rows: Sequence[_Row]) -> Iterator[tuple[_Row, bytes]]:
        for r in rows:
            if r.item is not None:
                yield r, self._image(r)

    def _file_key(self, row: _Row) -> str:
        return export_key(_sort_key(row.sample))

    def _write_files(self, name: str, rows: Sequence[_Row]) -> None:
        folder = self.dest / name
        folder.mkdir(parents=True, exist_ok=True)
        ext = self.spec.encode_format
        for r, image in self._with_image(rows):
            base = folder / self._file_key(r)
            base.with_name(f"{base.name}.{ext}").write_bytes(image)
            if self.spec.caption:
                caption = r.sample.caption
                base.with_name(f"{base.name}.txt").write_text(
                    "" if caption is None else caption, encoding="utf-8"
                )
            base.with_name(f"{base.name}.json").write_text(
                json.dumps(r.meta, indent=4), encoding="utf-8"
            )

    def _write_tfrecord(self, name: str, rows: Sequence[_Row]) -> None:
        if tfrecord.crc32c is tfrecord.crc32c_python and not self._slow_crc_said:
            self._slow_crc_said = True
            log.info("tfrecord: CRC-32C in Python; pip install google-crc32c for a faster one")
        path = self.dest / f"{name}.tfrecord"
        tmp = path.with_name(f".{path.name}.part")
        ext = self.spec.encode_format
        with tmp.open("wb") as f:
            for r, image in self._with_image(rows):
                features: dict[str, Any] = {
                    "key": ("bytes", [str(r.meta.get("key") or "").encode("utf-8")]),
                    ext: ("bytes", [image]),
                }
                if self.spec.caption:
                    caption = r.sample.caption
                    features["txt"] = ("bytes", [("" if caption is None else caption).encode()])
                for k, v in r.meta.items():
                    features[k] = feature_of(v)
                f.write(frame(encode_example(features)))
        os.replace(tmp, path)

    def _schema(self, rows: Sequence[_Row], with_images: bool) -> pa.Schema:
        fields = []
        text = {"url", "caption", "key", "status", "error_message", "exif", self.spec.compute_hash}
        if self.spec.verify_hash is not None:
            text.add(self.spec.verify_hash[1])
        for col in self.spec.parquet_columns():
            if col in _INT32_COLUMNS:
                fields.append(pa.field(col, pa.int32()))
            elif col in text:
                fields.append(pa.field(col, pa.string()))
            else:  # an input column: the type its values have (mixed: JSON text)
                arr = _array([r.meta.get(col) for r in rows])
                fields.append(pa.field(col, pa.string() if arr.type == pa.null() else arr.type))
        if with_images:
            fields.append(pa.field(self.spec.encode_format, pa.binary()))
        return pa.schema(fields)

    def _write_parquet(self, name: str, rows: Sequence[_Row], *, with_images: bool) -> None:
        """img2dataset's parquet of the shard (every row), written 100 rows at a time as its
        BufferedParquetWriter does, so the images of a shard are never all in memory."""
        schema = self._schema(rows, with_images)
        path = self.dest / f"{name}.parquet"
        tmp = path.with_name(f".{path.name}.part")
        with pq.ParquetWriter(tmp, schema) as writer:
            for i in range(0, max(len(rows), 1), _PARQUET_BATCH):
                batch = rows[i : i + _PARQUET_BATCH]
                columns: list[list[Any]] = []
                for i, f in enumerate(schema):
                    if with_images and i == len(schema) - 1:
                        columns.append([None if r.item is None else self._image(r) for r in batch])
                    else:
                        columns.append([_cell(r.meta.get(f.name), f.type) for r in batch])
                writer.write_table(
                    pa.Table.from_arrays(
                        [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)],
                        schema=schema,
                    )
                )
        os.replace(tmp, path)

    def _stats(self, rows: Sequence[_Row]) -> bytes:
        """img2dataset's `{shard}_stats.json`: the shard's counts and its time span (from the
        first of its segments opening to its last row recorded)."""
        statuses = Counter(r.sample.status for r in rows)
        status_dict = Counter(r.sample.error or r.sample.status for r in rows)
        times = [r.sample.updated_at for r in rows]
        opened = [self._created.get(r.sample.segment_id) for r in rows]
        start = min([t for t in opened if t is not None] + times, default=0.0)
        end = max(times, default=start)
        stats: dict[str, Any] = {
            "count": len(rows),
            "successes": statuses.get("success", 0),
            "failed_to_download": statuses.get("failed_to_download", 0),
            "failed_to_resize": statuses.get("failed_to_resize", 0),
            "duration": end - start,
            "start_time": start,
            "end_time": end,
            "status_dict": dict(status_dict.most_common()),
        }
        assert all(k in stats for k in _STATS_KEYS)
        return json.dumps(stats, indent=4).encode()


def _cell(value: Any, type_: pa.DataType) -> Any:
    """A value of a text column that is not text (mixed input types) as JSON text."""
    if type_ == pa.string() and value is not None and not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return value


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
