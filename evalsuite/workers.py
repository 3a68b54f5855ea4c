"""How many cores this process may use: pytest-xdist workers share the machine."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def xdist_workers() -> int:
    """Number of pytest-xdist workers in this run (1 without xdist)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def cores_per_worker() -> int:
    """This worker's share of the cores, at least 1: N workers each using every core oversubscribe the CPU."""
    return max(1, available_cores() // xdist_workers())


def thread_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` on this worker's share of the cores, in order; for work that
    releases the GIL (decoding and resizing images: the reference pass's CPU side)."""
    items = list(items)
    threads = min(cores_per_worker(), len(items))
    if threads <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))
