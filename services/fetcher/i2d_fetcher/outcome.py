"""A row's outcome as the fetcher's main process receives it: the APPEND record already
encoded (where it was made, in a worker process), its key, status and payload size, and the
row's figures for the metrics. Also the failure records built without fetching anything.

Light on purpose (no aiohttp, Pillow or numpy): the main process imports it, and with the
work in worker processes it never needs those.
"""

from __future__ import annotations

from dataclasses import dataclass

from i2d_fetcher.reasons import reason_of
from i2d_segments.records import (
    AppendRecord,
    MalformedRecord,
    SampleStatus,
    UrlRow,
    encode_append,
    failure_value,
    parse_url_value,
)


@dataclass(slots=True)
class RowStats:
    """What one row measured, for the fetcher's metrics (observed by the main process)."""

    fetch_seconds: float | None = None  # the download, retries included; None: not tried
    downloaded_bytes: int = 0
    resize_seconds: float | None = None  # decode/resize/encode; None: not reached
    # robots.txt lookups and fetches of the worker since the last row that reported them
    # (http/robotscache.py `take_counts`): `hit`, `miss`, `fetch:<result>`.
    robots: dict[str, int] | None = None
    # A worker's CPU seconds by stage since its last report (i2d_segments.stagecpu.take),
    # on some rows only: about every half second, and on the last row in flight.
    cpu: dict[str, float] | None = None


@dataclass(slots=True)
class Outcome:
    """One row's APPEND record, encoded where it was made, and what producing it needs.
    Not changed once made (not frozen: a frozen dataclass sets each field through
    `object.__setattr__`, and two are made per row, in the worker and in the main process)."""

    value: bytes  # encode_append(record)
    key: bytes  # record.key
    status: SampleStatus
    payload_size: int  # 0: no payload
    stats: RowStats
    reason: str | None = None  # a failure's bounded reason (reasons.py), for the metric

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        # Every row's outcome crosses the wire to the main process (pool/wire.py): as one flat
        # tuple of plain values, rebuilt by one call. The dataclasses' default pickling
        # looks their fields up at each load (dataclasses.fields) and the status enum by
        # value through its metaclass, which cost the main process more than the rest of it.
        st = self.stats
        return _outcome, (
            self.value,
            self.key,
            self.status.value,
            self.payload_size,
            self.reason,
            st.fetch_seconds,
            st.downloaded_bytes,
            st.resize_seconds,
            st.robots,
            st.cpu,
        )

    @classmethod
    def failure(
        cls, row: UrlRow, error: str, status: SampleStatus, stats: RowStats | None = None
    ) -> Outcome:
        """`Outcome.of(AppendRecord.failure(row, error, status), stats)`: the same record,
        written without the models when `failure_value` can (a failed row's usual case)."""
        value = failure_value(row, error, status)
        if value is None:
            return cls.of(AppendRecord.failure(row, error, status), stats)
        return cls(
            value=value,
            key=row.sample_id.encode(),  # a failure's key (AppendRecord.key)
            status=status,
            payload_size=0,
            stats=stats or RowStats(),
            reason=reason_of(error),
        )

    @classmethod
    def of(cls, record: AppendRecord, stats: RowStats | None = None) -> Outcome:
        return cls(
            value=encode_append(record),
            key=record.key,
            status=record.meta.status,
            payload_size=len(record.payload or b""),
            stats=stats or RowStats(),
            reason=None
            if record.meta.status is SampleStatus.SUCCESS
            else reason_of(record.meta.error_message),
        )


_STATUSES = {s.value: s for s in SampleStatus}


def _outcome(
    value: bytes,
    key: bytes,
    status: str,
    payload_size: int,
    reason: str | None,
    fetch_seconds: float | None,
    downloaded_bytes: int,
    resize_seconds: float | None,
    robots: dict[str, int] | None,
    cpu: dict[str, float] | None,
) -> Outcome:
    """An Outcome from its pickled form (`Outcome.__reduce__`)."""
    stats = RowStats(fetch_seconds, downloaded_bytes, resize_seconds, robots, cpu)
    return Outcome(value, key, _STATUSES[status], payload_size, stats, reason)


def parse(value: bytes, url_field: str, caption_field: str | None) -> UrlRow | Outcome | None:
    """A `urls` record's row; or the outcome of a malformed one; None for a blank line.

    Never raises for the record's content: invalid UTF-8 or JSON, JSON nested too deep or
    holding a number Python cannot read are a failed sample `malformed row: ...`, so the
    record is answered and the fetcher goes on."""
    try:
        return parse_url_value(value, url_field, caption_field)
    except (MalformedRecord, UnicodeDecodeError) as e:
        return Outcome.of(AppendRecord.failure(value, f"malformed row: {e}"))
    except (ValueError, RecursionError) as e:  # a bound missed upstream: still one row's failure
        return Outcome.of(AppendRecord.failure(value, f"malformed row: {type(e).__name__}"))


def failed_value(
    value: bytes, error: str, url_field: str = "url", caption_field: str | None = "caption"
) -> Outcome | None:
    """The failure outcome of a `urls` record that could not be fetched at all (its worker
    died): keyed and described like the row itself; None for a blank line."""
    row = parse(value, url_field, caption_field)
    if not isinstance(row, UrlRow):
        return row
    return Outcome.of(AppendRecord.failure(row, error))
