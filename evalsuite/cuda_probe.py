"""How many CUDA GPUs this machine shows, asked of the driver without importing torch.

The pytest-xdist controller needs the answer before it spawns the workers:
``-n auto`` starts one worker per GPU for the GPU gate. Importing torch for it
would put torch's import on every gate run's start-up, and the workers would
wait for it (see docs/performance.md, "Start-up"). The CUDA driver API answers
at once: ``cuInit`` and ``cuDeviceGetCount`` from ``libcuda.so.1``, which counts
the devices ``CUDA_VISIBLE_DEVICES`` leaves visible, as torch does.

No driver library, or any driver error, means no GPU; :class:`GpuCount` keeps
the reason for messages.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

DRIVER = "libcuda.so.1"


@dataclass(frozen=True)
class GpuCount:
    """``count`` visible GPUs; ``reason`` says why there are none (empty when there are some)."""

    count: int
    reason: str = ""


@functools.cache
def visible_gpus(driver: str = DRIVER) -> GpuCount:
    """The GPUs the CUDA driver library ``driver`` reports (cached: the answer does not change in a run).

    >>> visible_gpus("/nonexistent/libcuda.so.1").count
    0
    """
    try:
        cuda = ctypes.CDLL(driver)
    except OSError as exc:
        return GpuCount(0, f"no CUDA driver: {exc}")
    try:
        status = cuda.cuInit(0)
        if status != 0:
            return GpuCount(0, f"cuInit failed: {_error_name(cuda, status)}")
        count = ctypes.c_int(0)
        status = cuda.cuDeviceGetCount(ctypes.byref(count))
        if status != 0:
            return GpuCount(0, f"cuDeviceGetCount failed: {_error_name(cuda, status)}")
    except AttributeError as exc:  # a library of that name without the driver API
        return GpuCount(0, f"{driver} is not a CUDA driver: {exc}")
    return GpuCount(count.value, "" if count.value else "the CUDA driver reports no device")


def _error_name(cuda: ctypes.CDLL, status: int) -> str:
    """``CUDA_ERROR_NO_DEVICE (100)``, or just the number where the driver cannot name it."""
    name = ctypes.c_char_p()
    try:
        if cuda.cuGetErrorName(status, ctypes.byref(name)) == 0 and name.value:
            return f"{name.value.decode()} ({status})"
    except AttributeError:
        pass
    return f"error {status}"
