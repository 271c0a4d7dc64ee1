"""HTTP and Prometheus helpers for the status and metrics tests."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from i2d_segments.index import Index, ItemRow, SampleRow, SegmentCommit, SegmentRow
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.store import SegmentStore
from i2d_segments.store.local import LocalStore
from tests.segment_files import store_segment


def http_get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def get_json(url: str) -> Any:
    status, body, content_type = http_get(url)
    assert status == 200, (url, status, body[:500])
    assert content_type.startswith("application/json")
    return json.loads(body)


def scrape(url: str) -> dict[str, Any]:
    """/metrics parsed: family name -> family (prometheus_client's parser)."""
    status, body, content_type = http_get(url)
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


FORBIDDEN_LABELS = {"url", "host", "hostname", "uri", "domain", "path"}


def check_conventions(families: dict[str, Any], prefix: str = "img2dataset_") -> list[str]:
    """Prometheus naming: counters end in _total (the parser strips it from the family name
    and keeps it on the samples), histograms in a unit (_seconds, _bytes), no high-cardinality
    labels. Returns the problems found."""
    problems = []
    for name, family in families.items():
        if not name.startswith(prefix):
            continue
        suffixes = ("_total", "_created")
        if family.type == "counter" and not all(s.name.endswith(suffixes) for s in family.samples):
            problems.append(f"counter {name} has samples without _total")
        if family.type == "histogram" and not name.endswith(("_seconds", "_bytes")):
            problems.append(f"histogram {name} has no unit suffix (_seconds, _bytes)")
        if name.endswith("_total") and family.type != "counter":
            problems.append(f"{family.type} {name} ends in _total")
        for sample in family.samples:
            bad = FORBIDDEN_LABELS & set(sample.labels)
            if bad:
                problems.append(f"{name} has labels {sorted(bad)}")
    return problems


def commit(
    index: Index,
    epoch: int,
    first: int,
    outcomes: str,
    at: float,
    topic: str = "APPEND",
    store: SegmentStore | None = None,
) -> SegmentRow:
    """Commit APPEND offsets first.. with one row each: "s" a success, "f" a failure. The
    segment object is written to `store` (default: `store/` beside a SQLite index's file, where
    the tests' status sources read it)."""
    seg_id = f"p00000/{first:020d}-e{epoch}"
    samples, items = [], []
    for n, outcome in enumerate(outcomes, start=first):
        ok = outcome == "s"
        item_id = hashlib.sha256(b"%d" % n).hexdigest() if ok else None
        samples.append(
            SampleRow(
                sample_id=f"s{n}",
                url=f"http://127.0.0.1/{n}.jpg",
                caption=f"caption {n}",
                status="success" if ok else "failed_to_download",
                error=None if ok else "HTTP Error 404: Not Found",
                item_id=item_id,
                segment_id=seg_id,
                attrs={"width": 64, "height": 48} if ok else {},
                updated_at=at + n,
            )
        )
        if item_id is not None:
            items.append(ItemRow(item_id, seg_id, 512 * (n + 1), 100, "jpg", None, 64, 48, 64, 48))
    last = first + len(outcomes) - 1
    segment = SegmentRow(
        seg_id, topic, 0, first, last, epoch, f"file:///{seg_id}.tar", len(items), len(samples),
        4096, "a" * 64, at + last,
    )  # fmt: skip
    if store is None:
        assert isinstance(index, SqliteIndex)
        store = LocalStore(index.path.parent / "store")
    written = store_segment(store, SegmentCommit(epoch, segment, items, samples, last + 1))
    index.commit_segment(written)
    return written.segment
