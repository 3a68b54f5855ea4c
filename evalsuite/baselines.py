"""Stage A baselines: what the uncompressed encoder and the OCR engine make of each sample.

Every compression case is judged against the same two references: the
unpatched encoder's output (:class:`~evalsuite.engine.Reference`) and the OCR
of the unmodified image. This module writes both down per model x dataset, one
JSON row per sample, so they can be diffed between machines, library upgrades
and dataset revisions, and pinned by the golden test (``tests/test_golden.py``,
snapshots under ``golden/``)::

    evalsuite baselines --model dinov2_s14 --dataset samples [--data DIR] [--limit N] [--out baselines/]

writes ``<out>/<model>/<dataset>/tokens_baseline.jsonl`` and ``ocr_baseline.jsonl``.
``--data`` is the external data store (SROIE, photos); it defaults to
``$EVALSUITE_DATA``; built-in datasets (``samples``, ``synthetic``) need none.

``tokens_baseline.jsonl`` rows::

    sample_id, doc_type, sha256 (of the RGB pixel bytes), width, height,
    tokens (patch tokens out of the uncompressed encoder, prefix tokens excluded),
    prefix_tokens, pooled_norm (L2 norm of the image embedding),
    pooled_head (its first 8 components), mean_token_norm (mean L2 norm of the patch tokens),
    target_tokens_total (the image tokens a hosted target bills for the unmodified image) and
    target_tokens_source (where that figure comes from: ``cost_model:<name>``, an offline
    estimate by :mod:`evalsuite.billing`, default ``qwen2_vl``; an API run records the
    endpoint's measured ``usage`` beside it)

``ocr_baseline.jsonl`` rows::

    sample_id, doc_type, ocr_engine (the engine's version_info: package, runtime and
    model file versions and settings), text (OCR of the unmodified image), words, chars,
    reference ("ground_truth" or null), wer, cer (against the ground truth; null where
    the dataset has none)

A sample that fails to load gets a row with ``sample_id``, ``doc_type`` and
``error`` in both files instead of being dropped. Floats are rounded to
:data:`DECIMALS` places: the baselines are for comparison, not for recomputing
KPIs. The encoder runs on the CPU in float32 with the harness's batch size, so
the rows are what the harness's own reference pass computes there. OCR of the
unmodified images goes through :func:`~evalsuite.ocr.cache.cached_read`: the
second run of a dataset, here or in the harness, reads no page again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data.datasets import load_dataset
from .data.sample import Sample, SampleError
from .engine import EngineSettings
from .models import MODELS
from .models.base import ModelAdapter
from .ocr import wer
from .ocr.cache import cached_read
from .ocr.engines import OcrEngine, get_engine

TOKENS_FILE = "tokens_baseline.jsonl"
OCR_FILE = "ocr_baseline.jsonl"
POOLED_HEAD = 8  # leading embedding components kept per row: enough to see a change, short enough to read
DECIMALS = 6


@dataclass
class Baselines:
    """Rows of ``tokens_baseline.jsonl`` and ``ocr_baseline.jsonl``, in dataset order."""

    tokens: list[dict]
    ocr: list[dict]


def compute_baselines(model: str, dataset: str, data_root: Path | None, image_size: int = 224,
                      limit: int | None = None, ocr_engine: str | OcrEngine = "rapidocr", *,
                      batch_size: int = EngineSettings.batch_size, ocr_cache: Path | None = None,
                      target: str = "qwen2_vl") -> Baselines:
    """Stage A baselines of ``model`` (a MODELS factory name) on ``dataset`` (a DATASETS name).

    ``ocr_engine`` is a registered engine name or an engine object; ``ocr_cache`` overrides
    the OCR cache directory (default ``cache_dir("ocr")``); ``target`` the cost model of
    ``target_tokens_total``. Raises ``DatasetUnavailable``
    when the dataset's store is not under ``data_root``.
    """
    samples = load_dataset(dataset, data_root, limit)
    engine = get_engine(ocr_engine) if isinstance(ocr_engine, str) else ocr_engine
    adapter = _adapter(model, image_size)
    tokens, ocr = [], []
    loaded: list[tuple[Sample, np.ndarray]] = []
    for sample in samples:
        try:
            loaded.append((sample, np.asarray(sample.load().convert("RGB"))))
        except SampleError as exc:
            tokens.append(_error_row(sample, str(exc)))
            ocr.append(_error_row(sample, str(exc)))
    for start in range(0, len(loaded), batch_size):
        tokens += _token_rows(adapter, loaded[start:start + batch_size], target)
    ocr += [_ocr_row(engine, sample, rgb, ocr_cache) for sample, rgb in loaded]
    order = {sample.sample_id: i for i, sample in enumerate(samples)}  # error rows back in dataset order
    return Baselines(sorted(tokens, key=lambda r: order[r["sample_id"]]),
                     sorted(ocr, key=lambda r: order[r["sample_id"]]))


def write_baselines(out_dir: Path, model: str, dataset: str, baselines: Baselines) -> list[Path]:
    """Write ``<out_dir>/<model>/<dataset>/{tokens,ocr}_baseline.jsonl``; returns the two paths."""
    folder = Path(out_dir) / model / dataset
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in ((TOKENS_FILE, baselines.tokens), (OCR_FILE, baselines.ocr)):
        path = folder / name
        path.write_text("".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows),
                        encoding="utf-8")
        paths.append(path)
    return paths


@functools.cache
def _adapter(model: str, image_size: int) -> ModelAdapter:
    """One adapter per process and model: loading DINOv2 takes seconds, and nothing here changes it."""
    return MODELS.get(model)(model, image_size=image_size).to("cpu", torch.float32)


def _token_rows(adapter: ModelAdapter, batch: list[tuple[Sample, np.ndarray]], target: str = "qwen2_vl") -> list[dict]:
    from PIL import Image

    from .billing import image_tokens

    out = adapter.reference(adapter.preprocess([Image.fromarray(rgb) for _, rgb in batch]))
    pooled_norms = out.pooled.float().norm(dim=-1)
    token_norms = out.patch_tokens.float().norm(dim=-1).mean(dim=-1)
    rows = []
    for b, (sample, rgb) in enumerate(batch):
        rows.append({
            "sample_id": sample.sample_id,
            "doc_type": sample.doc_type,
            "sha256": hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest(),
            "width": int(rgb.shape[1]),
            "height": int(rgb.shape[0]),
            "tokens": int(out.patch_tokens.shape[1]),
            "prefix_tokens": int(out.num_prefix),
            "pooled_norm": _round(pooled_norms[b].item()),
            "pooled_head": [_round(v) for v in out.pooled[b, :POOLED_HEAD].tolist()],
            "mean_token_norm": _round(token_norms[b].item()),
            "target_tokens_total": image_tokens(target, rgb.shape[1], rgb.shape[0]),
            "target_tokens_source": f"cost_model:{target}",
        })
    return rows


def _ocr_row(engine: OcrEngine, sample: Sample, rgb: np.ndarray, cache: Path | None) -> dict:
    row = {"sample_id": sample.sample_id, "doc_type": sample.doc_type, "ocr_engine": engine.version_info()}
    try:
        text = cached_read(engine, rgb, cache).text
    except Exception as exc:  # one unreadable page must not lose the others' baselines
        return row | {"error": f"OCR failed on sample {sample.sample_id}: {type(exc).__name__}: {exc}"}
    truth = sample.reference_text
    return row | {
        "text": text,
        "words": len(text.split()),
        "chars": len(text),
        "reference": None if truth is None else "ground_truth",
        "wer": None if truth is None else _round(wer.word_error_rate(text, truth)),
        "cer": None if truth is None else _round(wer.char_error_rate(text, truth)),
    }


def _error_row(sample: Sample, error: str) -> dict:
    return {"sample_id": sample.sample_id, "doc_type": sample.doc_type, "error": error}


def _round(value: float) -> float | None:
    """``value`` to DECIMALS places; None for NaN/inf, which JSON cannot hold."""
    return round(float(value), DECIMALS) if math.isfinite(value) else None
