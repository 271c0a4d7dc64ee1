"""CPU time by pipeline stage: where each row's CPU goes (download, hashing, decode, resize,
encode, hand-offs between processes, append, index...).

A stage is timed with `time.thread_time()` deltas around code that runs on one thread without
awaiting (under a microsecond a measure), and added here with `add(stage, seconds)`. In the
process that serves /metrics the seconds go to `_stage_cpu()` (each service's metrics module
creates its own stages' series at 0). A fetch worker process has no /metrics: it calls
`collect_locally()` at start, so its stages pile up here and travel to the main process with
its results (`take()`), where `add_reported` counts them.

`own_seconds()` is what this process measured itself (not what workers reported): the caller
subtracts it from the process's CPU time to show the remainder no stage accounts for.
"""

from __future__ import annotations

import threading
import time
from typing import Any

_HELP = (
    "CPU seconds spent by pipeline stage, all processes (fetch workers report theirs with "
    "their results): download (a worker's event loop: HTTP, parsing, everything not below), "
    "hash, decode, resize, encode (image work), record (building APPEND records), handoff "
    "(pickling and socket I/O between the main process and the workers), append (the "
    "appender, writing segments), index (dedup lookups and segment commits), materialize."
)
_counter: Any = None


def _stage_cpu() -> Any:
    """The `img2dataset_stage_cpu_seconds_total` counter, made on first use: a fetch worker
    never needs it (its stages travel with its results), so the fork server does not import
    prometheus_client for it (~0.03 s of CPU per run)."""
    global _counter
    if _counter is None:
        with _lock:
            if _counter is None:
                from prometheus_client import Counter

                _counter = Counter("img2dataset_stage_cpu_seconds_total", _HELP, ["stage"])
    return _counter


# Every stage, in the order of a row's path (how summaries list them); `other` is the main
# process's CPU no stage accounts for during a run (reading the list, the bus, progress...).
ORDER = (
    "download",
    "hash",
    "decode",
    "resize",
    "encode",
    "record",
    "handoff",
    "append",
    "index",
    "materialize",
    "other",
)

# How often a worker attaches its stage times to a result (and when it goes idle).
REPORT_SECONDS = 0.5


class _Local:
    """A worker's stage times, kept until `take()` (its loop and imaging threads both add)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds: dict[str, float] = {}
        self.process_cpu = time.process_time()
        self.reported_at = time.monotonic()


_lock = threading.Lock()
_own: dict[str, float] = {}
_local: _Local | None = None
_children: dict[str, Any] = {}


def add(stage: str, seconds: float) -> None:
    """`seconds` of this process's CPU went to `stage`."""
    local = _local
    if local is not None:
        with local.lock:
            local.seconds[stage] = local.seconds.get(stage, 0.0) + seconds
        return
    with _lock:
        _own[stage] = _own.get(stage, 0.0) + seconds
    _series(stage).inc(seconds)


def add_reported(seconds: dict[str, float]) -> None:
    """Stage times another process (a fetch worker) measured and sent here."""
    for stage, s in seconds.items():
        if s > 0:
            _series(stage).inc(s)


def _series(stage: str) -> Any:
    """The counter's child of `stage`, looked up once (labels() takes a lock and builds a
    tuple at every call, and stages are counted per message)."""
    child = _children.get(stage)
    if child is None:
        child = _children[stage] = _stage_cpu().labels(stage)
    return child


def own_seconds() -> float:
    """This process's CPU measured in stages so far (not counting reported ones)."""
    with _lock:
        return sum(_own.values())


def totals() -> dict[str, float]:
    """Every stage's seconds so far, as /metrics shows them."""
    out: dict[str, float] = {}
    for metric in _stage_cpu().collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["stage"]] = sample.value
    return out


def collect_locally() -> None:
    """This process (a fetch worker) keeps its stage times for `take()` from now on."""
    global _local
    _local = _Local()


def due(idle: bool) -> bool:
    """Whether a worker should report now: REPORT_SECONDS passed, or it has nothing else in
    flight (the end of a run, whose last rows then carry everything)."""
    local = _local
    return local is not None and (idle or time.monotonic() - local.reported_at >= REPORT_SECONDS)


def take(remainder: str = "download") -> dict[str, float]:
    """A worker's stage times since the last take; its CPU no stage accounts for (the event
    loop: HTTP, parsing...) goes to `remainder`, so they add up to the process's CPU."""
    local = _local
    if local is None:
        return {}
    cpu = time.process_time()
    with local.lock:
        out = local.seconds
        local.seconds = {}
    out[remainder] = max(0.0, cpu - local.process_cpu - sum(out.values()))
    local.process_cpu = cpu
    local.reported_at = time.monotonic()
    return out


def precreate(stages: tuple[str, ...]) -> None:
    """Create the series of `stages` at 0 (a dashboard shows 0 rather than "No data")."""
    for stage in stages:
        _stage_cpu().labels(stage)


class RunClock:
    """The stage times of one run in this process: `seconds()` gives each stage's CPU since
    the clock started, and `other`, this process's CPU no stage of its own accounts for."""

    def __init__(self) -> None:
        self._process = time.process_time()
        self._own = own_seconds()
        self._totals = totals()

    def seconds(self) -> dict[str, float]:
        now = totals()
        out = {k: v - self._totals.get(k, 0.0) for k, v in now.items()}
        process = time.process_time() - self._process
        out["other"] = max(0.0, process - (own_seconds() - self._own))
        rank = {stage: i for i, stage in enumerate(ORDER)}
        return dict(sorted(out.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))
