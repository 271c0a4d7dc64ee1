"""The pieces of `make bench`: the local image server, url lists over its warm corpus, one
timed run of img2dataset, of our `download` or of our service mode (`service` + `enqueue
--wait`), and CPU / peak-RSS sampling of process trees.

Every tool is run as commands (a user's view): images/s is successful images over the
command's wall-clock time, start-up included. The "in-run" rate is each tool's own clock
(img2dataset: first shard start to last shard end; our download: the summary's elapsed time;
the service: from its "serving" log line, once its pipeline started, to the enqueue's return).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import IO

# Settings both tools get (img2dataset's defaults, spelled out).
IMAGE_SIZE = 256
RESIZE_MODE = "border"
ENCODE_QUALITY = 95
ENCODE_FORMAT = "jpg"


@dataclass
class RunResult:
    tool: str
    corpus: str
    round: int
    rows: int
    successes: int
    wall_seconds: float
    in_run_seconds: float | None
    cpu_seconds: float | None = None
    peak_rss_main_mb: float | None = None
    peak_rss_tree_mb: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.successes / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def rows_per_second(self) -> float:
        """Every row answered, failures included: the figure of a list that all fails."""
        return self.rows / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def cpu_ms_per_image(self) -> float | None:
        if self.cpu_seconds is None or not self.successes:
            return None
        return 1000 * self.cpu_seconds / self.successes

    @property
    def in_run_images_per_second(self) -> float | None:
        if not self.in_run_seconds:
            return None
        return self.successes / self.in_run_seconds

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["images_per_second"] = round(self.images_per_second, 1)
        out["rows_per_second"] = round(self.rows_per_second, 1)
        rate = self.in_run_images_per_second
        out["in_run_images_per_second"] = None if rate is None else round(rate, 1)
        cpu = self.cpu_ms_per_image
        out["cpu_ms_per_image"] = None if cpu is None else round(cpu, 2)
        return out


# --------------------------------------------------------------------------- image server


class ImageServer:
    """`python -m i2d_imageserver` on a free loopback port, with its corpus warmed (and kept in
    `corpus_dir`, so only the first bench generates images)."""

    def __init__(self, python: str, corpus_dir: Path, list_path: Path, count: int) -> None:
        self.list_path = list_path
        self.proc = subprocess.Popen(
            [
                python,
                "-m",
                "i2d_imageserver",
                "--port",
                "0",
                "--corpus",
                str(corpus_dir),
                "--memory-mb",
                "2048",
                "--write-list",
                str(list_path),
                "--count",
                str(count),
                "--warm",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url:
            self.stop()
            raise RuntimeError("the image server did not start")

    def urls(self) -> list[str]:
        return self.list_path.read_text().split()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def faulty_list(urls: Sequence[str], faults: dict[str, float], seed: int = 1) -> list[str]:
    """The same rows with a fraction turned into /fault/<kind>/ urls of the same photo (so the
    corpus stays warm); `round(fraction * len)` rows per kind, chosen at random."""
    rng = random.Random(seed)
    out = list(urls)
    order = list(range(len(out)))
    rng.shuffle(order)
    start = 0
    for kind, fraction in faults.items():
        n = round(fraction * len(out))
        for i in order[start : start + n]:
            out[i] = out[i].replace("/img/", f"/fault/{kind}/", 1)
        start += n
    return out


def cycled_list(urls: Sequence[str], count: int) -> list[str]:
    """`count` distinct urls over the warm corpus: past its size, the same photos under another
    query string (distinct rows, deduplicated items)."""
    return [
        urls[i % len(urls)] + ("" if i < len(urls) else f"?rep={i // len(urls)}")
        for i in range(count)
    ]


def missing_list(base_url: str, count: int) -> list[str]:
    """`count` distinct urls that all answer 404 (the server's `missing` fault, one name each):
    what a failing row costs, with no image work at all."""
    return [f"{base_url}/fault/missing/{i}.jpg" for i in range(count)]


def write_list(path: Path, urls: Sequence[str]) -> Path:
    path.write_text("".join(u + "\n" for u in urls))
    return path


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Settings:
    processes: int
    img2dataset_threads: int
    ours_threads: int
    shard_size: int
    timeout: int = 10


def fetch_flags(s: Settings, extra: Sequence[str] = ()) -> list[str]:
    """What `download`, `service` and the fetcher service take: resizing, encoding, workers."""
    return [
        "--image_size",
        str(IMAGE_SIZE),
        "--resize_mode",
        RESIZE_MODE,
        "--encode_quality",
        str(ENCODE_QUALITY),
        "--encode_format",
        ENCODE_FORMAT,
        "--processes_count",
        str(s.processes),
        "--thread_count",
        str(s.ours_threads),
        "--timeout",
        str(s.timeout),
        *extra,
    ]


def shard_flags(s: Settings) -> list[str]:
    """Segment size (`download`, `service`, the appender service); the rows' `key` (enqueue)."""
    return ["--number_sample_per_shard", str(s.shard_size)]


def ours_command(
    binary: str, url_list: Path, out: Path, s: Settings, extra: Sequence[str] = ()
) -> list[str]:
    return [
        binary,
        "download",
        "--url_list",
        str(url_list),
        "--output_folder",
        str(out),
        *fetch_flags(s, extra),
        *shard_flags(s),
        "--progress",
        "False",
    ]


def service_command(
    binary: str, out: Path, s: Settings, extra: Sequence[str], idle_seconds: float
) -> list[str]:
    """`download`'s fetch flags; the input flags are enqueue's."""
    return [
        binary,
        "service",
        "--output_folder",
        str(out),
        *fetch_flags(s, extra),
        *shard_flags(s),
        "--segment_idle_seconds",
        str(idle_seconds),
    ]


def enqueue_command(binary: str, url_list: Path, out: Path | None, s: Settings) -> list[str]:
    """To an output folder's service, or (`out` None) to Kafka as the environment says."""
    return [
        binary,
        "enqueue",
        "--url_list",
        str(url_list),
        *(["--output_folder", str(out)] if out is not None else []),
        *shard_flags(s),  # the rows' `key`, numbered as download numbers them
        "--wait",
        "--progress=False",
    ]


def img2dataset_command(binary: str, url_list: Path, out: Path, s: Settings) -> list[str]:
    return [
        binary,
        f"--url_list={url_list}",
        f"--output_folder={out}",
        f"--image_size={IMAGE_SIZE}",
        f"--resize_mode={RESIZE_MODE}",
        f"--encode_quality={ENCODE_QUALITY}",
        f"--encode_format={ENCODE_FORMAT}",
        f"--processes_count={s.processes}",
        f"--thread_count={s.img2dataset_threads}",
        f"--number_sample_per_shard={s.shard_size}",
        f"--timeout={s.timeout}",
        "--output_format=webdataset",
        "--distributor=multiprocessing",
        "--enable_wandb=False",
    ]


IMG2DATASET_ENV = {
    "NO_ALBUMENTATIONS_UPDATE": "1",  # albumentations asks PyPI for a newer version otherwise
    "WANDB_MODE": "disabled",
    "WANDB_SILENT": "true",
}


def ours_extra_flags(binary: str) -> list[str]:
    """The SSRF guard refuses loopback addresses unless allowed: allow 127.0.0.1 if the
    option exists in this build."""
    help_text = subprocess.run(
        [binary, "download", "--help"], capture_output=True, text=True, check=True
    ).stdout
    return ["--allowed_networks", "127.0.0.1/32"] if "--allowed_networks" in help_text else []


# --------------------------------------------------------------------------- running


class TreeSampler:
    """CPU time of process trees (user + system, sampled: a process that exits between two
    samples loses what it ran since the last one), peak resident memory of the first process
    (its VmHWM high-water mark: exact but for a rise in its last `interval`) and of all the
    trees together (sampled). CPU time, unlike wall-clock time, barely moves when other jobs
    share the machine. `stop()` takes a last sample, so a tree
    still running then is counted exactly. `from_now`: only the CPU time spent after the first
    sample counts (servers started before the measure: their start-up is not the run's)."""

    def __init__(self, pid: int, *more: int, interval: float = 0.1, from_now: bool = False) -> None:
        self.pid = pid
        self.roots = (pid, *more)
        self.interval = interval
        self.main_kb = 0
        self.tree_kb = 0
        self._ticks: dict[int, int] = {}
        self._base: dict[int, int] = {}
        if from_now:
            self._sample()
            self._base = dict(self._ticks)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        tree = [p for root in self.roots for p in _tree(root)]
        for p in tree:
            ticks = _cpu_ticks(p)
            if ticks is not None:
                self._ticks[p] = ticks
        self.main_kb = max(self.main_kb, _status_kb(self.pid, "VmHWM"))
        self.tree_kb = max(self.tree_kb, sum(_status_kb(p, "VmRSS") for p in tree))

    @property
    def cpu_seconds(self) -> float:
        spent = sum(t - self._base.get(p, 0) for p, t in self._ticks.items())
        return spent / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._sample()


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, ValueError, IndexError):
        return None


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _start(cmd: Sequence[str], log: IO[str], env: dict[str, str] | None = None) -> Popen[bytes]:
    return subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )


def _failed(cmd: Sequence[str], code: int | None, log_path: Path, what: str = "") -> RuntimeError:
    tail = log_path.read_text()[-3000:]
    how = what or f"exited with {code}"
    return RuntimeError(f"{' '.join(cmd[:2])} {how}; log {log_path}:\n{tail}")


def run_timed(
    cmd: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> tuple[float, TreeSampler]:
    """Run `cmd` to completion; (wall seconds, sampler).

    The peak memory of the command's process is its VmHWM as the sampler last read it, not
    wait4's ru_maxrss: Linux carries a process's high-water mark across exec, so ru_maxrss is
    at least this bench's own resident memory when it forked the command (over 300 MB while it
    holds a million-url list), whatever the command used."""
    with log_path.open("w") as log:
        started = time.monotonic()
        proc = _start(cmd, log, env)
        sampler = TreeSampler(proc.pid)
        try:
            proc.wait()
            wall = time.monotonic() - started
        except BaseException:  # Ctrl-C: leave nothing running
            proc.kill()
            proc.wait()
            raise
        finally:
            sampler.stop()
    if proc.returncode != 0:
        raise _failed(cmd, proc.returncode, log_path)
    return wall, sampler


# How long a service has to exit after SIGTERM (not measured) before the bench fails.
SERVICE_STOP_SECONDS = 60.0


def run_service_timed(
    service_cmd: Sequence[str],
    enqueue_cmd: Sequence[str],
    service_log: Path,
    enqueue_log: Path,
) -> tuple[float, TreeSampler, float]:
    """Launch the service and `enqueue --wait` together; the measure ends when the enqueue
    returns: (wall seconds, a sampler of both trees stopped then, the time.time() then). Then
    SIGTERM the service and require it to exit 0 within SERVICE_STOP_SECONDS. Raises if either
    fails, or if the service exits before the enqueue returns."""
    with service_log.open("w") as slog, enqueue_log.open("w") as elog:
        started = time.monotonic()
        service = _start(service_cmd, slog)
        enqueue = _start(enqueue_cmd, elog)
        sampler = TreeSampler(service.pid, enqueue.pid)
        try:
            while enqueue.poll() is None:
                if service.poll() is not None:
                    raise _failed(service_cmd, service.returncode, service_log)
                time.sleep(0.005)
            wall = time.monotonic() - started
            ended_at = time.time()
            sampler.stop()
            if enqueue.returncode != 0:
                raise _failed(enqueue_cmd, enqueue.returncode, enqueue_log)
            if service.poll() is not None:
                raise _failed(service_cmd, service.returncode, service_log)
            service.send_signal(signal.SIGTERM)
            try:
                code = service.wait(SERVICE_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                raise _failed(
                    service_cmd,
                    None,
                    service_log,
                    f"did not exit within {SERVICE_STOP_SECONDS:.0f}s of SIGTERM",
                ) from None
            if code != 0:
                raise _failed(service_cmd, code, service_log, f"exited with {code} on SIGTERM")
        finally:
            sampler.stop()
            for proc in (enqueue, service):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return wall, sampler, ended_at


def shard_stats(folder: Path) -> tuple[int, int, dict[str, int], float | None]:
    """(rows, successes, statuses, first start to last end) from every `*_stats.json`."""
    rows = successes = 0
    statuses: dict[str, int] = {}
    starts, ends = [], []
    for path in folder.rglob("*_stats.json"):
        stats = json.loads(path.read_text())
        rows += int(stats.get("count", 0))
        successes += int(stats.get("successes", 0))
        for k, v in (stats.get("status_dict") or {}).items():
            statuses[k] = statuses.get(k, 0) + int(v)
        if stats.get("start_time") and stats.get("end_time"):
            starts.append(float(stats["start_time"]))
            ends.append(float(stats["end_time"]))
    span = max(ends) - min(starts) if starts else None
    return rows, successes, statuses, span


_SUMMARY = re.compile(r"this run: .*?, ([\d.]+)s, [\d.]+ images/s")


def _result(
    tool: str,
    corpus: str,
    round_: int,
    out: Path,
    wall: float,
    sampler: TreeSampler,
    in_run: float | None = None,
    in_run_from_stats: bool = False,
) -> RunResult:
    """The run's figures: rows, successes and statuses from the output's shard stats; in-run
    seconds from the caller, or the stats' span (first start to last end)."""
    rows, successes, statuses, span = shard_stats(out)
    result = RunResult(
        tool, corpus, round_, rows, successes, wall, span if in_run_from_stats else in_run
    )
    result.statuses = statuses
    result.cpu_seconds = sampler.cpu_seconds
    result.peak_rss_main_mb = sampler.main_kb / 1024
    result.peak_rss_tree_mb = sampler.tree_kb / 1024
    return result


def run_ours(
    binary: str,
    url_list: Path,
    out: Path,
    s: Settings,
    extra: Sequence[str],
    corpus: str,
    round_: int,
) -> RunResult:
    shutil.rmtree(out, ignore_errors=True)
    log = out.with_suffix(".log")
    wall, sampler = run_timed(ours_command(binary, url_list, out, s, extra), log)
    m = _SUMMARY.search(log.read_text())
    in_run = float(m.group(1)) if m else None
    return _result("download", corpus, round_, out, wall, sampler, in_run)


def run_service(
    binary: str,
    url_list: Path,
    out: Path,
    s: Settings,
    extra: Sequence[str],
    corpus: str,
    round_: int,
    idle_seconds: float,
) -> RunResult:
    """`img2dataset service` and `img2dataset enqueue --wait` launched together on a fresh
    folder: timed until the enqueue returns (every row recorded in the index). In-run is the
    service's clock as download's summary is download's: from its pipeline's start (its
    "serving" log line) to the enqueue's return."""
    shutil.rmtree(out, ignore_errors=True)
    log = out.with_suffix(".service.log")
    wall, sampler, ended_at = run_service_timed(
        service_command(binary, out, s, extra, idle_seconds),
        enqueue_command(binary, url_list, out, s),
        log,
        out.with_suffix(".enqueue.log"),
    )
    serving_at = _serving_at(log.read_text())
    in_run = ended_at - serving_at if serving_at is not None else None
    result = _result("service", corpus, round_, out, wall, sampler, in_run=in_run)
    # The stats are the materializer's; the index is the truth of what is recorded.
    index = _index_figures(binary, out)
    if index is not None and index[0] != result.rows:
        print(
            f"  (service {corpus} round {round_}: the shard stats hold {result.rows} rows, "
            f"the index {index[0]}: counting the index's)",
            flush=True,
        )
        result.rows, result.successes, result.statuses = index
    return result


_SERVING = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ i2d_cli\.service: serving ", re.M
)


def _serving_at(log: str) -> float | None:
    """The time.time() of the service's "serving" line (logging's local-time stamp)."""
    m = _SERVING.search(log)
    if m is None:
        return None
    return time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000


def _index_figures(binary: str, out: Path) -> tuple[int, int, dict[str, int]] | None:
    """(rows, successes, statuses) recorded in the folder's index, from `status --json`."""
    done = subprocess.run([binary, "status", str(out), "--json"], capture_output=True, text=True)
    try:
        progress = json.loads(done.stdout)["progress"]
        return (
            int(progress["committed"]),
            int(progress["successes"]),
            {k: int(v) for k, v in (progress.get("by_status") or {}).items()},
        )
    except (ValueError, KeyError, TypeError):
        return None  # no answer: the shard stats stand


def run_img2dataset(
    binary: str, url_list: Path, out: Path, s: Settings, corpus: str, round_: int
) -> RunResult:
    shutil.rmtree(out, ignore_errors=True)
    log = out.with_suffix(".log")
    wall, sampler = run_timed(img2dataset_command(binary, url_list, out, s), log, IMG2DATASET_ENV)
    return _result("img2dataset", corpus, round_, out, wall, sampler, in_run_from_stats=True)
