"""The kernel's boot (`i2d_segments.boot.run_service`), shared by `img2dataset serve` and a
user's consumer program: it builds the service from what it opened, runs it until the stop
event, closes everything in order, and turns a start-up failure into a one-line
StartupError."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import i2d_segments.boot as boot
from i2d_segments.boot import StartupError, Wiring, run_service
from i2d_segments.bus.memory import MemoryBus
from i2d_segments.consumer import ConsumerContext, ConsumerSettings, SegmentConsumer, run_consumer
from i2d_segments.index import Index, SegmentRow
from i2d_segments.index.sqlite import SqliteIndex
from i2d_segments.settings import ConnectionSettings
from i2d_segments.store.local import LocalStore


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.indexes: list[SqliteIndex] = []


@pytest.fixture
def wired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    rec = Recorder()

    class Bus(MemoryBus):
        def close(self) -> None:
            rec.events.append("bus closed")

    class Index_(SqliteIndex):
        def close(self) -> None:
            rec.events.append("index closed")
            super().close()

    def index_from(_s: ConnectionSettings) -> Index:
        rec.events.append("index opened")
        index = Index_.open(tmp_path / "index.sqlite")
        rec.indexes.append(index)
        return index

    monkeypatch.setattr(boot, "open_kafka_bus", lambda _s: Bus())
    monkeypatch.setattr(boot, "store_from", lambda _s: LocalStore(tmp_path / "store"))
    monkeypatch.setattr(boot, "index_from", index_from)
    yield rec


class Service:
    def __init__(self, rec: Recorder, wiring: Wiring) -> None:
        self.rec, self.wiring = rec, wiring

    def run(self, stop: threading.Event) -> None:
        self.rec.events.append(f"run, ready: {self.wiring.health.ready()}")
        assert stop.is_set()


def test_the_service_runs_over_what_the_boot_opened_then_all_is_closed(wired: Recorder) -> None:
    stop = threading.Event()
    stop.set()
    built: list[Service] = []

    def factory(_s: ConnectionSettings, wiring: Wiring) -> Service:
        wired.events.append("built")
        wiring.health.add_check("service", lambda: True)
        built.append(Service(wired, wiring))
        return built[0]

    settings = ConnectionSettings(metrics_port=0, create_topics=False)
    run_service("test", settings, factory, stop=stop)
    assert wired.events == [
        "index opened",
        "built",
        "run, ready: True",  # started, and the index answers
        "index closed",
        "bus closed",
    ]
    assert built[0].wiring.index is wired.indexes[0]


def test_a_service_without_an_index_gets_none(wired: Recorder) -> None:
    stop = threading.Event()
    stop.set()
    wirings: list[Wiring] = []

    def factory(_s: ConnectionSettings, wiring: Wiring) -> Service:
        wirings.append(wiring)
        return Service(wired, wiring)

    run_service("test", ConnectionSettings(metrics_port=0), factory, uses_index=False, stop=stop)
    assert "index opened" not in wired.events and wired.events[-1] == "bus closed"
    with pytest.raises(RuntimeError):
        _ = wirings[0].index


def test_a_start_up_failure_is_one_line_and_closes_what_was_opened(wired: Recorder) -> None:
    def factory(_s: ConnectionSettings, _w: Wiring) -> Any:
        raise ConnectionError("cannot connect to\n  the store:\tmissing")

    with pytest.raises(StartupError) as raised:
        run_service("test", ConnectionSettings(metrics_port=0), factory, stop=threading.Event())
    assert str(raised.value) == "cannot connect to the store: missing"
    assert isinstance(raised.value.__cause__, ConnectionError)
    assert wired.events == ["index opened", "index closed", "bus closed"]


class Nothing(SegmentConsumer):
    group_id = "nothing"

    def handle(self, segment: SegmentRow, ctx: ConsumerContext) -> None:
        raise AssertionError("no segment is committed")


def test_run_consumer_over_the_bus_boots_like_serve(
    wired: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    stop = threading.Event()
    stop.set()  # as if SIGTERM came at once: it catches up, polls once and stops
    monkeypatch.setattr(boot, "stop_event_on_signals", lambda: stop)
    assert run_consumer(Nothing(), ConsumerSettings(metrics_port=0, create_topics=False)) == 0
    assert wired.events == ["index opened", "index closed", "bus closed"]
