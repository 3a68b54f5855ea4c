"""Triton kernels on CPU tensors, for the kernel tests: Triton reads ``TRITON_INTERPRET=1`` when it
compiles a module, so a check runs in a subprocess with it set (NumPy then does the arithmetic)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

needs_interpreter = pytest.mark.skipif(
    tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 8),
    reason="Triton's interpreter before 3.8 cannot loop to a run-time bound under NumPy 2")


def run_interpreted(code: str, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    """``python -c code`` from the repository root under the interpreter, ``env`` added."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore", **env)
    return subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], env=env,
                          capture_output=True, text=True, timeout=timeout)


def interpreted(code: str, **env) -> None:
    """Run ``code`` under the interpreter; its failure fails the calling test with its stderr."""
    done = run_interpreted(code, **env)
    assert done.returncode == 0, done.stderr[-4000:]
