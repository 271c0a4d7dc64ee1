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
