"""The status service over an embedded output folder: the REST API's figures equal the index,
answers match the published JSON schema, the charts' history, /metrics, /healthz and /readyz,
and the `img2dataset status` terminal summary."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from unittest.mock import ANY

import pytest

from i2d_cli.main import main
from i2d_segments.index.sqlite import SqliteIndex
from i2d_status.app import StatusApp
from i2d_status.schema import ENDPOINTS
from i2d_status.server import StatusServer
from i2d_status.settings import StatusSettings
from i2d_status.source import StatusSource
from tests.reader.dataset import Dataset
from tests.rows import folder_rows
from tests.servers.proc import wait_until
from tests.status.helpers import check_conventions, get_json, http_get, scrape


@pytest.fixture
def server(dataset: Dataset) -> Iterator[str]:
    settings = StatusSettings(output_folder=str(dataset.folder), refresh_seconds=0.2)
    source = StatusSource.open(settings)
    srv = StatusServer(StatusApp(source), "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{srv.port}"
    finally:
        srv.stop()
        source.close()


@pytest.fixture
def index(dataset: Dataset) -> Iterator[SqliteIndex]:
    idx = SqliteIndex(dataset.folder / "index.sqlite")
    yield idx
    idx.close()


def test_api_status_has_the_dashboards_figures(
    server: str, index: SqliteIndex, dataset: Dataset
) -> None:
    s = get_json(server + "/api/status")
    counts = index.status_counts()
    assert s["mode"] == "embedded" and s["refresh_seconds"] == 0.2
    p = s["progress"]
    assert p["samples"] == len(dataset.rows) == sum(counts.values())
    assert p["committed"] == 92 and p["in_open_segments"] == 0  # the download ended
    assert p["successes"] == counts["success"] == 78
    assert p["failures"] == 14 and p["by_status"] == counts
    assert p["success_rate"] == pytest.approx(78 / 92)
    assert p["enqueued"] is None and p["fetched"] is None  # no urls topic over a folder
    # The download recorded its list: every row of it is done.
    assert (p["total"], p["done"], p["fraction"]) == (92, 92, 1.0)
    run = p["run"]
    assert run["url_list"].endswith("out-urls.jsonl") and run["finished_at"] >= run["started_at"]
    assert (run["rows_total"], run["rows_read"], run["rows_skipped"]) == (92, 92, 0)
    reasons = {f["reason"]: f["count"] for f in s["failures"]}
    assert reasons == index.error_counts()
    assert s["failures"][0]["count"] == max(reasons.values())  # most frequent first
    segs = s["segments"]
    totals = index.totals()
    assert segs["closed"] == totals.segments == 4 and segs["open"] == 0
    assert segs["items"] == 77 and segs["bytes"] == totals.bytes
    assert segs["last_closed_at"] == totals.last_created_at
    assert s["lag"] == [] and s["errors"] == []
    # Nothing is being appended: the current rate is 0 (the appender's last word at its
    # shutdown, or nothing measured between refreshes once that is stale).
    r = s["rates"]
    assert r["source"] in ("appenders", "observed", "none") and r["window_seconds"] == 10
    assert r["images_per_second"] == r["samples_per_second"] == r["failures_per_second"] == 0
    recent = s["recent"]
    assert len(recent) == 20
    # Newest first, by the time each row was recorded; all committed.
    assert [x["at"] for x in recent] == sorted((x["at"] for x in recent), reverse=True)
    assert all(x["committed"] for x in recent)
    rows = folder_rows(dataset.folder, index)
    newest = max(rows.samples_for_segment(index.recent_segments(1)[0].segment_id),
                 key=lambda x: (x.updated_at, x.sample_id))  # fmt: skip
    assert recent[0]["sample_id"] == newest.sample_id
    assert {r["status"] for r in recent} <= {"success", "failed_to_download", "failed_to_resize"}
    # The caption and the error are each their own field, as in the index.
    for x in recent:
        row = rows.sample(x["sample_id"])
        assert row is not None and (x["caption"], x["error"]) == (row.caption, row.error)


def test_api_index_queue_segments(server: str, index: SqliteIndex) -> None:
    i = get_json(server + "/api/index")
    assert i["totals"]["segments"] == 4 and i["totals"]["samples"] == 92
    assert i["status_counts"] == index.status_counts()
    assert [(p["topic"], p["partition"]) for p in i["partitions"]] == [("APPEND", 0)]
    assert i["partitions"][0]["next_offset"] == 92

    q = get_json(server + "/api/queue")
    assert q["lag"] == [] and q["total_lag"] == {}
    assert q["partitions"] == [
        {
            "topic": "APPEND",
            "partition": 0,
            "end": None,
            "index_next_offset": 92,
            "pending": None,
            "owner": q["partitions"][0]["owner"],
        }
    ]

    page = get_json(server + "/api/segments?limit=3")
    assert page["total"] == 4 and page["limit"] == 3 and page["offset"] == 0
    ids = [x["segment_id"] for x in page["segments"]]
    assert ids == [s.segment_id for s in reversed(index.segments())][:3]  # newest first
    rest = get_json(server + "/api/segments?limit=3&offset=3")
    assert [x["segment_id"] for x in rest["segments"]] == [index.segments()[0].segment_id]
    seg = page["segments"][0]
    assert seg["metadata_uri"].endswith(f"{seg['segment_id']}.parquet")
    assert seg["stats_uri"].endswith(f"{seg['segment_id']}_stats.json")
    assert seg["uri"].endswith(f"{seg['segment_id']}.tar")
    status, body, _ = http_get(server + "/api/segments?limit=x")
    assert status == 400 and b"integers" in body


def validate(instance: Any, schema: dict[str, Any], defs: dict[str, Any]) -> None:
    """A small JSON Schema check (types, required, properties, items, refs, anyOf, enums)."""
    if "$ref" in schema:
        validate(instance, defs[schema["$ref"].rsplit("/", 1)[1]], defs)
        return
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                validate(instance, option, defs)
                return
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{instance!r} matches none of {errors}")
    kinds: dict[str, type | tuple[type, ...]] = {
        "object": dict,
        "array": list,
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
        "null": type(None),
    }
    if "type" in schema:
        assert isinstance(instance, kinds[schema["type"]]), (instance, schema)
    if "enum" in schema:
        assert instance in schema["enum"]
    if "const" in schema:
        assert instance == schema["const"]
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            assert key in instance, f"missing {key}"
        for key, value in instance.items():
            if key in schema.get("properties", {}):
                validate(value, schema["properties"][key], defs)
            elif isinstance(schema.get("additionalProperties"), dict):
                validate(value, schema["additionalProperties"], defs)
    if isinstance(instance, list) and "items" in schema:
        for x in instance:
            validate(x, schema["items"], defs)


def test_history_keeps_each_refresh_for_the_charts(server: str) -> None:
    wait_until(lambda: len(get_json(server + "/api/history")["points"]) >= 3, 30, "3 refreshes")
    h = get_json(server + "/api/history")
    assert h["refresh_seconds"] == 0.2
    points = h["points"]
    assert [p["at"] for p in points] == sorted(p["at"] for p in points)
    last = points[-1]
    assert (last["samples"], last["successes"], last["failures"]) == (92, 78, 14)
    assert last["images_per_second"] == last["failures_per_second"] == 0


def test_answers_follow_the_published_schema(server: str) -> None:
    schema = get_json(server + "/api/schema")
    assert (
        set(schema)
        == set(ENDPOINTS)
        >= {
            "/api/status",
            "/api/history",
            "/api/index",
            "/api/queue",
            "/api/segments",
        }
    )
    for path, body in schema.items():
        answer = get_json(server + path)
        validate(answer, body, body.get("$defs", {}))


def test_health_and_metrics(server: str) -> None:
    assert http_get(server + "/healthz")[:2] == (200, b"ok\n")
    # Ready once the background task has computed its first snapshot: until then /readyz is a
    # 503 that says so, so wait for it rather than race it.
    status, body, _ = http_get(server + "/readyz")
    if status == 503:
        assert json.loads(body) == {"ready": False, "started": True, "checks": ANY}
        assert b'"refreshed": false' in body
    wait_until(lambda: http_get(server + "/readyz")[0] == 200, 30, "the first refresh")
    ready = get_json(server + "/readyz")
    assert ready["ready"] is True and ready["checks"]["index"] and ready["checks"]["refreshed"]
    families = scrape(server + "/metrics")
    assert check_conventions(families) == []
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("img2dataset_index_samples", (("status", "success"),))] == 78
    assert samples[("img2dataset_index_segments", ())] == 4
    assert samples[("img2dataset_index_items", ())] == 77
    assert samples[("img2dataset_open_segment_samples", ())] == 0
    assert samples[("img2dataset_progress_total_rows", ())] == 92
    assert samples[("img2dataset_progress_done_rows", ())] == 92
    assert "img2dataset_consumer_lag" in families  # empty over a folder, present for KEDA
    assert "process_cpu_seconds" in families  # the process collector, as every service


def test_dashboard_page_is_served(server: str) -> None:
    status, body, content_type = http_get(server + "/")
    assert status == 200 and content_type.startswith("text/html")
    assert b"api/status" in body and b"api/history" in body and b"setTimeout(refresh" in body
    # Everything is in the page: no script, style or font from elsewhere (no internet here).
    assert b"<script src" not in body and b"<link" not in body and b"@import" not in body
    assert b"https://" not in body and b"http://" not in body.replace(
        b"http://www.w3.org/2000/svg", b""
    )


def test_status_command_prints_a_summary(
    dataset: Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--output_folder", str(dataset.folder)]) == 0
    text = capsys.readouterr().out
    assert "rows recorded: 92\n" in text
    assert "progress: 92 of 92 rows in the list done (100.0 %)" in text
    assert "download: " in text and "out-urls.jsonl" in text and "ended" in text
    assert "successes: 78   failures: 14   success rate: 84.8 %" in text
    assert "rate: 0.0 images/s, 0.0 rows/s, 0.0 failures/s (last 10 s" in text
    assert "segments: 4 closed, 0 open, 77 images" in text
    assert "HTTP Error 404: Not Found" in text and "failures by reason:" in text

    assert main(["status", "--output_folder", str(dataset.folder), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["progress"]["samples"] == 92 and s["segments"]["closed"] == 4

    assert main(["status", "--output_folder", str(dataset.folder / "nope")]) == 2
    assert "not an output folder" in capsys.readouterr().err


def test_it_binds_this_machine_only_unless_told() -> None:
    from i2d_cli.flags import model_kwargs
    from i2d_cli.main import build_parser

    assert StatusSettings().http_host == "127.0.0.1"
    for flag in ("--host", "--http_host"):
        ns = build_parser("serve").parse_args(["serve", "status", flag, "0.0.0.0"])
        assert StatusSettings(**model_kwargs(ns, StatusSettings)).http_host == "0.0.0.0"
