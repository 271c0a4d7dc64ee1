"""The summary a download prints at the end: what ran, what the dataset holds, why rows failed."""

from __future__ import annotations

from i2d_cli.embedded import Summary


def test_summary_reads_as_a_sentence() -> None:
    one = Summary(
        rows_fetched=10,
        successes=8,
        elapsed=2.0,
        status_counts={"success": 8, "failed_to_download": 2},
        error_counts={"HTTP Error 404: Not Found": 2},
        segments=1,
    ).render()
    assert "this run: 10 rows fetched, 8 images stored or deduplicated" in one
    assert "2.0s, 4.0 images/s" in one
    assert "dataset: failed_to_download=2, success=8, 1 segment\n" in one
    assert one.endswith("failures by reason:\n         2  HTTP Error 404: Not Found")
    assert Summary(segments=3).render().endswith("dataset: 3 segments")


def test_summary_has_one_line_of_cpu_by_stage_a_script_can_read() -> None:
    from bench.breakdown import stage_seconds

    cpu = {"download": 1.25, "decode": 3.5, "append": 0.5, "other": 0.75}
    text = Summary(rows_fetched=1, successes=1, elapsed=1.0, cpu_seconds=cpu).render()
    assert "cpu seconds by stage: download=1.250 decode=3.500 append=0.500 other=0.750" in text
    assert stage_seconds(text) == cpu
