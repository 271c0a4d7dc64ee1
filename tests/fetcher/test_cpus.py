"""The default worker count follows a container's CPU limit, which CPU affinity does not show."""

from __future__ import annotations

import os
from pathlib import Path

from i2d_fetcher.cpus import cgroup_cpu_quota, usable_cpus


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "150000 100000")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    assert usable_cpus(tmp_path) == min(2, len(os.sched_getaffinity(0)))
    write(tmp_path, "cpu.max", "max 100000")
    assert cgroup_cpu_quota(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    write(tmp_path, "cpu,cpuacct/cpu.cfs_quota_us", "100000")
    write(tmp_path, "cpu,cpuacct/cpu.cfs_period_us", "100000")
    assert cgroup_cpu_quota(tmp_path) == 1.0
    assert usable_cpus(tmp_path) == 1
    write(tmp_path, "cpu,cpuacct/cpu.cfs_quota_us", "-1")  # no limit
    assert cgroup_cpu_quota(tmp_path) is None
    assert usable_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_no_cgroup_files_leave_the_affinity(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None
    assert usable_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_a_quota_above_the_affinity_changes_nothing(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "100000000 100000")  # 1000 CPUs
    assert usable_cpus(tmp_path) == len(os.sched_getaffinity(0))
