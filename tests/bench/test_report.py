"""`make bench`'s verdicts: a target against img2dataset is met only when the in-run ratio
(each tool's own clock, start-up left out) reaches it too, since a short list's wall clock
counts img2dataset's long start-up, which a list of billions of rows does not."""

from __future__ import annotations

from bench.harness import RunResult
from bench.report import render, summarize

TOOLS = ("download", "kafka", "img2dataset")


def _run(tool: str, wall: float, in_run: float, rows: int = 20000) -> RunResult:
    return RunResult(tool, "404", 0, rows, 0, wall, in_run, cpu_seconds=rows / 1000)


def _target(text: str, pair: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(pair + ", rows/s"))


def test_a_wall_clock_ratio_inflated_by_start_up_misses_on_the_in_run_ratio() -> None:
    # img2dataset: 20 s of wall clock, 13 s of its own clock (7 s of start-up); ours 10 and 9.
    results = [_run("download", 10.0, 9.0), _run("img2dataset", 20.0, 13.0)]
    line = _target(render(summarize(results, TOOLS), TOOLS), "download / img2dataset")
    assert "404 2.00x (2.00x), in-run 1.44x MISSED" in line


def test_a_target_is_met_when_both_ratios_reach_it() -> None:
    results = [_run("download", 10.0, 6.0), _run("img2dataset", 20.0, 13.0)]
    line = _target(render(summarize(results, TOOLS), TOOLS), "download / img2dataset")
    assert "404 2.00x (2.00x), in-run 2.17x ok" in line


def test_our_tools_against_each_other_keep_the_wall_clock() -> None:
    # kafka's in-run is its wall clock; download's leaves its start-up out: not comparable.
    results = [_run("download", 10.0, 6.0), _run("kafka", 11.0, 11.0)]
    line = _target(render(summarize(results, TOOLS), TOOLS), "kafka / download")
    assert "404 0.91x (0.91x) ok" in line
    assert "in-run" not in line


def test_a_run_without_its_own_clock_is_not_judged_on_the_wall_clock_alone() -> None:
    results = [_run("download", 10.0, 6.0), _run("img2dataset", 30.0, 13.0)]
    results[0].in_run_seconds = None  # a summary line the bench could not read
    line = _target(render(summarize(results, TOOLS), TOOLS), "download / img2dataset")
    assert "404 3.00x (3.00x), in-run - not judged (no in-run figure)" in line
    assert " ok" not in line
