"""Timing helpers shared by the case engine and the benchmark: CUDA-synchronised, warm-up excluded."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (no-op on CPU), so wall time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_calls(fn: Callable[[torch.Tensor], Any], pixels: torch.Tensor, warmup: int,
                repeats: int) -> list[tuple[float, Any]]:
    """``(seconds, result)`` of ``repeats`` calls of ``fn(pixels)`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn(pixels)
    calls = []
    for _ in range(repeats):
        synchronize(pixels.device)
        start = time.perf_counter()
        result = fn(pixels)
        synchronize(pixels.device)
        calls.append((time.perf_counter() - start, result))
    return calls
