"""How many worker processes ``server.workers`` asks for: a number, or ``"auto"``, the cores this process may use.

The cores a process may use are those of its CPU affinity (``taskset``, a cpuset), further bounded by a
CPU quota of its cgroup, rounded up: in a Kubernetes pod with ``limits.cpu: 2`` on a 16-core node
that is 2, not 16. Version 2 cgroups (``cpu.max``) and version 1 (``cpu.cfs_quota_us``) are read.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from collector_processor.config import SidecarConfig

__all__ = ["usable_cores", "worker_count"]

_CGROUP = Path("/sys/fs/cgroup")


def worker_count(config: SidecarConfig) -> int:
    """``server.workers``, with ``"auto"`` resolved."""
    workers = config.server.workers
    return usable_cores() if workers == "auto" else workers


def usable_cores(cgroup: Path = _CGROUP) -> int:
    """The cores this process may use (at least 1); see the module docstring."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota(root: Path) -> float | None:
    """The CPU quota in cores, or ``None`` when there is none (or it cannot be read)."""
    try:
        quota, _, period = (root / "cpu.max").read_text().partition(" ")
        if quota.strip() != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None
