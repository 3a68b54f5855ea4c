"""What a worker's :class:`~evalsuite.engine.Engine` is configured with: plain data, no torch.

Apart from the engine because the pytest-xdist controller reads the run
defaults (``seed``, ``batch_size``, timing) too, and must not import torch:
its start-up is on the critical path of every gate run (the workers start
after it). :mod:`evalsuite.engine` re-exports :class:`EngineSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


OCR_DEVICES = ("auto", "cpu", "cuda")


@dataclass
class EngineSettings:
    data_root: Path | None = None
    seed: int = 0
    batch_size: int = 8
    timing_batch: int = 1
    timing_repeats: int = 10
    timing_warmup: int = 2
    ocr_engine: str | None = "rapidocr"  # None: no OCR KPIs
    ocr_workers: int = 0  # OCR pool processes; 0: one per available core, ocr.reader.GPU_READERS on a GPU
    ocr_device: str = "auto"  # auto: the worker's GPU when its cases run on one; "cpu"; "cuda"
    export_dir: Path | None = None  # per-case .npz of what the model still sees
    worker_index: int = 0  # pytest-xdist worker number, picks the GPU
    device_override: str | None = None  # "cpu" or "cuda": wins over the matrix's device
