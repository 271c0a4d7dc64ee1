"""Memory does not grow with the url list: what `download` holds per row is bounded by its
settings, not by the list's length (`make bench` measures the peak RSS at 10k, 100k and 1M
rows; this checks the structures that would hold rows, on a list ten times their bounds).

The in-process bus holds the records no group has committed yet: `urls` rows the reader sent
ahead of the fetcher (at most MAX_AHEAD plus one batch), APPEND answers the appender has not
put in a committed segment (the open segment's rows, and the closing one's until its commit,
plus the rows in flight; with an appender slower than the fetcher, MAX_AHEAD more)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from i2d_cli import embedded
from i2d_cli.main import main
from i2d_imageserver import ImageServer
from i2d_segments.bus.memory import MemoryBus
from i2d_segments.index import SegmentCommit, SegmentMove, SqliteIndex

ROWS = 1500
AHEAD = 150  # embedded.MAX_AHEAD, here
BATCH = 50  # embedded.SKIP_BATCH, here
SHARD = 100  # --number_sample_per_shard
THREADS = 16  # --thread_count: rows in flight


class PeakBus(MemoryBus):
    """A MemoryBus that notes, after each truncation, the most records each topic held."""

    peaks: dict[str, int] = {}
    partitions: dict[str, int] = {}

    def truncate_consumed(self) -> int:
        dropped = super().truncate_consumed()
        with self._cond:
            for topic, logs in self._topics.items():
                held = sum(len(log.records) for log in logs)
                PeakBus.peaks[topic] = max(PeakBus.peaks.get(topic, 0), held)
                PeakBus.partitions[topic] = len(logs)
        return dropped


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with ImageServer() as s:
        yield s


def run(tmp_path: Path, server: ImageServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """`download` of ROWS urls that all answer 404; the most records each topic held."""
    monkeypatch.setattr(embedded, "MAX_AHEAD", AHEAD)
    monkeypatch.setattr(embedded, "SKIP_BATCH", BATCH)
    monkeypatch.setattr(embedded, "MemoryBus", PeakBus)
    PeakBus.peaks = {}
    url_list = tmp_path / "urls.txt"
    # Every url answers 404: the rows go through fast, with no image work.
    url_list.write_text("".join(f"{server.base_url}/fault/missing/{i}.jpg\n" for i in range(ROWS)))
    main(
        [
            "download",
            f"--url_list={url_list}",
            f"--output_folder={tmp_path / 'out'}",
            "--processes_count=0",
            f"--thread_count={THREADS}",
            f"--number_sample_per_shard={SHARD}",
            "--allowed_networks=127.0.0.1/32",
            "--progress=False",
        ]
    )
    assert server.count("missing") == ROWS  # the whole list went through
    return PeakBus.peaks


def test_what_download_holds_per_row_is_bounded_by_its_settings_not_by_the_list(
    tmp_path: Path, server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    peaks = run(tmp_path, server, monkeypatch)
    assert peaks["urls"] <= AHEAD + BATCH, peaks
    assert peaks["APPEND"] <= 2 * SHARD + THREADS + BATCH, peaks


def test_a_slow_appender_holds_the_reader_back(
    tmp_path: Path, server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow disk or index: each segment commit takes 0.3 s while the fetcher answers a
    segment's rows in far less. The reader waits for the appender instead of letting the
    answers pile up (with images, each holds its image)."""
    commit = SqliteIndex.commit_segment

    def slow_commit(self: SqliteIndex, c: SegmentCommit) -> list[SegmentMove]:
        time.sleep(0.3)
        return commit(self, c)

    monkeypatch.setattr(SqliteIndex, "commit_segment", slow_commit)
    peaks = run(tmp_path, server, monkeypatch)
    assert peaks["urls"] <= AHEAD + BATCH, peaks
    # On their way to a committed segment: at most MAX_AHEAD more than the appender's open and
    # closing segments, per APPEND partition, and the reader's last batch.
    segments = 2 * SHARD * PeakBus.partitions["APPEND"]
    assert peaks["APPEND"] <= AHEAD + segments + BATCH, peaks
