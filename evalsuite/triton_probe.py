"""Whether a Triton kernel runs on a device, decided once per device and dtype.

A kernel module (:mod:`evalsuite.methods.tome.kernels`,
:mod:`evalsuite.patch.attention_kernels`) is asked in every block of every
forward, so the answer is kept. It is found by building the kernel and running
it on a small input against its torch reference: Triton may fail to build it on
a device (its build and launch errors share no base class), or build something
that computes the wrong thing. Either way the run goes on with the reference,
after one warning.

``EVALSUITE_TRITON=0`` turns every such kernel off (:data:`ENABLED`); under
``TRITON_INTERPRET=1`` (:data:`INTERPRET`) they run on CPU tensors in Triton's
interpreter, which is how the CPU tests check them.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import torch

ENABLED = os.environ.get("EVALSUITE_TRITON", "1") != "0"
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read by Triton when it compiles a module


def decided(answers: dict[tuple, bool], device: torch.device, dtype: torch.dtype,
            check: Callable[[], str | None], kernel: str, fallback: str) -> bool:
    """``answers[(device, dtype)]``, found first by ``check()``: None when the kernel builds, runs
    and agrees with its reference, else what went wrong. A failure warns once, naming ``kernel``
    and the ``fallback`` used instead. Running out of GPU memory is not the kernel's failure: it
    propagates."""
    key = (device, dtype)
    if key not in answers:
        try:
            problem = check()
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        answers[key] = problem is None
        if problem is not None:
            warnings.warn(f"evalsuite: {kernel} does not run on {device} ({dtype}): {problem}; using {fallback}",
                          RuntimeWarning, stacklevel=4)
    return answers[key]
