"""What the materializer leaves next to a real dataset: img2dataset's metadata parquet and
stats per segment, the dataset manifests (WebDataset shard lists, wids JSON, summary), the
same bytes however often a SEGMENT_CLOSED arrives, and a user's consumer on the framework."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq
from braceexpand import braceexpand

from i2d_appender.announce import closed_event
from i2d_materializer.service import MaterializerService
from i2d_materializer.settings import MaterializerSettings
from i2d_segments.bus.memory import MemoryBus
from i2d_segments.index import SegmentRow
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.naming import object_name_of
from i2d_segments.store.local import LocalStore
from tests.img2dataset_columns import IMG2DATASET_COLUMNS
from tests.reader.dataset import Dataset
from tests.rows import folder_rows

REPO = Path(__file__).resolve().parents[2]


def outputs(folder: Path) -> dict[str, bytes]:
    """Every materialized file: sidecars next to the segments and the manifests."""
    names = [p for p in (folder / "segments").rglob("*") if p.is_file() and p.suffix != ".tar"]
    names += [p for p in (folder / "manifests").rglob("*") if p.is_file()]
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(names)}


def test_metadata_parquet_and_stats_per_segment(dataset: Dataset) -> None:
    index = SqliteIndex(dataset.folder / "index.sqlite")
    try:
        segments = index.segments()
        by_url = {r["url"]: r for r in dataset.rows}
        seen = 0
        for seg in segments:
            base = dataset.folder / object_name_of(seg.segment_id)[: -len(".tar")]
            table = pq.read_table(f"{base}.parquet")
            assert table.column_names[: len(IMG2DATASET_COLUMNS)] == IMG2DATASET_COLUMNS
            assert {"license", "sample_id", "item_id"} <= set(table.column_names)
            rows = table.to_pylist()
            assert len(rows) == seg.sample_count
            for r in rows:
                src = by_url[r["url"]]
                assert r["caption"] == src["caption"] and r["license"] == src["license"]
                assert r["key"] == src.get("key", r["key"])
                if "missing" in r["url"]:
                    assert r["status"] == "failed_to_download" and "404" in r["error_message"]
                    assert r["width"] is None and r["item_id"] is None
                elif "notimage" in r["url"]:
                    assert r["status"] == "failed_to_resize" and r["error_message"]
                else:
                    assert r["status"] == "success" and r["error_message"] is None
                    assert r["width"] == 64 and r["height"] == 64  # --image_size 64, border
                    assert r["sha256"] == r["item_id"] and len(r["item_id"]) == 64
                    assert r["original_width"] >= 80 and r["original_height"] >= 60
            seen += len(rows)

            stats = json.loads(Path(f"{base}_stats.json").read_text())
            statuses = [r["status"] for r in rows]
            assert stats["count"] == len(rows)
            assert stats["successes"] == statuses.count("success")
            assert stats["failed_to_download"] == statuses.count("failed_to_download")
            assert stats["failed_to_resize"] == statuses.count("failed_to_resize")
            assert sum(stats["status_dict"].values()) == len(rows)
            assert stats["status_dict"].get("success", 0) == statuses.count("success")
            assert stats["segment_id"] == seg.segment_id and stats["bytes"] == seg.bytes
            assert stats["item_count"] == seg.item_count and stats["sha256"] == seg.sha256
            sizes = stats["sizes"]
            items = folder_rows(dataset.folder, index).items_for_segment(seg.segment_id)
            assert sizes["image_bytes"] == sum(i.data_length for i in items)
            assert sizes["width"]["min"] == sizes["width"]["max"] == 64
            assert stats["end_time"] >= stats["start_time"]
        assert seen == len(dataset.rows)
    finally:
        index.close()


def test_manifests_list_the_segments_for_webdataset_and_wids(dataset: Dataset) -> None:
    index = SqliteIndex(dataset.folder / "index.sqlite")
    try:
        segments = index.segments()
        counts = index.status_counts()
    finally:
        index.close()
    store = LocalStore(dataset.folder)
    manifests = dataset.folder / "manifests"
    # Every segment holding an image (here all of them: see test_segments_without_images).
    listed = [s for s in segments if s.item_count > 0]
    assert listed == segments
    urls = [store.uri(object_name_of(s.segment_id)) for s in listed]
    assert (manifests / "shards.txt").read_text().splitlines() == urls
    brace = (manifests / "shards_brace.txt").read_text().strip()
    assert list(braceexpand(brace)) == urls

    wids = json.loads((manifests / "wids.json").read_text())
    assert wids["wids_version"] == 1
    assert [(s["url"], s["nsamples"]) for s in wids["shardlist"]] == [
        (f"../{object_name_of(s.segment_id)}", s.item_count) for s in listed
    ]
    for shard in wids["shardlist"]:  # relative to the manifest, so the folder can move
        assert (manifests / shard["url"]).resolve().is_file()

    summary = json.loads((manifests / "summary.json").read_text())
    assert summary["segments"] == summary["shard_count"] == len(segments)
    assert summary["items"] == sum(s.item_count for s in segments)
    assert summary["samples"] == len(dataset.rows) == sum(counts.values())
    assert summary["status_counts"] == counts
    assert summary["success_rate"] == round(counts["success"] / len(dataset.rows), 6)
    reasons = {f["reason"]: f["count"] for f in summary["failures"]}
    assert sum(reasons.values()) == len(dataset.rows) - counts["success"]
    assert any("404" in r for r in reasons)


def test_the_same_segment_closed_twice_gives_the_same_output(dataset: Dataset) -> None:
    folder = dataset.folder
    from_download = outputs(folder)
    for name in from_download:  # start from the segments and the index alone
        (folder / name).unlink()
    index = SqliteIndex(folder / "index.sqlite")
    bus = MemoryBus()
    bus.create_topic("SEGMENT_CLOSED", 1)
    settings = MaterializerSettings(
        metrics_port=0, poll_timeout_seconds=0.05, reconcile_on_start=False
    )
    producer = bus.producer()
    try:
        segments = index.segments()

        def deliver(events: list[SegmentRow]) -> dict[str, bytes]:
            for seg in events:
                producer.produce("SEGMENT_CLOSED", closed_event(seg).encode())
            producer.flush()
            # A fresh service each time, as after a restart; same group, so it resumes.
            service = MaterializerService(bus, LocalStore(folder), index, settings)
            stop = threading.Event()
            thread = threading.Thread(target=service.run, args=(stop,))
            thread.start()
            try:
                deadline = 200
                while deadline and any(
                    (p.committed or 0) < p.high_watermark
                    for p in bus.lag("materializer", "SEGMENT_CLOSED")
                ):
                    stop.wait(0.05)
                    deadline -= 1
            finally:
                stop.set()
                thread.join(30)
            assert not thread.is_alive()
            return outputs(folder)

        once = deliver(segments)
        assert once == from_download  # the embedded download's materializer wrote the same
        # Every event again (at-least-once delivery), and one of them a third time.
        twice = deliver([*segments, segments[1]])
        assert twice == once
        [lag] = bus.lag("materializer", "SEGMENT_CLOSED")
        assert lag.committed == lag.high_watermark == 2 * len(segments) + 1
    finally:
        index.close()


def test_the_example_consumer_runs_over_an_output_folder(dataset: Dataset) -> None:
    script = REPO / "examples" / "segment_consumer.py"
    run = [sys.executable, str(script), "--output_folder", str(dataset.folder)]
    first = subprocess.run(run, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert first.returncode == 0, first.stderr
    index = SqliteIndex(dataset.folder / "index.sqlite")
    try:
        segments = index.segments()
        assert f"{len(segments)} segments fed" in first.stdout
        for seg in segments:
            feed = dataset.folder / "feeds" / f"{seg.segment_id}.jsonl"
            lines = [json.loads(x) for x in feed.read_text().splitlines()]
            items = {
                i.item_id: i
                for i in folder_rows(dataset.folder, index).items_for_segment(seg.segment_id)
            }
            assert sorted(x["item_id"] for x in lines) == sorted(items)
            for x in lines:
                assert x["url"].startswith("http://127.0.0.1:") and x["caption"]
                assert x["width"] == 64 and len(x["mean_rgb"]) == 3
                assert all(0 <= c <= 255 for c in x["mean_rgb"])
    finally:
        index.close()
    # Already done: a second run catches up on nothing.
    again = subprocess.run(run, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert again.returncode == 0 and "0 segments fed" in again.stdout


def test_the_materializer_keeps_no_segment_parsed_past_its_own(dataset: Dataset) -> None:
    """Each segment is materialized once: the manifests of those already done are not kept
    (a cache of several was ~10 MB per 10,000 rows of each in `download`'s process)."""
    index = SqliteIndex(dataset.folder / "index.sqlite")
    try:
        settings = MaterializerSettings(metrics_port=0, reconcile_on_start=False)
        service = MaterializerService(None, LocalStore(dataset.folder), index, settings)
        segments = index.segments()
        assert len(segments) >= 3
        assert service.runner.replay() == len(segments)
        last = segments[-1]
        assert service.runner.ctx.rows.cached_rows == last.sample_count + last.item_count
    finally:
        index.close()
