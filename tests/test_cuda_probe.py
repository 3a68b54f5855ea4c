"""The torch-free GPU count the xdist controller uses: the CUDA driver's answer, or 0 with the reason.

This machine may have no CUDA driver; fake drivers built with the C compiler stand in for one."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from evalsuite.cuda_probe import visible_gpus

FAKE_DRIVER = """
int cuInit(unsigned int flags) { return INIT_STATUS; }
int cuDeviceGetCount(int *count) { *count = COUNT; return 0; }
int cuGetErrorName(int status, const char **name) { *name = "CUDA_ERROR_NO_DEVICE"; return 0; }
"""


def fake_driver(tmp_path, init_status: int = 0, count: int = 0) -> str:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build a fake CUDA driver")
    source, library = tmp_path / "fake_cuda.c", tmp_path / f"libcuda_{init_status}_{count}.so"
    source.write_text(FAKE_DRIVER)
    subprocess.run([compiler, "-shared", "-fPIC", f"-DINIT_STATUS={init_status}", f"-DCOUNT={count}",
                    "-o", str(library), str(source)], check=True)
    return str(library)


def test_counts_the_gpus_the_driver_reports(tmp_path):
    assert visible_gpus(fake_driver(tmp_path, count=3)).count == 3


def test_a_driver_error_is_no_gpu_and_names_the_error(tmp_path):
    gpus = visible_gpus(fake_driver(tmp_path, init_status=100))
    assert gpus.count == 0 and gpus.reason == "cuInit failed: CUDA_ERROR_NO_DEVICE (100)"


def test_no_driver_or_not_a_driver_is_no_gpu(tmp_path):
    missing = visible_gpus(str(tmp_path / "libcuda.so.1"))
    assert missing.count == 0 and missing.reason.startswith("no CUDA driver:")
    not_cuda = visible_gpus("libc.so.6")
    assert not_cuda.count == 0 and "is not a CUDA driver" in not_cuda.reason


def test_agrees_with_torch_on_this_machine():
    import torch

    assert visible_gpus().count == torch.cuda.device_count()
