"""The terminal form of /api/status, for `img2dataset status`."""

from __future__ import annotations

import time

from i2d_status.schema import StatusResponse


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _ago(t: float, now: float) -> str:
    return f"{max(0.0, now - t):.0f} s ago"


def render(s: StatusResponse, *, now: float | None = None) -> str:
    now = time.time() if now is None else now
    p = s.progress
    rate = "n/a" if p.success_rate is None else f"{100 * p.success_rate:.1f} %"
    lines = [f"img2dataset {s.version} ({s.mode})"]
    recorded = f"rows recorded: {p.samples}"
    if p.in_open_segments:
        recorded += f" ({p.in_open_segments} in open segments, {p.committed} committed)"
    lines.append(recorded)
    if p.total is not None and p.done is not None:
        pct = "" if p.fraction is None else f" ({100 * p.fraction:.1f} %)"
        of = "in the list" if s.mode == "embedded" else "enqueued"
        lines.append(f"progress: {p.done} of {p.total} rows {of} done{pct}")
    if p.run is not None:
        run = p.run
        state = "running" if run.finished_at is None else f"ended {_ago(run.finished_at, now)}"
        skipped = f", {run.rows_skipped} rows skipped (recorded before)" if run.rows_skipped else ""
        lines.append(
            f"download: {run.url_list}, started {_ago(run.started_at, now)}, {state}{skipped}"
        )
    if p.enqueued is not None and p.fetched is not None:
        lines.append(f"fetchers: {p.fetched} of {p.enqueued} enqueued rows committed")
    lines.append(f"successes: {p.successes}   failures: {p.failures}   success rate: {rate}")
    r = s.rates
    lines.append(
        f"rate: {r.images_per_second:.1f} images/s, {r.samples_per_second:.1f} rows/s, "
        f"{r.failures_per_second:.1f} failures/s (last {r.window_seconds:.0f} s, {r.source})"
    )
    last = "never" if s.segments.last_closed_at is None else _ago(s.segments.last_closed_at, now)
    lines.append(
        f"segments: {s.segments.closed} closed, {s.segments.open} open, {s.segments.items} images, "
        f"{_bytes(s.segments.bytes)}; last closed {last}"
    )
    if s.failures:
        lines.append("failures by reason:")
        lines += [f"  {f.count:>8}  {f.reason}" for f in s.failures]
    if s.lag:
        lines.append("consumer lag:")
        lines += [
            f"  {x.group:<14} {x.topic}[{x.partition}]  committed {x.committed}  end {x.end}  "
            f"lag {x.lag}"
            for x in s.lag
        ]
    for e in s.errors:
        lines.append(f"unavailable: {e}")
    return "\n".join(lines)
