"""CPU time by stage: a worker's report adds up to its CPU, and a run's figures are its own."""

from __future__ import annotations

import time

import pytest

from i2d_segments import stagecpu


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@pytest.fixture
def worker_mode() -> object:
    stagecpu.collect_locally()
    yield
    stagecpu._local = None  # back to the main process's mode for the other tests


def test_a_worker_reports_its_stages_and_the_rest_as_download(worker_mode: object) -> None:
    before = stagecpu.totals()
    stagecpu.add("decode", 0.02)
    _spin(0.05)
    assert stagecpu.totals() == before  # a worker keeps them: no /metrics there
    report = stagecpu.take()
    assert report["decode"] == pytest.approx(0.02)
    # The rest of the CPU since it started collecting is the event loop's: `download`.
    assert report["download"] >= 0.02
    again = stagecpu.take()
    assert set(again) == {"download"} and again["download"] < 0.02
    assert stagecpu.due(idle=True)


def test_reports_and_own_stages_reach_the_counter_and_a_run_clock() -> None:
    clock = stagecpu.RunClock()
    stagecpu.add("append", 0.25)
    stagecpu.add_reported({"decode": 1.5, "download": 0.5})
    _spin(0.02)
    seconds = clock.seconds()
    assert seconds["append"] == pytest.approx(0.25)
    assert seconds["decode"] == pytest.approx(1.5)
    order = list(seconds)  # a row's order, `other` last
    assert order.index("download") < order.index("decode") < order.index("append")
    assert order[-1] == "other"
    # `other`: this process's CPU less what it measured in stages (the 0.25 s added here
    # were never spent, so it bottoms at 0); reports from workers do not count against it.
    assert seconds["other"] >= 0.0
    assert stagecpu.totals()["decode"] >= 1.5
