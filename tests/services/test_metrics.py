"""/metrics, /healthz and /readyz of the pipeline services, scraped after a real download ran
the fetcher, appender and materializer loops in this process: the metric names users' alerts
and dashboards rely on exist, follow Prometheus naming, and carry no url or host label. The
download's progress bar (rate, ETA) and final summary are checked on the way."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from i2d_imageserver import ImageServer
from i2d_segments.runtime import Health, HealthServer
from tests.reader.dataset import build_dataset
from tests.status.helpers import check_conventions, get_json, http_get, scrape

EXPECTED = {
    # fetcher: outcomes by status, bytes, latency, in flight, resize time
    "img2dataset_fetcher_rows": "counter",
    "img2dataset_fetcher_failures": "counter",
    "img2dataset_fetcher_bytes": "counter",
    "img2dataset_fetcher_fetch_seconds": "histogram",
    "img2dataset_fetcher_in_flight": "gauge",
    "img2dataset_fetcher_resize_seconds": "histogram",
    # appender: segments closed, bytes, commit latency, open segment size
    "img2dataset_appender_segments_closed": "counter",
    "img2dataset_appender_segment_bytes": "histogram",
    "img2dataset_appender_commit_seconds": "histogram",
    "img2dataset_appender_open_segment_bytes": "gauge",
    # materializer: lag, and the consumer framework's events
    "img2dataset_materializer_lag_seconds": "gauge",
    "img2dataset_materializer_segment_seconds": "histogram",
    "img2dataset_segment_consumer_events": "counter",
}


def test_services_export_metrics_health_and_readiness(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ImageServer() as images:
        # The progress bar on: it goes to stderr, the summary to stdout.
        dataset = build_dataset(images, tmp_path / "out", count=40, progress=True)
    out, err = capsys.readouterr()
    rows = len(dataset.rows)  # 40 and the two urls of one image
    assert f"{rows}/{rows}" in err and "rows/s" in err and re.search(r"<\d\d:\d\d", err), err[-500:]
    assert f"this run: {rows} rows fetched" in out and "images/s" in out
    assert "failures by reason:" in out and "HTTP Error 404: Not Found" in out

    health = Health()
    ready = {"index": True}
    health.add_check("index", lambda: ready["index"])
    health.started()
    server = HealthServer(health, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        families = scrape(base + "/metrics")
        assert check_conventions(families) == []
        for name, kind in EXPECTED.items():
            assert name in families, f"missing {name}"
            assert families[name].type == kind, (name, families[name].type)

        def value(name: str, **labels: str) -> float:
            return sum(
                s.value
                for f in families.values()
                for s in f.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
            )

        # This process downloaded 42 rows (and maybe more in other tests): counts add up.
        assert value("img2dataset_fetcher_rows_total", status="success") >= 30
        assert value("img2dataset_fetcher_rows_total", status="failed_to_download") >= 3
        assert value("img2dataset_fetcher_failures_total", reason="http_4xx") >= 3
        assert value("img2dataset_fetcher_bytes_total") > 0
        assert value("img2dataset_fetcher_fetch_seconds_count") >= rows
        assert value("img2dataset_fetcher_resize_seconds_count") >= 30
        assert value("img2dataset_appender_segments_closed_total") >= 2
        assert value("img2dataset_appender_segment_bytes_count") >= 2
        assert value("img2dataset_appender_commit_seconds_count") >= 2
        assert value("img2dataset_materializer_segment_seconds_count") >= 2
        assert value("img2dataset_segment_consumer_events_total", outcome="handled") >= 2

        assert http_get(base + "/healthz")[:2] == (200, b"ok\n")
        assert get_json(base + "/readyz") == {
            "ready": True,
            "started": True,
            "checks": {"index": True},
        }
        ready["index"] = False  # a dependency down: not ready, still alive
        status, body, _ = http_get(base + "/readyz")
        assert status == 503 and b'"index": false' in body
        assert http_get(base + "/healthz")[0] == 200
        health.stall_seconds = 0.0  # the loop stopped beating: not alive
        assert http_get(base + "/healthz")[:2] == (503, b"stalled\n")
        assert http_get(base + "/nope")[0] == 404
    finally:
        server.stop()
