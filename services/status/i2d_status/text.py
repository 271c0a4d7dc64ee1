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


def render(s: StatusResponse, *, now: float | None = None) -> str:
    now = time.time() if now is None else now
    p = s.progress
    rate = "n/a" if p.success_rate is None else f"{100 * p.success_rate:.1f} %"
    lines = [f"img2dataset {s.version} ({s.mode})"]
    recorded = f"rows recorded: {p.samples}"
    if p.enqueued is not None:
        done = "" if p.fraction is None else f" ({100 * p.fraction:.1f} % fetched)"
        recorded += f" of {p.enqueued} enqueued{done}"
    lines.append(recorded)
    lines.append(f"successes: {p.successes}   failures: {p.failures}   success rate: {rate}")
    lines.append(
        f"rate: {s.rates.images_per_second:.1f} images/s, {s.rates.samples_per_second:.1f} rows/s "
        f"(last {s.rates.window_seconds:.0f} s, {s.rates.source})"
    )
    last = (
        "never"
        if s.segments.last_closed_at is None
        else f"{max(0.0, now - s.segments.last_closed_at):.0f} s ago"
    )
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
