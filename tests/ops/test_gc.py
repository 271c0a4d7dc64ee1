"""`img2dataset gc`: lists what no committed segment names (uncommitted objects and their side
files, incomplete uploads, claim checks), deletes only with --delete and only past the grace
period, and never touches a committed segment."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from i2d_cli.main import main
from i2d_segments.connect import open_store
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.naming import sidecar_name, staging_name
from i2d_segments.reader import SegmentRows
from i2d_segments.store import SegmentStore
from i2d_segments.store.s3 import S3Store
from tests.append_records import success
from tests.ops.conftest import Backend
from tests.ops.helpers import build_dataset

ORPHAN = "segments/p00003/00000000000000000042-e7.tar"
ABORTED = "segments/p00000/00000000000000000010-e9.tar"


def _begin_abandoned_upload(store: SegmentStore) -> None:
    """An upload a crashed writer began: on S3 a multipart upload with nothing completed."""
    if isinstance(store, S3Store):
        store.client.create_multipart_upload(Bucket=store.bucket, Key=store.prefix + ABORTED)
    else:
        store.begin_upload(ABORTED).write(b"half a segment")


def _names(store: SegmentStore) -> set[str]:
    return {i.name for i in store.list("segments/")} | {i.name for i in store.list("staging/")}


def test_gc_lists_then_deletes_only_garbage(
    backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    store = backend.store
    data = build_dataset(store, backend.index)
    committed_segment = backend.index.segments()[0].segment_id
    store.put(ORPHAN, b"not even a tar")
    store.put(sidecar_name("p00000/00000000000000000005-e1", "_stats.json"), b"{}")
    store.put(sidecar_name(committed_segment, "_stats.json"), b"{}")  # a committed one's
    stored_item = SegmentRows(store, backend.index).items_for_segment(committed_segment)[0].item_id
    unknown_item = success(999).meta.item_id
    assert unknown_item is not None
    store.put(staging_name(stored_item), b"payload already in a segment")
    store.put(staging_name(unknown_item), b"payload whose record may still be in Kafka")
    _begin_abandoned_upload(store)
    before = _names(store)
    capsys.readouterr()

    # Dry run (the default): listed, nothing removed.
    assert main(["gc", *backend.flags(), "--grace_seconds", "0"]) == 0
    printed = capsys.readouterr().out
    for name in [*data.garbage, ORPHAN, "segments/p00000/00000000000000000005-e1_stats.json"]:
        assert f"garbage: {name} " in printed
    assert f"garbage: {staging_name(stored_item)} " in printed
    assert staging_name(unknown_item) not in printed  # younger than the 7-day staging grace
    assert f"garbage: upload of {ABORTED} " in printed
    for name in data.committed:
        assert name not in printed
    assert _names(store) == before
    assert len(list(store.list_incomplete_uploads())) == 1

    # Within the grace period nothing goes, even with --delete. (moto dates every multipart
    # upload 2010-11-10, so there the upload is past any grace period and is aborted.)
    young_uploads = 1 if backend.kind == "local" else 0
    assert main(["gc", *backend.flags(), "--delete"]) == 0
    printed = capsys.readouterr().out
    assert f"kept 6 objects and {young_uploads} uploads within their grace period" in printed
    assert _names(store) == before
    assert len(list(store.list_incomplete_uploads())) == young_uploads

    # Past it, with --delete: the garbage goes, every committed object stays.
    assert main(["gc", *backend.flags(), "--delete", "--grace_seconds", "0"]) == 0
    capsys.readouterr()
    left = _names(store)
    assert left == {
        *data.committed,
        sidecar_name(committed_segment, "_stats.json"),
        staging_name(unknown_item),
    }
    assert list(store.list_incomplete_uploads()) == []
    assert main(["verify", *backend.flags(), "--sample", "all"]) == 0
    assert main(["reindex", *backend.flags(backend.new_index_url())]) == 0

    # The claim check nothing stored yet goes only past its own grace period.
    args = ["gc", *backend.flags(), "--delete", "--grace_seconds", "0"]
    assert main([*args, "--staging_grace_seconds", "0"]) == 0
    assert staging_name(unknown_item) not in _names(store)


def test_grace_period_is_measured_from_the_last_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "store"
    store = open_store(str(root))
    index = SqliteIndex(tmp_path / "index.sqlite")
    index.migrate()
    data = build_dataset(store, index)
    index.close()
    old, recent = data.garbage
    two_days_ago = time.time() - 2 * 86400
    os.utime(root / old, (two_days_ago, two_days_ago))
    flags = ["--store_url", str(root), "--index_url", str(tmp_path / "index.sqlite")]
    assert main(["gc", *flags, "--delete"]) == 0  # the 24 h default
    assert f"deleted: {old} " in capsys.readouterr().out
    names = {i.name for i in store.list("segments/")}
    assert old not in names and recent in names and set(data.committed) <= names
