"""Every reader of an output folder finds its dataset as `OutputFolder` resolves it: a folder
whose index is not `index.sqlite` (`--index_name other.sqlite`, recorded in img2dataset.json) is
read by `img2dataset status DIR`, by the reader, by materialize, verify and reindex; `status DIR
--port 0` serves the dashboard and its API until SIGTERM; a folder with a durable bus (where
`img2dataset service` runs) shows mode "service" and its consumer groups' lag."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from i2d_cli.main import main
from i2d_segments.bus import TopicPartition
from i2d_segments.folder import DESCRIPTOR, INNER_FOLDER, OutputFolder
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.reader import DatasetReader
from i2d_segments.records import AppendRecord
from i2d_segments.store.local import LocalStore
from tests.append_records import failure, success
from tests.ops.helpers import Pipeline, run_until
from tests.servers.proc import wait_until
from tests.status.helpers import get_json, http_get

INDEX_NAME = "other.sqlite"
# Two segments of the ops pipeline's 5 rows: 7 images, 3 failures.
OUTCOMES = "ssfss" + "sfsfs"
SUCCESSES = OUTCOMES.count("s")


def photo(n: int) -> AppendRecord:
    """Row `n` as a success whose stored image is a real JPEG."""
    buf = io.BytesIO()
    Image.new("RGB", (16 + n, 12), (20 * n % 256, 80, 160)).save(buf, "JPEG")
    return AppendRecord(meta=success(n).meta, payload=buf.getvalue())


def write_folder(folder: Path) -> None:
    """A folder a download with `--index_name other.sqlite` leaves: its descriptor names the
    index, and two committed segments (the real appender's, over the folder's store)."""
    folder.mkdir(parents=True)
    (folder / DESCRIPTOR).write_text(json.dumps({"format": 1, "index": INDEX_NAME}))
    index = SqliteIndex.open(folder / INDEX_NAME)
    try:
        p = Pipeline(LocalStore(folder), index)
        appender = p.appender("appender")
        p.send([photo(n) if o == "s" else failure(n) for n, o in enumerate(OUTCOMES)])
        run_until(appender, lambda: len(index.segments()) == 2)
    finally:
        index.close()
    assert not (folder / "index.sqlite").exists()


@pytest.fixture(scope="module")
def _pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("folder-status") / "out"
    write_folder(folder)
    return folder


@pytest.fixture
def folder(_pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(_pristine, copy)
    return copy


def check_summary(text: str, mode: str = "embedded") -> None:
    assert text.startswith("img2dataset ") and f"({mode})\n" in text
    assert "rows recorded: 10\n" in text
    assert f"successes: {SUCCESSES}   failures: 3   success rate: 70.0 %" in text
    assert f"segments: 2 closed, 0 open, {SUCCESSES} images" in text
    assert "404 Not Found" in text


def test_status_reads_the_folders_own_index(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", str(folder)]) == 0
    check_summary(capsys.readouterr().out)
    # The flag form of before still works, and --json with either.
    assert main(["status", "--output_folder", str(folder)]) == 0
    check_summary(capsys.readouterr().out)
    assert main(["status", str(folder), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["mode"] == "embedded" and s["lag"] == [] and s["errors"] == []
    assert (s["progress"]["samples"], s["progress"]["successes"]) == (10, SUCCESSES)
    assert s["segments"]["closed"] == 2
    # Status only reads: the index is not created under the default name, nor anything else.
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(INDEX_NAME)) == [
        DESCRIPTOR,
        "segments",
    ]


def test_status_usage_errors(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", str(folder / "nope")]) == 2
    err = capsys.readouterr().err
    assert "not an output folder" in err and "nope" in err and "Traceback" not in err
    assert main(["status", str(folder), "--output_folder", str(folder / "other")]) == 2
    assert "two output folders" in capsys.readouterr().err
    assert main(["status", str(folder), "--json", "--port", "0"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["status", str(folder), "--host", "127.0.0.1"]) == 2
    assert "--port" in capsys.readouterr().err


def test_status_finds_the_dataset_kept_in_segments(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `download --output_format files` keeps the dataset in out/_segments/.
    out = tmp_path / "layout"
    out.mkdir()
    folder.rename(out / INNER_FOLDER)
    (out / "00000.parquet").write_bytes(b"img2dataset's layout")
    assert main(["status", str(out)]) == 0
    check_summary(capsys.readouterr().out)
    with DatasetReader.open(str(out)) as ds:
        assert ds.index is not None and len(ds.segment_ids()) == 2


def test_the_reader_opens_the_folders_own_index(folder: Path) -> None:
    with DatasetReader.open(str(folder)) as ds:
        assert ds.index is not None  # random access: the recorded index was found
        ids = ds.segment_ids()
        assert len(ids) == 2
        items = list(ds)
        assert len(items) == SUCCESSES
        again = ds.get(items[0].item_id)
        assert again is not None and again.image == items[0].image
        assert Image.open(io.BytesIO(again.image)).size == (16, 12)
    with DatasetReader.open(folder.absolute().as_uri()) as ds:
        assert ds.index is not None and ds.segment_ids() == ids


def test_materialize_verify_and_reindex_use_the_folders_own_index(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["materialize", "--output_folder", str(folder)]) == 0
    shards = (folder / "manifests" / "shards.txt").read_text().splitlines()
    assert len(shards) == 2
    summary = json.loads((folder / "manifests" / "summary.json").read_text())
    assert summary["segments"] == 2
    assert summary["status_counts"] == {"failed_to_download": 3, "success": SUCCESSES}
    assert main(["verify", "--output_folder", str(folder)]) == 0
    assert not (folder / "index.sqlite").exists()
    capsys.readouterr()

    # The index lost: reindex rebuilds it under the name the folder records.
    for name in [INDEX_NAME, f"{INDEX_NAME}-wal", f"{INDEX_NAME}-shm"]:
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(SystemExit, match="holds no img2dataset dataset"):
        main(["materialize", "--output_folder", str(folder)])
    assert main(["reindex", "--output_folder", str(folder)]) == 0
    assert INDEX_NAME in capsys.readouterr().out
    assert not (folder / "index.sqlite").exists()
    assert main(["status", str(folder), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["progress"]["samples"], s["segments"]["closed"]) == (10, 2)


def test_a_folder_without_a_dataset_is_one_line(tmp_path: Path) -> None:
    for command in ("materialize", "verify", "gc"):
        with pytest.raises(SystemExit) as e:
            main([command, "--output_folder", str(tmp_path / "empty")])
        message = str(e.value.code)
        assert "holds no img2dataset dataset" in message and "\n" not in message


class Served:
    def __init__(self, process: subprocess.Popen[bytes], log: Path, url: str) -> None:
        self.process = process
        self.log = log
        self.url = url


@contextlib.contextmanager
def serve_status(folder: Path, log: Path) -> Iterator[Served]:
    argv = [sys.executable, "-m", "i2d_cli.main", "status", str(folder)]
    argv += ["--port", "0", "--host", "127.0.0.1", "--refresh_seconds", "0.2"]
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    url: list[str] = []

    def logged_url() -> bool:
        found = re.search(r"on (http://127\.0\.0\.1:\d+)/", log.read_text())
        if found:
            url.append(found.group(1))
        assert process.poll() is None, log.read_text()
        return bool(found)

    try:
        wait_until(logged_url, 60, "status to log its URL")
        yield Served(process, log, url[0])
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.fixture
def served(folder: Path, tmp_path: Path) -> Iterator[Served]:
    with serve_status(folder, tmp_path / "status.log") as s:
        yield s


def test_status_port_serves_the_dashboard_until_sigterm(served: Served) -> None:
    url = served.url

    def refreshed() -> bool:
        return http_get(url + "/readyz")[0] == 200

    wait_until(refreshed, 30, "the first refresh")
    s = get_json(url + "/api/status")
    assert s["mode"] == "embedded" and s["errors"] == []
    assert (s["progress"]["samples"], s["progress"]["successes"]) == (10, SUCCESSES)
    assert s["segments"]["closed"] == 2 and s["segments"]["items"] == SUCCESSES
    assert get_json(url + "/api/index")["totals"]["segments"] == 2
    status, body, _ = http_get(url + "/")
    assert status == 200 and b"api/status" in body
    status, body, _ = http_get(url + "/metrics")
    assert status == 200 and b"img2dataset_index_segments 2.0" in body
    assert http_get(url + "/healthz")[0] == 200

    started = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(15) == 0, served.log.read_text()
    assert time.monotonic() - started < 10
    log = served.log.read_text()
    assert "status stopped" in log and "Traceback" not in log


def bus_folder(folder: Path) -> None:
    """The folder `enqueue` fed: 5 rows on its bus's urls topic, 2 of them fetched (the
    fetchers' group committed offset 2)."""
    sqlite_bus = pytest.importorskip("i2d_segments.bus.sqlite")
    bus = sqlite_bus.SqliteBus(OutputFolder.find(folder).bus_path)
    try:
        bus.create_topics({"urls": 1})
        producer = bus.producer()
        for n in range(5):
            producer.produce("urls", f"row {n}".encode(), key=f"k{n}".encode())
        producer.flush()
        producer.close()
        consumer = bus.consumer("fetcher")
        consumer.subscribe(["urls"])
        tp = TopicPartition("urls", 0)
        deadline = time.monotonic() + 30
        while tp not in consumer.assignment() and time.monotonic() < deadline:
            consumer.poll_batch(1, 0.2)
        consumer.commit({tp: 2})
        consumer.close()
        assert [(x.committed, x.high_watermark) for x in bus.lag("fetcher", "urls")] == [(2, 5)]
    finally:
        bus.close()


def test_a_folder_with_a_bus_shows_service_mode_and_its_lag(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bus_folder(folder)
    assert main(["status", str(folder), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["mode"] == "service" and s["errors"] == []
    fetcher = [x for x in s["lag"] if x["group"] == "fetcher"]
    assert fetcher == [
        {"group": "fetcher", "topic": "urls", "partition": 0, "committed": 2, "end": 5, "lag": 3}
    ]
    # Only urls exists yet (no service ran): no lag of topics not created.
    assert {x["topic"] for x in s["lag"]} == {"urls"}
    p = s["progress"]
    assert (p["enqueued"], p["fetched"], p["total"], p["done"]) == (5, 2, 5, 2)
    assert p["run"] is None and p["samples"] == 10

    assert main(["status", str(folder)]) == 0
    text = capsys.readouterr().out
    check_summary(text, mode="service")
    assert "progress: 2 of 5 rows enqueued done (40.0 %)" in text
    assert "fetchers: 2 of 5 enqueued rows committed" in text
    assert re.search(r"fetcher +urls\[0\]  committed 2  end 5  lag 3", text)

    with serve_status(folder, tmp_path / "status.log") as served:
        url = served.url
        wait_until(lambda: http_get(url + "/readyz")[0] == 200, 30, "the first refresh")
        s = get_json(url + "/api/status")
        assert s["mode"] == "service"
        assert [(x["group"], x["lag"]) for x in s["lag"]] == [("fetcher", 3)]
        q = get_json(url + "/api/queue")
        assert q["mode"] == "service" and q["total_lag"] == {"fetcher": 3}
        _, body, _ = http_get(url + "/metrics")
        assert b'img2dataset_consumer_lag{group="fetcher",partition="0",topic="urls"} 3.0' in body
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(15) == 0
