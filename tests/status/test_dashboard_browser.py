"""The dashboard in a real browser: headless Chromium (driven over the DevTools protocol) loads
the page at 1280 px wide from a status server, the page's own script renders /api/status and
/api/history, and the test reads what it rendered: the figures equal the index's, the
progress is counted against the list while a real `img2dataset download` runs (its rows are
still in an open segment), the charts have points, nothing is wider than the window, and
full-page screenshots are saved for a human to look at (I2D_SCREENSHOT_DIR keeps them)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from i2d_imageserver import ImageServer
from i2d_segments.index.sqlite import SqliteIndex
from i2d_status.app import StatusApp
from i2d_status.server import StatusServer
from i2d_status.settings import StatusSettings
from i2d_status.source import StatusSource
from tests.reader.dataset import Dataset
from tests.servers.proc import ServerProcess, free_port, wait_for_port, wait_until
from tests.status.cdp import CHROMIUM, Browser
from tests.status.helpers import get_json, http_get, scrape

BIN = Path(sys.executable).parent
WIDTH, HEIGHT = 1280, 900

# Everything the test reads from the rendered page, in one evaluation.
PROBE = r"""(() => {
  const all = [...document.querySelectorAll("[id]")];
  const text = Object.fromEntries(all.map(e => [e.id, e.textContent.trim()]));
  const value = Object.fromEntries(all.map(e => [e.id, e.dataset.value ?? null]));
  const rows = id => [...document.querySelectorAll("#" + id + " tr")]
      .map(tr => [...tr.children].map(td => td.textContent));
  const charts = {};
  for (const svg of document.querySelectorAll("svg.chart")) {
    charts[svg.id] = [...svg.querySelectorAll("polyline")].map(l => ({
      series: l.dataset.series, points: Number(l.dataset.points), last: l.dataset.last}));
  }
  const width = document.documentElement.clientWidth;
  const wider = [...document.querySelectorAll("body *")]
      .filter(e => e.getBoundingClientRect().right > width + 0.5)
      .map(e => e.tagName + "#" + e.id + "." +
           (typeof e.className === "string" ? e.className : e.className.baseVal));
  // A figure cut short (ellipsis) is a figure the user cannot read: the cards, the titles,
  // the headers and the short columns of the recent rows (time, status, size, segment) show
  // in full; urls, captions and errors are user data of any length, cut with an ellipsis.
  const cut = e => {  // its text is wider than its content box (sub-pixel too)
    const style = getComputedStyle(e);
    if (style.display === "inline") return false;  // its box is its parent's, checked too
    if (e.getClientRects().length === 0) return false;  // not shown (the lag panel)
    const box = e.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const range = document.createRange();
    range.selectNodeContents(e);
    return e.scrollWidth > e.clientWidth || range.getBoundingClientRect().width > box + 0.5;
  };
  const clipped = [...document.querySelectorAll(".card *, h2, th")].filter(cut)
      .map(e => e.id || e.textContent)
      .concat([...document.querySelectorAll("#recent-table tr")].flatMap(
          tr => [0, 1, 5, 6].map(i => tr.children[i]).filter(td => td && cut(td))
              .map(td => td.textContent)));
  return JSON.stringify({
    text, value, charts, wider, clipped,
    rows: {failures: rows("failures-table"), recent: rows("recent-table"), lag: rows("lag-table")},
    lagHidden: document.getElementById("lag-section").hidden,
    lagDisplay: getComputedStyle(document.getElementById("lag-section")).display,
    bar: parseFloat(document.getElementById("progress-bar").style.width),
    barUnknown: document.getElementById("progress-track").classList.contains("unknown"),
    scrollWidth: document.documentElement.scrollWidth,
    clientWidth: width,
    innerWidth: window.innerWidth,
  });
})()"""


def screenshot_path(tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("I2D_SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


async def _look(url: str, shot: Path, min_points: int) -> dict[str, Any]:
    async with Browser() as browser:
        page = await browser.open(url, WIDTH, HEIGHT)
        await page.wait_for("document.body && document.body.dataset.loaded")
        # A few refreshes: the charts have points to draw.
        await page.wait_for(
            f"Number(document.getElementById('chart-rate').dataset.points) >= {min_points}"
        )
        probe: dict[str, Any] = json.loads(await page.evaluate(PROBE))
        await page.screenshot(shot)
    return probe


def look(url: str, shot: Path, min_points: int = 2) -> dict[str, Any]:
    """Load the dashboard at 1280 px, read the rendered page, take a full-page screenshot."""
    assert Path(CHROMIUM).exists(), "chromium is missing: `make servers` installs it"
    probe = asyncio.run(_look(url, shot, min_points))
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width == WIDTH and height >= HEIGHT // 2, (width, height)
    print(f"dashboard screenshot: {shot} ({width}x{height})")
    return probe


def check_layout(page: dict[str, Any]) -> None:
    """Fits 1280 px: no horizontal scroll, no element past the right edge, no card figure
    cut short; the lag panel is not shown without Kafka."""
    assert page["innerWidth"] == WIDTH
    assert page["scrollWidth"] <= WIDTH, page["scrollWidth"]
    assert page["wider"] == [], page["wider"]
    assert page["clipped"] == [], page["clipped"]
    assert page["lagHidden"] is True and page["lagDisplay"] == "none"


def num(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.fixture
def dashboard(dataset: Dataset) -> Iterator[str]:
    settings = StatusSettings(output_folder=str(dataset.folder), refresh_seconds=0.5)
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
    page = look(dashboard, screenshot_path(tmp_path, "dashboard-finished-dataset.png"))
    index = SqliteIndex(dataset.folder / "index.sqlite")
    try:
        counts = index.status_counts()
        errors = index.error_counts()
        totals = index.totals()
    finally:
        index.close()
    t = page["text"]
    assert t["mode"] == "embedded"
    assert t["samples"] == "92" and t["successes"] == "78" and t["failures"] == "14"
    assert sum(counts.values()) == 92 and counts["success"] == 78
    assert t["samples-sub"] == "all committed"
    assert t["success-rate"] == "84.8 %"
    assert t["segments-closed"] == "4" and t["segments-open"] == "0"
    assert t["items"] == str(totals.items) == "77"
    assert t["bytes"].endswith("kB") and page["value"]["bytes"] == str(totals.bytes)
    assert t["images-per-second"] == "0.0"  # nothing is being downloaded
    assert t["progress-text"] == "92 of 92 rows (100.0 %)" and page["bar"] == 100
    assert t["progress-sub"].startswith("download of ") and "ended" in t["progress-sub"]
    assert t["error"] == ""
    check_layout(page)

    failures = {row[0]: int(row[1]) for row in page["rows"]["failures"]}
    assert failures == errors
    recent = page["rows"]["recent"]
    assert len(recent) == 20
    times = [r[0] for r in recent]
    assert times == sorted(times, reverse=True)  # newest first
    statuses = [r[1] for r in recent]
    assert set(statuses) <= {"success", "failed_to_download", "failed_to_resize"}
    for r in recent:  # caption and error in their own columns
        if r[1] == "success":
            assert r[3].startswith("picture number ") and r[4] == ""
        else:
            assert r[4] != "" and not r[4].startswith("picture number ")
    assert any(r[5] == "64\N{MULTIPLICATION SIGN}48" or "\N{MULTIPLICATION SIGN}" in r[5]
               for r in recent)  # fmt: skip
    assert all(not r[6].endswith("(open)") for r in recent)
    assert [c["series"] for c in page["charts"]["chart-rate"]] == [
        "samples_per_second",
        "images_per_second",
    ]
    assert page["charts"]["chart-failures"][0]["points"] >= 2


def test_dashboard_during_and_after_a_real_download(tmp_path: Path) -> None:
    """2000 urls (one in ten missing) paced at 100 requests/s: while the download runs its rows
    sit in the open segment (10,000 rows per segment), yet the CLI, the API and the page count
    them within seconds, against the list's 2000, at the current rate."""
    total, pace = 2000, 100
    out = tmp_path / "out"
    with ImageServer() as images:
        urls = [
            images.url_for(7000 + n, 64, 48, fault="missing" if n % 10 == 9 else None)
            for n in range(total)
        ]
        url_list = tmp_path / "urls.txt"
        url_list.write_text("\n".join(urls) + "\n")
        metrics_port = free_port()
        download = ServerProcess(
            [
                str(BIN / "img2dataset"),
                "download",
                "--url_list", str(url_list),
                "--output_folder", str(out),
                "--processes_count", "1",
                "--thread_count", "16",
                "--host_rate_limit", str(pace),
                "--allowed_networks", "127.0.0.1/32",
                "--progress", "False",
                "--metrics_port", str(metrics_port),
            ],
            tmp_path / "download.log",
        ).start()  # fmt: skip
        status_port = free_port()
        status = ServerProcess(
            [
                str(BIN / "img2dataset"), "serve", "status",
                "--output_folder", str(out), "--http_port", str(status_port),
            ],
            tmp_path / "status.log",
        )  # fmt: skip
        try:
            wait_until(
                lambda: (out / "index.sqlite").exists() or not download.alive(),
                60,
                "the download's index",
            )
            assert download.alive(), download.log_tail()
            status.start()
            wait_for_port(status_port, 60)
            base = f"http://127.0.0.1:{status_port}"

            def api() -> dict[str, Any]:
                return get_json(base + "/api/status")  # type: ignore[no-any-return]

            wait_until(lambda: api()["progress"]["samples"] >= 800, 60, "800 rows recorded")
            during = api()
            assert download.alive(), download.log_tail()
            p, r = during["progress"], during["rates"]
            # Nothing is committed yet (10,000 rows per segment): every row counted is open.
            assert during["segments"]["closed"] == 0 and during["segments"]["open"] == 1
            assert p["committed"] == 0 and p["samples"] == p["in_open_segments"] >= 800
            assert p["successes"] + p["failures"] == p["samples"] and p["failures"] > 0
            assert p["total"] == total and p["samples"] <= p["done"] < total
            assert p["fraction"] == pytest.approx(p["done"] / total)
            assert p["run"]["finished_at"] is None and p["run"]["url_list"] == str(url_list)
            # The current rate, over the last 10 s, not an average since some earlier time: at
            # most the pace the run is held to, and not far under the rate the run has
            # actually kept since it started (measured here, so a loaded machine that runs it
            # slower than the pace does not fail it).
            observed = p["samples"] / (time.time() - p["run"]["started_at"])
            assert r["source"] == "appenders" and r["window_seconds"] == 10
            assert 0.5 * observed <= r["samples_per_second"] <= 1.4 * pace, (r, observed)
            assert r["failures_per_second"] == pytest.approx(
                r["samples_per_second"] - r["images_per_second"], abs=0.01
            )
            recent = during["recent"]
            assert len(recent) == 20 and not any(x["committed"] for x in recent)
            assert [x["at"] for x in recent] == sorted((x["at"] for x in recent), reverse=True)

            # The one-shot command, from another process, says the same.
            text = subprocess.run(
                [str(BIN / "img2dataset"), "status", "--output_folder", str(out)],
                capture_output=True, text=True, timeout=120, check=True,
            ).stdout  # fmt: skip
            m = re.search(r"rows recorded: (\d+) \((\d+) in open segments, 0 committed\)", text)
            assert m and int(m.group(1)) == int(m.group(2)) >= p["samples"], text
            m = re.search(rf"progress: (\d+) of {total} rows in the list done \(([\d.]+) %\)", text)
            assert m and p["done"] <= int(m.group(1)) < total, text
            assert re.search(r"rate: [\d.]+ images/s, [\d.]+ rows/s, [\d.]+ failures/s "
                             r"\(last 10 s, appenders\)", text), text  # fmt: skip

            # The download's own /metrics, /healthz and /readyz (--metrics_port).
            metrics = f"http://127.0.0.1:{metrics_port}"
            assert http_get(metrics + "/healthz")[0] == 200
            wait_until(lambda: http_get(metrics + "/readyz")[0] == 200, 30, "download ready")
            families = scrape(metrics + "/metrics")
            appended = sum(
                s.value
                for s in families["img2dataset_appender_records"].samples
                if s.name.endswith("_total")
            )
            assert appended >= p["samples"]

            # The page, while the run goes on.
            page = look(base + "/", screenshot_path(tmp_path, "dashboard-during-download.png"))
            assert download.alive(), "the run ended before the page was read: pace it slower"
            t = page["text"]
            assert num(t["samples"]) >= p["samples"] and num(t["failures"]) > 0
            assert t["samples-sub"] == f"{t['samples']} in open segments"
            m = re.fullmatch(r"([\d,]+) of 2,000 rows \(([\d.]+) %\)", t["progress-text"])
            assert m and p["done"] <= num(m.group(1)) < total, t["progress-text"]
            assert float(m.group(2)) < 100 and page["bar"] == float(m.group(2))
            assert not page["barUnknown"]
            assert t["segments-closed"] == "0" and t["segments-open"] == "1"
            assert 0.5 * observed <= float(t["images-per-second"]) / 0.9 <= 1.4 * pace, t
            rows = page["rows"]["recent"]
            assert len(rows) == 20 and all(row[6].endswith(" (open)") for row in rows)
            assert [row[0] for row in rows] == sorted((row[0] for row in rows), reverse=True)
            failed = [row for row in rows if row[1] == "failed_to_download"]
            assert all(row[4].startswith("HTTP Error 404") and row[3] == "" for row in failed)
            rate_lines = page["charts"]["chart-rate"]
            assert rate_lines[0]["points"] >= 2 and float(rate_lines[0]["last"]) > 0
            check_layout(page)

            assert download.proc is not None and download.proc.wait(120) == 0, download.log_tail()
            # The figures of a refresh after the run's end (they are up to refresh_seconds old).
            wait_until(
                lambda: (
                    (x := api()["progress"])["committed"] == total
                    and x["run"]["finished_at"] is not None
                ),
                30,
                "the run's end",
            )
            after = api()
            p = after["progress"]
            assert (p["samples"], p["in_open_segments"], p["done"], p["fraction"]) == (
                total, 0, total, 1.0
            )  # fmt: skip
            assert p["failures"] == total // 10 and p["run"]["finished_at"] is not None
            assert after["segments"]["closed"] == 1 and after["segments"]["open"] == 0
            assert after["rates"]["samples_per_second"] == 0  # the run is over

            page = look(base + "/", screenshot_path(tmp_path, "dashboard-after-download.png"), 5)
            t = page["text"]
            assert (t["samples"], t["failures"], t["samples-sub"]) == (
                "2,000", "200", "all committed"
            )  # fmt: skip
            assert t["progress-text"] == "2,000 of 2,000 rows (100.0 %)"
            assert t["images-per-second"] == "0.0" and t["segments-closed"] == "1"
            failures = {row[0]: num(row[1]) for row in page["rows"]["failures"]}
            assert sum(failures.values()) == 200
            assert all(not row[6].endswith("(open)") for row in page["rows"]["recent"])
            # The charts went up during the run and are back at 0.
            chart = {c["series"]: c for c in page["charts"]["chart-rate"]}
            assert chart["samples_per_second"]["points"] >= 5
            assert float(chart["samples_per_second"]["last"]) == 0
            history = get_json(base + "/api/history")["points"]
            run = p["run"]
            whole_run = total / (run["finished_at"] - run["started_at"])
            assert max(x["samples_per_second"] for x in history) >= 0.8 * whole_run
            assert max(x["failures_per_second"] for x in history) > 0
            check_layout(page)
        finally:
            status.stop()
            download.stop()
