"""`--enable_wandb`: img2dataset's figures on Weights & Biases, from this run's segments.

What img2dataset 1.47 logs (its logger.py), logged the same way here, with the same names:
- `wandb.init(project=wandb_project, config=<the download's arguments>)`;
- for each shard finished (here: each segment committed, whose `_stats.json` the materializer
  writes with img2dataset's fields), `worker/img_per_sec`, `worker/success`,
  `worker/failed_to_download`, `worker/failed_to_resize` (ratios of the shard's count) and
  `worker/count`;
- after each, the same five as `total/...` over every shard of this run so far (images per
  second: their count over the span from the first one's start to the last one's end);
- a `status` table (columns status, frequency, count: the 100 most frequent status and error
  strings over the run) at most every 60 s and once at the end.

As img2dataset reads its stats files every 5 s from a logger process, a thread here reads the
new segments' stats every `interval` seconds; segments committed before the run are not this
run's (img2dataset's done shards). `wandb` is imported only when asked for.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

from i2d_cli.compat import WANDB_INSTALL
from i2d_cli.errors import InputError
from i2d_segments.signals import children_ignore_stop_signals

log = logging.getLogger(__name__)

MAX_STATUS = 100


class SpeedFigures:
    """img2dataset's SpeedLogger: counts summed over shards, their time span."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.count = 0
        self.success = 0
        self.failed_to_download = 0
        self.failed_to_resize = 0
        self.start_time = float("inf")
        self.end_time = float("-inf")

    def add(self, stats: dict[str, Any]) -> None:
        self.count += int(stats["count"])
        self.success += int(stats["successes"])
        self.failed_to_download += int(stats["failed_to_download"])
        self.failed_to_resize += int(stats["failed_to_resize"])
        self.start_time = min(self.start_time, float(stats["start_time"]))
        self.end_time = max(self.end_time, float(stats["end_time"]))

    def figures(self) -> dict[str, float | int]:
        count = max(self.count, 1)
        duration = self.end_time - self.start_time
        p = self.prefix
        return {
            f"{p}/img_per_sec": self.count / duration if duration > 0 else 0.0,
            f"{p}/success": self.success / count,
            f"{p}/failed_to_download": self.failed_to_download / count,
            f"{p}/failed_to_resize": self.failed_to_resize / count,
            f"{p}/count": self.count,
        }


def import_wandb() -> Any:
    try:
        import wandb
    except ImportError as e:
        raise InputError(f"--enable_wandb: wandb is not installed: {WANDB_INSTALL}") from e
    return wandb


class WandbLogger:
    """A W&B run over a download into `dataset` (the folder holding `segments/`)."""

    def __init__(
        self,
        dataset: Path,
        project: str,
        config: dict[str, Any],
        *,
        interval: float = 5.0,
        status_interval: float = 60.0,
    ) -> None:
        self.dataset = Path(dataset)
        self.project = project
        self.config = config
        self.interval = interval
        self.status_interval = status_interval
        self.total = SpeedFigures("total")
        self.status: Counter[str] = Counter()
        self._seen: set[Path] = set()
        self._status_logged = -float("inf")
        self._status_pending = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.wandb: Any = None
        self.run: Any = None

    def _stats_files(self) -> list[Path]:
        return sorted((self.dataset / "segments").rglob("*_stats.json"))

    def start(self) -> WandbLogger:
        self.wandb = import_wandb()
        self._seen = set(self._stats_files())  # earlier runs' segments
        if threading.current_thread() is threading.main_thread():
            # W&B's service process ignores a terminal's Ctrl-C, as the fetch workers do:
            # the download stops, then finish() ends the W&B run properly.
            with children_ignore_stop_signals():
                self.run = self.wandb.init(project=self.project, config=self.config)
        else:
            self.run = self.wandb.init(project=self.project, config=self.config)
        self._thread = threading.Thread(target=self._loop, name="wandb", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as e:  # the figures are not the data: never stop the download
                log.warning("wandb: %s", e)

    def poll(self) -> int:
        """Log the segments committed since the last poll; returns how many."""
        with self._lock:
            new = [p for p in self._stats_files() if p not in self._seen]
            for path in new:
                self._seen.add(path)
                try:
                    stats = json.loads(path.read_text(encoding="utf-8"))
                    worker = SpeedFigures("worker")
                    worker.add(stats)
                except (OSError, ValueError, KeyError, TypeError) as e:
                    log.warning("wandb: cannot read %s: %s", path, e)
                    continue
                self.run.log(worker.figures())
                self.total.add(stats)
                self.run.log(self.total.figures())
                self.status.update({str(k): int(v) for k, v in stats["status_dict"].items()})
                self._status_pending = True
            if (
                self._status_pending
                and time.monotonic() - self._status_logged > self.status_interval
            ):
                self._log_status()
            return len(new)

    def _log_status(self) -> None:
        count = max(self.total.count, 1)
        table = self.wandb.Table(
            columns=["status", "frequency", "count"],
            data=[[k, v / count, v] for k, v in self.status.most_common(MAX_STATUS)],
        )
        self.run.log({"status": table})
        self._status_logged = time.monotonic()
        self._status_pending = False

    def finish(self, *, failed: bool = False) -> None:
        """Log what is left and end the W&B run; a W&B error is a warning (the figures are
        not the data), never the download's failure."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.poll()
            with self._lock:
                if self._status_pending:
                    self._log_status()
        except Exception as e:
            log.warning("wandb: %s", e)
        try:
            self.run.finish(exit_code=1 if failed else 0)
        except Exception as e:
            log.warning("wandb: cannot finish the run: %s", e)

    def __enter__(self) -> WandbLogger:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(failed=exc is not None)
