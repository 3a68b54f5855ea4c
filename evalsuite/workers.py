"""How many cores this process may use: pytest-xdist workers share the machine."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def xdist_workers() -> int:
    """Number of pytest-xdist workers in this run (1 without xdist)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def cores_per_worker() -> int:
    """This worker's share of the cores, at least 1: N workers each using every core oversubscribe the CPU."""
    return max(1, available_cores() // xdist_workers())
