"""An index as the code before migration 0007 wrote it, frozen here: the tests of migrations 0006
and 0007 write with it (full text rows in `samples` and `items`) and then migrate in place."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from i2d_segments.index import ItemRow, SampleRow, SegmentCommit, rows
from i2d_segments.index.rows import clean_opt, clean_text, cols, encode_attrs
from i2d_segments.index.schema import Engine, load_migrations

# The segments' columns before 0007 added manifest_offset and manifest_length.
SEGMENT_COLUMNS = rows.SEGMENT_COLUMNS[:12]
ITEM_COLUMNS = (
    "item_id",
    "segment_id",
    "data_offset",
    "data_length",
    "ext",
    "mime",
    "width",
    "height",
    "original_width",
    "original_height",
    "data_sha256",
)
SAMPLE_COLUMNS = (
    "sample_id",
    "url",
    "caption",
    "status",
    "error",
    "item_id",
    "segment_id",
    "attrs",
    "updated_at",
)

# The sample upsert of migration 0005 (latest outcome wins; the moved row remembers where from).
UPSERT_SAMPLE = (
    f"INSERT INTO samples ({cols(SAMPLE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(SAMPLE_COLUMNS))}) ON CONFLICT (sample_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in SAMPLE_COLUMNS[1:])
    + ", previous_segment_id = samples.segment_id WHERE "
    + " OR ".join(
        f"COALESCE(samples.{c}, '') <> COALESCE(excluded.{c}, '')"
        for c in ("url", "caption", "status", "error", "item_id")
    )
    + " OR samples.attrs <> excluded.attrs"
)
INSERT_MOVES = (
    "INSERT INTO segment_moves (segment_id, from_segment_id, samples) "
    "SELECT segment_id, previous_segment_id, COUNT(*) FROM samples "
    "WHERE segment_id = ? AND previous_segment_id IS NOT NULL "
    "GROUP BY segment_id, previous_segment_id"
)


def item_values(i: ItemRow, segment_id: str) -> tuple[Any, ...]:
    return (
        clean_text(i.item_id),
        segment_id,
        i.data_offset,
        i.data_length,
        clean_text(i.ext),
        clean_opt(i.mime),
        i.width,
        i.height,
        i.original_width,
        i.original_height,
        i.data_sha256,
    )


def sample_values(s: SampleRow, segment_id: str, now: float) -> tuple[Any, ...]:
    return (
        clean_text(s.sample_id),
        clean_text(s.url),
        clean_opt(s.caption),
        clean_text(s.status),
        clean_opt(s.error),
        clean_opt(s.item_id),
        segment_id,
        encode_attrs(s.attrs),
        s.updated_at if s.updated_at else now,
    )


class OldWriter:
    """An index created by migrations 1..`version` (at most 5) and written as the code of 0005
    wrote it: no totals (0006 counts them from the rows), text rows (0007 makes them compact)."""

    def __init__(self, kind: Engine, where: str, version: int = 5) -> None:
        self.kind = kind
        if kind == "sqlite":
            self.conn: Any = sqlite3.connect(where, isolation_level=None)
        else:
            self.conn = psycopg.connect(where, autocommit=True)
        with self.transaction():
            self.run(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT "
                "NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
            for m in load_migrations(kind):
                if m.version <= version:
                    for statement in m.statements():
                        self.run(statement)
                    self.run("INSERT INTO schema_migrations VALUES (?, ?, 0)", (m.version, m.name))

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(sql if self.kind == "sqlite" else sql.replace("?", "%s"), params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self.kind == "sqlite":
            self.conn.execute("BEGIN IMMEDIATE")
            yield
            self.conn.execute("COMMIT")
        else:
            with self.conn.transaction():
                yield

    def commit(self, c: SegmentCommit) -> None:
        s = c.segment
        values = (
            clean_text(s.segment_id), clean_text(s.topic), s.partition, s.first_offset,
            s.last_offset, s.epoch, clean_text(s.uri), s.item_count, s.sample_count, s.bytes,
            s.sha256, s.created_at,
        )  # fmt: skip
        with self.transaction():
            self.run(
                f"INSERT INTO segments ({cols(SEGMENT_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(SEGMENT_COLUMNS))})",
                values,
            )
            for i in c.items:
                self.run(
                    f"INSERT INTO items ({cols(ITEM_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(ITEM_COLUMNS))}) "
                    "ON CONFLICT (item_id) DO NOTHING",
                    item_values(i, values[0]),
                )
            for sample in c.samples:
                self.run(UPSERT_SAMPLE, sample_values(sample, values[0], 1.0))
            self.run(INSERT_MOVES, (values[0],))
            self.run(
                'INSERT INTO partitions (topic, "partition", epoch, next_offset, owner, '
                "updated_at) VALUES (?, ?, ?, ?, 'old', 0) ON CONFLICT (topic, \"partition\") "
                "DO UPDATE SET epoch = excluded.epoch, next_offset = excluded.next_offset",
                (values[1], s.partition, s.epoch, c.next_offset),
            )

    def close(self) -> None:
        self.conn.close()
