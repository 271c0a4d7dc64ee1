"""`img2dataset download` and a second Ctrl-C (or SIGTERM): it stops within 5 s wherever it
was (start-up, the first rows, mid-run, committing on the way out), with no traceback and no
process left behind, and the same command run again completes the dataset with every input
row recorded exactly once (index and metadata parquet)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from i2d_imageserver import ImageServer, make_url_list
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.naming import sidecar_name
from tests.e2e.signals import (
    catches,
    group_members,
    parquet_rows,
    rows_fetched,
    signal_twice,
    stopped_by_second_signal,
    wait_group_gone,
)
from tests.rows import folder_rows
from tests.servers.proc import wait_until

BIN = Path(sys.executable).parent
ROWS = 200
# Slow rows (1 s before their headers) keep work in flight, so the clean stop the first signal
# asks for is still under way when the second one comes.
FAULTS = {"slow": 0.25, "missing": 0.05}
SLOW_SECONDS = 1.0


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with ImageServer(slow_delay=SLOW_SECONDS) as server:
        yield server


def download_cmd(url_list: Path, out: Path) -> list[str]:
    return [
        str(BIN / "img2dataset"),
        "download",
        "--url_list",
        str(url_list),
        "--output_folder",
        str(out),
        "--number_sample_per_shard=40",
        "--thread_count=16",
        "--processes_count=1",
        "--progress=False",
        "--allowed_networks=127.0.0.1/32",  # the local image server
    ]


def recorded(out: Path) -> tuple[int, int]:
    """(sample rows, committed segments) of the folder's index; (0, 0) before it exists."""
    path = out / "index.sqlite"
    if not path.exists():
        return 0, 0
    try:
        index = SqliteIndex(path)
        try:
            return sum(index.status_counts().values()), len(index.segments())
        finally:
            index.close()
    except Exception:
        return 0, 0  # created but not migrated yet


def check_complete(out: Path, rows: int) -> None:
    """Every input row exactly once: in the index, and across the metadata parquet files of
    the committed segments, which are all materialized (and no other sidecar exists)."""
    index = SqliteIndex(out / "index.sqlite")
    try:
        assert sum(index.status_counts().values()) == rows
        segments = [s.segment_id for s in index.segments()]
        full = folder_rows(out, index)
        ids = {s.sample_id for sid in segments for s in full.samples_for_segment(sid)}
    finally:
        index.close()
    assert len(ids) == rows
    for sid in segments:
        assert (out / sidecar_name(sid, "_stats.json")).exists(), sid
    parquets = sorted((out / "segments").rglob("*.parquet"))
    assert sorted(str(p) for p in parquets) == sorted(
        str(out / sidecar_name(sid, ".parquet")) for sid in segments
    )
    table = parquet_rows(parquets)
    assert len(table) == rows
    assert {r["sample_id"] for r in table} == ids


MOMENTS = [
    # Handlers in place, the command still importing its code.
    pytest.param("start-up", signal.SIGINT, 0.1, id="start-up-SIGINT"),
    # Rows read and fetching, nothing committed yet.
    pytest.param("early", signal.SIGTERM, 0.2, id="early-SIGTERM"),
    pytest.param("early", signal.SIGINT, 0.3, id="early-SIGINT"),
    # Segments committed, more in flight.
    pytest.param("mid-run", signal.SIGINT, 0.3, id="mid-run-SIGINT"),
    pytest.param("mid-run", signal.SIGTERM, 0.1, id="mid-run-SIGTERM"),
]


@pytest.mark.parametrize(("moment", "sig", "gap"), MOMENTS)
def test_a_second_signal_stops_at_once_and_a_rerun_completes(
    images: ImageServer, tmp_path: Path, moment: str, sig: signal.Signals, gap: float
) -> None:
    urls = make_url_list(images.base_url, ROWS, seed=23, faults=FAULTS)
    url_list = tmp_path / "urls.txt"
    url_list.write_text("\n".join(urls) + "\n")
    out = tmp_path / "out"
    cmd = download_cmd(url_list, out)
    served_before = sum(images.hits(u) for u in urls)  # the other cases fetch the same list
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        if moment == "start-up":
            # SIGTERM caught: the command's handlers are installed (Python's own catch SIGINT).
            wait_until(lambda: catches(proc.pid, signal.SIGTERM), 30, "the signal handlers", 0.01)
        elif moment == "early":
            wait_until(
                lambda: sum(images.hits(u) for u in urls) > served_before,
                60,
                "the first fetches",
                0.01,
            )
        else:
            wait_until(lambda: recorded(out)[1] >= 2, 120, "two committed segments", 0.05)
        assert proc.poll() is None, "the download ended before the signals"
        took, err = signal_twice(proc, sig, gap)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert stopped_by_second_signal(proc.returncode, sig, err), (proc.returncode, err[-3000:])
    assert took < 5.0
    assert "Traceback" not in err, err[-3000:]
    wait_group_gone(proc.pid)

    before, _ = recorded(out)
    if moment == "mid-run":
        assert 0 < before < ROWS
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Traceback" not in rerun.stderr
    skipped = re.search(r"(\d+) rows skipped", rerun.stdout)
    assert skipped is not None and int(skipped.group(1)) == before, rerun.stdout
    check_complete(out, ROWS)


def test_one_sigterm_commits_work_in_flight(images: ImageServer, tmp_path: Path) -> None:
    """SIGTERM once is Ctrl-C once: what was fetched is committed on the way out."""
    urls = make_url_list(images.base_url, ROWS, seed=29, faults=FAULTS)
    url_list = tmp_path / "urls.txt"
    url_list.write_text("\n".join(urls) + "\n")
    out = tmp_path / "out"
    cmd = download_cmd(url_list, out)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        wait_until(lambda: recorded(out)[1] >= 1, 120, "a committed segment", 0.05)
        at_signal, _ = recorded(out)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "run the same command again to resume" in err
    wait_group_gone(proc.pid)
    # The rows in flight at the signal were finished and the open segment committed on the
    # way out, not dropped: every row the run says it fetched is in the index.
    after, _ = recorded(out)
    assert after == rows_fetched(err), err[-3000:]
    assert after > at_signal, "the rows in flight at the signal were not committed"
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{after} rows skipped" in rerun.stdout
    check_complete(out, ROWS)


@pytest.mark.parametrize(
    ("members", "times"),
    [
        pytest.param(2, 1, id="fork-server-starting-once"),
        pytest.param(3, 1, id="worker-starting-once"),
        pytest.param(2, 2, id="fork-server-starting-twice"),
        pytest.param(3, 2, id="worker-starting-twice"),
    ],
)
def test_ctrl_c_in_a_terminal_reaches_the_helpers_too(
    images: ImageServer, tmp_path: Path, members: int, times: int
) -> None:
    """A terminal sends Ctrl-C to the whole foreground process group: the fork server (still
    importing the worker code) and a fetch worker just forked ignore it, and are stopped by
    the download itself: no traceback, and no row failed as 'fetch worker died'."""
    urls = make_url_list(images.base_url, ROWS, seed=37, faults=FAULTS)
    url_list = tmp_path / "urls.txt"
    url_list.write_text("\n".join(urls) + "\n")
    out = tmp_path / "out"
    cmd = download_cmd(url_list, out)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        # The download, its fork server (members=2), then a fetch worker (members=3).
        wait_until(lambda: len(group_members(proc.pid)) >= members, 60, "the helpers", 0.002)
        os.killpg(proc.pid, signal.SIGINT)  # the group we started, as a terminal does
        if times == 2:
            time.sleep(0.2)
            assert proc.poll() is None
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    wait_group_gone(proc.pid)
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    check_complete(out, ROWS)
    index = SqliteIndex(out / "index.sqlite")
    try:
        assert not [e for e in index.error_counts() if "worker" in e], index.error_counts()
    finally:
        index.close()
