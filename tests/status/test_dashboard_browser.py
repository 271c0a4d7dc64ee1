"""The dashboard in a real browser: headless Chromium loads the page from a status server over
a populated output folder; the figures it renders (from /api/status, by the page's own script)
are the index's, and a screenshot is saved for a human to look at."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from i2d_segments.index.sqlite import SqliteIndex
from i2d_status.app import StatusApp
from i2d_status.server import StatusServer
from i2d_status.settings import StatusSettings
from i2d_status.source import StatusSource
from tests.reader.dataset import Dataset

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # `make servers` installs it


def chromium(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="i2d-chromium-") as profile:
        return subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                "--window-size=1280,1100",
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )


class Elements(HTMLParser):
    """Text and attributes of every element with an id (the dashboard's figures)."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, dict[str, str | None]] = {}
        self.text: dict[str, str] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self._open: list[str | None] = []
        self._table: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        ident = a.get("id")
        if tag == "body":
            self.attrs["body"] = a
        if ident:
            self.attrs[ident] = a
            self.text[ident] = ""
        if tag == "tbody" and ident:
            self._table = ident
            self.rows[ident] = []
        if tag == "tr" and self._table:
            self.rows[self._table].append([])
        if tag == "td" and self._table:
            self.rows[self._table][-1].append("")
        self._open.append(ident)

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._table = None
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident:
                self.text[ident] += data
        if self._table and self.rows[self._table] and self.rows[self._table][-1]:
            self.rows[self._table][-1][-1] += data


@pytest.fixture
def dashboard(dataset: Dataset) -> Iterator[str]:
    settings = StatusSettings(output_folder=str(dataset.folder), refresh_seconds=1.0)
    source = StatusSource.open(settings)
    srv = StatusServer(StatusApp(source), "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{srv.port}/"
    finally:
        srv.stop()
        source.close()


def test_chromium_renders_the_figures_of_the_index(
    dashboard: str, dataset: Dataset, tmp_path: Path
) -> None:
    assert Path(CHROMIUM).exists(), "chromium is missing: `make servers` installs it"
    dumped = chromium(dashboard, "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    page = Elements()
    page.feed(dumped.stdout)
    assert page.attrs["body"].get("data-loaded"), "the page's script never rendered /api/status"

    index = SqliteIndex(dataset.folder / "index.sqlite")
    try:
        counts = index.status_counts()
        errors = index.error_counts()
        totals = index.totals()
        newest = index.recent_segments(1)[0].segment_id
    finally:
        index.close()
    t = {k: v.strip() for k, v in page.text.items()}
    assert t["mode"] == "embedded"
    assert t["samples"] == "92" and t["successes"] == "78" and t["failures"] == "14"
    assert sum(counts.values()) == 92 and counts["success"] == 78
    assert t["success-rate"] == "84.8 %"
    assert t["segments-closed"] == "4" and t["segments-open"] == "0"
    assert t["items"] == str(totals.items) == "77"
    assert t["bytes"].endswith("kB") and page.attrs["bytes"]["data-value"] == str(totals.bytes)
    assert float(t["images-per-second"]) >= 0
    assert t["progress-text"] == "92 rows recorded (no queue to compare with)"
    assert t["error"] == ""

    failures = {row[0]: int(row[1]) for row in page.rows["failures-table"]}
    assert failures == errors
    assert page.rows["lag-table"] == [["no consumer groups (output folder)"]]
    recent = page.rows["recent-table"]
    assert len(recent) == 20 and all(r[-1] == newest for r in recent[:5])
    assert {r[0] for r in recent} <= {"success", "failed_to_download", "failed_to_resize"}
    assert any(r[3] == "64\N{MULTIPLICATION SIGN}64" for r in recent)

    shot = tmp_path / "dashboard.png"
    taken = chromium(dashboard, f"--screenshot={shot}")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"dashboard screenshot: {shot}")
