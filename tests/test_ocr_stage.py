"""The OCR stage's process pool: started with the stage, every process loaded before anything is timed."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from evalsuite.ocr import stage as stage_module
from evalsuite.ocr.stage import OcrStage


def _what_this_process_loaded() -> tuple[int, list[str]]:
    """(pid, the session types of the det and rec models this pool process holds)."""
    from evalsuite.ocr import stage

    ocr = stage._ENGINE._ocr
    models = [] if ocr is None else [ocr.text_det, ocr.text_rec]
    return os.getpid(), [type(model.session).__name__ for model in models if model is not None]


@pytest.mark.parametrize("device,session", [("cpu", "OrtInferSession"),
                                            pytest.param("cuda:0", "_TorchSession", marks=pytest.mark.gpu)])
def test_every_pool_process_has_loaded_its_models_once_the_stage_says_so(device, session):
    stage = OcrStage(workers=2, device=device)
    try:
        stage.wait_loaded()
        assert len(stage._pool._processes) == 2  # both started with the stage, before any read
        seen = dict(stage._pool.submit(_what_this_process_loaded).result() for _ in range(6))
    finally:
        stage.close()
    assert seen and all(sessions == [session, session] for sessions in seen.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_pool_whose_models_cannot_load_reports_it_on_every_read():
    """Loading on cuda:0 without CUDA fails in the pool's initializer; the pool still starts, and
    each read raises the error (again: it never falls back to reading on the CPU)."""
    stage = OcrStage(workers=1, device="cuda:0")
    page = np.full((64, 64, 3), 255, np.uint8)
    try:
        stage.wait_loaded()
        for _ in range(2):
            with pytest.raises(RuntimeError, match="NVIDIA driver|CUDA"):
                stage._pool.submit(stage_module._read, page, False).result()
    finally:
        stage.close()
