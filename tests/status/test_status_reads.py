"""What the status service reads: every figure comes from the totals the index keeps (no query
counts sample rows), the one read of sample rows is the latest-rows list (the rows of a few
newest segments' manifests the index says they hold, by key), and a row that moved to a newer
segment counts once, with its latest outcome."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from i2d_segments.index import SampleRow, SegmentCommit, SegmentRow
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.store.local import LocalStore
from i2d_status.settings import StatusSettings
from i2d_status.source import StatusSource
from tests.segment_files import store_segment
from tests.status.helpers import commit

T0 = 1_000_000.0


def seg_id(first: int) -> str:
    return f"p00000/{first:020d}-e1"


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[tuple[SqliteIndex, Path]]:
    path = tmp_path / "index.sqlite"
    index = SqliteIndex.open(path)
    lease = index.acquire_partition("APPEND", 0, "appender")
    commit(index, lease.epoch, 0, "ssfsf", T0)
    commit(index, lease.epoch, 5, "sffss", T0 + 10)
    # s2 and s4 (failures of the first segment) fetched again: s2 a success, s4 the same
    # failure (it stays in the first segment).
    seg = seg_id(10)
    again = [
        SampleRow(
            "s2",
            "http://127.0.0.1/2.jpg",
            "caption 2",
            "success",
            None,
            "i2",
            seg,
            updated_at=T0 + 30,
        ),
        SampleRow(
            "s4",
            "http://127.0.0.1/4.jpg",
            "caption 4",
            "failed_to_download",
            "HTTP Error 404: Not Found",
            None,
            seg,
            updated_at=T0 + 30,
        ),
    ]
    segment = SegmentRow(
        seg, "APPEND", 0, 10, 11, lease.epoch, "file:///x.tar", 0, 2, 10, "b" * 64, T0 + 20
    )
    store = LocalStore(tmp_path / "store")
    index.commit_segment(store_segment(store, SegmentCommit(lease.epoch, segment, [], again, 12)))
    yield index, path
    index.close()


def test_status_reads_totals_not_rows(folder: tuple[SqliteIndex, Path], tmp_path: Path) -> None:
    index, path = folder
    queries: dict[str, Sequence[Any]] = {}
    fetch = index._fetch

    def recording(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        queries.setdefault(sql, tuple(params))
        return fetch(sql, params)

    index._fetch = recording  # type: ignore[method-assign]
    source = StatusSource(StatusSettings(), index, LocalStore(tmp_path / "store"), None)
    status = source.status()
    view = source.index_view()
    source.queue()
    page = source.segments_page(2, 1)

    # 10 rows: s2 counts once, as the success it became; s4 stays the failure it was.
    p = status.progress
    assert (p.samples, p.committed, p.successes, p.failures) == (10, 10, 7, 3)
    assert p.by_status == {"success": 7, "failed_to_download": 3}
    assert [(f.reason, f.count) for f in status.failures] == [("HTTP Error 404: Not Found", 3)]
    assert view.totals.samples == 10 and view.totals.segments == 3
    assert view.status_counts == p.by_status
    assert [s.first_offset for s in page.segments] == [5, 0] and page.total == 3  # newest first
    newest = status.recent[0]  # the row fetched again, recorded last
    assert (newest.sample_id, newest.status, newest.segment_id) == ("s2", "success", seg_id(10))
    assert len(status.recent) == 10 and len({r.sample_id for r in status.recent}) == 10

    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows_read = []
        for sql, params in queries.items():
            plan = [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            touched = [step for step in plan if step.split()[1:2] in (["sample_index"], ["si"])]
            assert not [step for step in touched if step.startswith("SCAN")], (sql, plan)
            if touched:
                rows_read.append((sql, plan))
    # The one read of sample rows: which rows of a few newest segments' manifests they hold,
    # by the slots of their keys (bounded by the manifests' rows).
    assert rows_read
    for sql, plan in rows_read:
        assert "si.sample_key IN" in sql
        assert any("USING INDEX sample_index_slot" in step for step in plan), plan
