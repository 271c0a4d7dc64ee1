"""Helpers for the signal tests: when a process's handlers are in place, its process group,
and the one-row-once check over the metadata parquet files of a dataset."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq

from tests.servers.proc import wait_until


def catches(pid: int, sig: int) -> bool:
    """Whether `pid` has a handler for `sig` (SigCgt in /proc): Python catches SIGINT from its
    start, SIGTERM only once the command installed its own handlers."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (zombies included until reaped)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def signal_twice(
    proc: subprocess.Popen[str], sig: int, gap: float, limit: float = 5.0
) -> tuple[float, str]:
    """Send `sig` to the process (its pid only), again `gap` seconds later; return how long
    it took to exit after the second one, and its stderr. Fails if it had already exited
    before the second signal (the test would then prove nothing) or outlives `limit`."""
    proc.send_signal(sig)
    time.sleep(gap)
    assert proc.poll() is None, "exited before the second signal: give it more work in flight"
    proc.send_signal(sig)
    sent = time.monotonic()
    try:
        _, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        message = f"still running {limit}s after the second {sig!r}:\n{err[-3000:]}"
        raise AssertionError(message) from None
    return time.monotonic() - sent, err


def wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """Every process of the group (fetch workers, the fork server) is gone too."""
    try:
        wait_until(lambda: not group_members(pgid), timeout, f"process group {pgid} to exit")
    except TimeoutError:
        for pid in group_members(pgid):  # only processes this test started
            os.kill(pid, signal.SIGKILL)
        raise


def parquet_rows(files: Iterable[Path | bytes]) -> list[dict[str, object]]:
    """Every row of the metadata parquet files (paths, or their bytes)."""
    rows: list[dict[str, object]] = []
    for f in files:
        rows += pq.read_table(io.BytesIO(f) if isinstance(f, bytes) else f).to_pylist()
    return rows


def stopped_by_second_signal(code: int | None, sig: int, printed: str) -> bool:
    """The exit of a process that got `sig` twice: 128 + sig, having said it stops at once; or,
    if its clean stop was over and only the interpreter's own shutdown was left (Python gives
    the signals their default action back by then), killed by `sig` (-sig). Anything else is
    not what the second signal does."""
    name = signal.Signals(sig).name
    if code == 128 + sig:
        return f"{name} again: stopping now" in printed
    return code == -sig


def rows_fetched(printed: str) -> int:
    """The rows an interrupted `download` says it fetched ("this run: N rows fetched"): each is
    in the index if the work in flight was committed on the way out. (Counting segments under
    the shard size would not tell: the rows finished after the signal can fill one exactly.)"""
    found = re.search(r"this run: (\d+) rows fetched", printed)
    assert found is not None, printed[-3000:]
    return int(found.group(1))
