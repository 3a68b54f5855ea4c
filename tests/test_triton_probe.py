"""The Triton kernels' fallback: a device where one fails to build or agree warns once and uses the other way."""

from __future__ import annotations

import warnings

import pytest
import torch

from evalsuite.methods.tome import kernels as tome_kernels
from evalsuite.patch import attention_kernels


@pytest.mark.parametrize("module,kernel,fallback", [
    (tome_kernels, "merge_step", "torch reference"),  # ToMe keeps working
    (attention_kernels, "attention", "padded heads"),  # proportional attention keeps working
], ids=["fused ToMe step", "attention kernel"])
def test_a_device_where_a_kernel_fails_falls_back_with_one_warning(monkeypatch, module, kernel, fallback):
    monkeypatch.setattr(module, "_WORKS", {})

    def broken(*args, **kwargs):
        raise RuntimeError("PassManager::run failed")  # what a Triton build error reads like

    monkeypatch.setattr(module, kernel, broken)
    with pytest.warns(RuntimeWarning, match=f"does not run on cpu .*PassManager::run failed.*{fallback}"):
        assert not module._works_on(torch.device("cpu"), torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not module._works_on(torch.device("cpu"), torch.float32)  # decided once
