"""Which rows of a url list a run sends: rows not recorded yet, and with `--retry_failed`
failed rows again (`transient`: those whose failure may not last; `all`: every one).

A row sent again is the same sample (same id): its latest outcome replaces the previous one
in the index, moving it to the segment that recorded it (segment_moves)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar

from i2d_fetcher.reasons import is_transient
from i2d_segments.index import Index
from i2d_segments.records import UnparsedRow, UrlRow

RetryFailed = Literal["none", "transient", "all"]
Row = TypeVar("Row", UrlRow, UnparsedRow, UrlRow | UnparsedRow)


def rows_to_send(index: Index, rows: Sequence[Row], retry_failed: RetryFailed) -> list[Row]:
    """The rows of `rows` to fetch, in order; the others are recorded already."""
    ids = [r.sample_id for r in rows]
    if retry_failed == "none":
        known = index.known_samples(ids)
        return [r for r, sid in zip(rows, ids, strict=True) if sid not in known]
    outcomes = index.sample_outcomes(ids)
    out: list[Row] = []
    for row, sid in zip(rows, ids, strict=True):
        outcome = outcomes.get(sid)
        if outcome is None or _retried(outcome, retry_failed):
            out.append(row)
    return out


def _retried(outcome: tuple[str, str | None], retry_failed: RetryFailed) -> bool:
    status, error = outcome
    if status == "success":
        return False
    return retry_failed == "all" or is_transient(error)
