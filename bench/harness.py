"""The pieces of `make bench`: the local image server, url lists over its warm corpus, one
timed run of either tool, and peak-RSS sampling of a process tree.

Both tools are run as commands (a user's view): images/s is successful images over the
command's wall-clock time, start-up included. The "in-run" rate is each tool's own clock
(img2dataset: first shard start to last shard end; ours: the summary's elapsed time).
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
        "--number_sample_per_shard",
        str(s.shard_size),
        "--timeout",
        str(s.timeout),
        "--progress",
        "False",
        *extra,
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
    """CPU time of a process tree (user + system, sampled: a process that exits between two
    samples loses what it ran since the last one), peak resident memory of the process
    (VmHWM, exact) and of its whole tree (sampled). CPU time, unlike wall-clock time, barely
    moves when other jobs share the machine."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.main_kb = 0
        self.tree_kb = 0
        self._ticks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            tree = _tree(self.pid)
            for p in tree:
                ticks = _cpu_ticks(p)
                if ticks is not None:
                    self._ticks[p] = ticks
            self.main_kb = max(self.main_kb, _status_kb(self.pid, "VmHWM"))
            self.tree_kb = max(self.tree_kb, sum(_status_kb(p, "VmRSS") for p in tree))
            self._stop.wait(self.interval)

    @property
    def cpu_seconds(self) -> float:
        return sum(self._ticks.values()) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


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


def run_timed(
    cmd: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> tuple[float, TreeSampler, int]:
    """Run `cmd` to completion; (wall seconds, sampler, ru_maxrss of the child in KiB)."""
    full_env = {**os.environ, **(env or {})}
    with log_path.open("w") as log:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
        sampler = TreeSampler(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop()
    if proc.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}; log {log_path}:\n{tail}")
    return wall, sampler, usage.ru_maxrss


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
    wall, sampler, maxrss = run_timed(ours_command(binary, url_list, out, s, extra), log)
    rows, successes, statuses, _ = shard_stats(out)
    m = _SUMMARY.search(log.read_text())
    result = RunResult(
        "ours", corpus, round_, rows, successes, wall, float(m.group(1)) if m else None
    )
    result.statuses = statuses
    result.cpu_seconds = sampler.cpu_seconds
    result.peak_rss_main_mb = max(sampler.main_kb, maxrss) / 1024
    result.peak_rss_tree_mb = sampler.tree_kb / 1024
    return result


def run_img2dataset(
    binary: str, url_list: Path, out: Path, s: Settings, corpus: str, round_: int
) -> RunResult:
    shutil.rmtree(out, ignore_errors=True)
    log = out.with_suffix(".log")
    wall, sampler, maxrss = run_timed(
        img2dataset_command(binary, url_list, out, s), log, IMG2DATASET_ENV
    )
    rows, successes, statuses, span = shard_stats(out)
    result = RunResult("img2dataset", corpus, round_, rows, successes, wall, span)
    result.statuses = statuses
    result.cpu_seconds = sampler.cpu_seconds
    result.peak_rss_main_mb = max(sampler.main_kb, maxrss) / 1024
    result.peak_rss_tree_mb = sampler.tree_kb / 1024
    return result
