"""How many CPUs this process may use: its CPU affinity, capped by its cgroup's CPU quota.

In a container the affinity is every core of the node, while the CPU limit (Kubernetes'
`resources.limits.cpu`, `docker run --cpus`) is a cgroup quota that affinity does not show: a
fetcher in a 2-CPU pod on a 64-core node would start 64 worker processes, which then share
2 CPUs' worth of time slices. Both cgroup versions are read (v2 `cpu.max`, v1
`cpu.cfs_quota_us` / `cpu.cfs_period_us`); no quota, or no cgroup file, leaves the affinity.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))  # 1.5 CPUs: 2 processes, each busy part time
    return max(1, cpus)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time the cgroup may use (quota / period), or None without a limit."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        fields = v2.split()
        if len(fields) == 2 and fields[0] != "max":
            return _ratio(fields[0], fields[1])
        return None
    for folder in ("cpu", "cpu,cpuacct"):
        quota = _read(root / folder / "cpu.cfs_quota_us")
        period = _read(root / folder / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return _ratio(quota, period)
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None  # v1 writes -1 for no limit


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
