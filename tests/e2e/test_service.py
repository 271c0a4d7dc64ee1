"""`img2dataset service` + `enqueue --output_folder`, as PR #474's users run them on one machine:
a service that runs until stopped over the folder's durable bus, lists added from other
processes at any time, a service killed at any moment and started again, and the commands that
read the folder meanwhile (status, materialize, a download into it)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from i2d_imageserver import ImageServer, make_url_list
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.reader import DatasetReader
from tests.servers.proc import wait_until

BIN = Path(sys.executable).parent
SERVICE_FLAGS = [
    "--thread_count=16",
    "--processes_count=1",
    "--allowed_networks=127.0.0.1/32",  # the local image server
    "--segment_idle_seconds=1",
    "--number_sample_per_shard=1000",
]


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    # Slow rows (1 s before their headers) keep work in flight when the service is killed.
    with ImageServer(slow_delay=1.0) as server:
        yield server


class Service:
    """One `img2dataset service` process on a folder; killed at teardown if still running."""

    def __init__(self, folder: Path, *extra: str) -> None:
        self.folder = folder
        self.log = folder.parent / f"service-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen(
            [
                str(BIN / "img2dataset"),
                "service",
                "--output_folder",
                str(folder),
                *SERVICE_FLAGS,
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            text=True,
        )
        # Serving once it holds the folder's lock.
        wait_until(
            lambda: "img2dataset service" in _lock_text(folder) or self.proc.poll() is not None,
            30,
            "the service to hold its folder",
        )
        assert self.proc.poll() is None, self.stderr()

    def stderr(self) -> str:
        return self.log.read_text()

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def _lock_text(folder: Path) -> str:
    try:
        return (folder / ".img2dataset.lock").read_text()
    except FileNotFoundError:
        return ""


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.kill()


def write_list(path: Path, urls: list[str]) -> Path:
    path.write_text("".join(u + "\n" for u in urls))
    return path


def enqueue_cmd(folder: Path, url_list: Path, *extra: str) -> list[str]:
    return [
        str(BIN / "img2dataset"),
        "enqueue",
        "--url_list",
        str(url_list),
        "--output_folder",
        str(folder),
        "--progress=False",
        *extra,
    ]


def enqueue(folder: Path, url_list: Path, *extra: str, timeout: float = 120) -> str:
    done = subprocess.run(
        enqueue_cmd(folder, url_list, *extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr + done.stdout


def recorded(folder: Path) -> dict[str, int]:
    index = SqliteIndex(folder / "index.sqlite")
    try:
        return index.status_counts()
    finally:
        index.close()


def segment_count(folder: Path) -> int:
    index = SqliteIndex(folder / "index.sqlite")
    try:
        return len(index.segments())
    finally:
        index.close()


def test_a_list_enqueued_to_a_running_service_is_recorded_within_seconds_in_one_segment(
    tmp_path: Path, images: ImageServer, services: list[Service]
) -> None:
    folder = tmp_path / "data"
    services.append(service := Service(folder))
    urls = make_url_list(images.base_url, 150, seed=101, faults={"missing": 0.1})
    url_list = write_list(tmp_path / "urls.txt", urls)

    started = time.monotonic()
    out = enqueue(folder, url_list, "--wait")
    waited = time.monotonic() - started
    assert "all 150 rows are recorded" in out
    counts = recorded(folder)
    assert sum(counts.values()) == 150
    assert counts["success"] == 135 and counts["failed_to_download"] == 15
    assert waited < 60, f"--wait took {waited:.0f}s"
    # One segment, closed by the idle time, not a trail of tiny ones.
    assert segment_count(folder) == 1

    # The same list again: nothing to send, nothing changes.
    out = enqueue(folder, url_list, "--wait")
    assert "enqueued 0 rows" in out and "150 rows skipped" in out
    assert recorded(folder) == counts and segment_count(folder) == 1

    # status and materialize read the folder while the service runs.
    status = subprocess.run(
        [str(BIN / "img2dataset"), "status", str(folder), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    snapshot = json.loads(status.stdout)
    assert snapshot["mode"] == "service"
    materialize = subprocess.run(
        [str(BIN / "img2dataset"), "materialize", "--output_folder", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert materialize.returncode == 0, materialize.stderr
    assert (folder / "manifests").is_dir()

    assert service.terminate() == 0, service.stderr()
    assert "Traceback" not in service.stderr()


def test_two_enqueues_at_once_both_land_and_a_list_waits_for_a_stopped_service(
    tmp_path: Path, images: ImageServer, services: list[Service]
) -> None:
    folder = tmp_path / "data"
    first = write_list(tmp_path / "a.txt", make_url_list(images.base_url, 120, seed=102))
    second = write_list(tmp_path / "b.txt", make_url_list(images.base_url, 80, seed=103))
    # No service yet: both lists wait on the folder's bus.
    procs = [
        subprocess.Popen(enqueue_cmd(folder, path), stderr=subprocess.PIPE, text=True)
        for path in (first, second)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert recorded(folder) == {}

    services.append(service := Service(folder))
    wait_until(lambda: sum(recorded(folder).values()) == 200, 120, "both lists recorded")
    assert recorded(folder) == {"success": 200}
    assert service.terminate() == 0, service.stderr()


def test_a_service_killed_at_any_moment_records_every_row_exactly_once_after_a_restart(
    tmp_path: Path, images: ImageServer, services: list[Service]
) -> None:
    folder = tmp_path / "data"
    rows = 400
    urls = make_url_list(images.base_url, rows, seed=104, faults={"slow": 0.1, "missing": 0.05})
    url_list = write_list(tmp_path / "urls.txt", urls)
    enqueue(folder, url_list)
    # Small segments so that kills land before, during and after segment commits.
    flags = ("--number_sample_per_shard=50",)
    for delay in (1.5, 2.5, 2.0):
        services.append(service := Service(folder, *flags))
        time.sleep(delay)
        service.kill()  # SIGKILL: no clean stop, whatever was in flight
    services.append(service := Service(folder, *flags))
    wait_until(lambda: sum(recorded(folder).values()) == rows, 180, "every row recorded")
    assert service.terminate() == 0, service.stderr()

    assert recorded(folder) == {"success": rows - 20, "failed_to_download": 20}
    # Each image is stored once, in one committed segment, whatever the kills interrupted.
    with DatasetReader.open(str(folder)) as reader:
        stored = [item.item_id for item in reader.iter_items(load_images=False)]
    assert len(stored) == len(set(stored)) == rows - 20


def test_download_into_a_served_folder_says_how_to_enqueue_in_one_line(
    tmp_path: Path, images: ImageServer, services: list[Service]
) -> None:
    folder = tmp_path / "data"
    services.append(service := Service(folder))
    url_list = write_list(tmp_path / "urls.txt", make_url_list(images.base_url, 5, seed=105))
    done = subprocess.run(
        [
            str(BIN / "img2dataset"),
            "download",
            "--url_list",
            str(url_list),
            "--output_folder",
            str(folder),
            "--progress=False",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "img2dataset service (pid" in lines[0] and "img2dataset enqueue" in lines[0]
    # A second service is refused the same way.
    second = subprocess.run(
        [str(BIN / "img2dataset"), "service", "--output_folder", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1 and "img2dataset service (pid" in second.stderr
    assert service.terminate() == 0


def test_a_download_into_a_folder_a_service_used_also_fetches_its_waiting_rows(
    tmp_path: Path, images: ImageServer
) -> None:
    """The folder's durable bus carries on: rows enqueued for a service that is not running
    are fetched by a download into the folder, which then owns the APPEND offsets."""
    folder = tmp_path / "data"
    waiting = write_list(tmp_path / "a.txt", make_url_list(images.base_url, 40, seed=106))
    enqueue(folder, waiting)
    own = write_list(tmp_path / "b.txt", make_url_list(images.base_url, 30, seed=107))
    done = subprocess.run(
        [
            str(BIN / "img2dataset"),
            "download",
            "--url_list",
            str(own),
            "--output_folder",
            str(folder),
            "--progress=False",
            "--processes_count=1",
            "--allowed_networks=127.0.0.1/32",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert recorded(folder) == {"success": 70}
