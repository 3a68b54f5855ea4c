"""Retrieval stability: recall@k of compressed embeddings among the dataset's uncompressed ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evalsuite.engine import Engine, EngineSettings
from evalsuite.metrics import retrieval
from evalsuite.metrics.kpis import KPIS
from evalsuite.report.compare import bootstrap_interval
from evalsuite.search import case_spec
from evalsuite.matrix import DatasetSpec, ModelSpec


def test_hits_count_only_strictly_closer_items():
    gallery = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    assert retrieval.self_hits(gallery, gallery) == [{"retrieval_hit_at_1": 1.0, "retrieval_hit_at_5": 1.0}] * 8
    twins = torch.cat([gallery[:1], gallery[:1], gallery[2:]])  # two identical images: a tie costs nothing
    assert all(h["retrieval_hit_at_1"] == 1.0 for h in retrieval.self_hits(twins, twins))
    shifted = gallery.roll(1, dims=0)  # every query looks like another image
    hits = retrieval.self_hits(shifted, gallery)
    assert sum(h["retrieval_hit_at_1"] for h in hits) == 0
    assert retrieval.self_hits(gallery[:3], gallery[:3]) == [{"retrieval_hit_at_1": 1.0}] * 3  # 3 images: no @5
    assert retrieval.self_hits(gallery[:1], gallery[:1]) == [{}]  # one image retrieves nothing but itself
    assert KPIS.get("retrieval_recall_at_1").higher_is_better


MODEL = ModelSpec("dinov2_s14", "dinov2_s14", 56, "cpu", "float32")
DATASET = DatasetSpec("synthetic", "synthetic", {"limit": 8})
FAST = {"timing_repeats": 1, "timing_warmup": 0}


@pytest.fixture(scope="module")
def engine():
    engine = Engine(EngineSettings(ocr_engine=None, **FAST))
    yield engine
    engine.close()


def test_none_retrieves_every_image_and_a_destructive_method_does_not(engine):
    none = engine.evaluate(case_spec(MODEL, DATASET, "none", {}, FAST))
    assert none.kpis["retrieval_recall_at_1"] == 1.0 and none.kpis["retrieval_recall_at_5"] == 1.0
    assert all(s.kpis["retrieval_hit_at_1"] == 1.0 for s in none.samples)

    # downscaled to a few pixels, the pages look alike: they no longer find themselves
    blurred = engine.evaluate(case_spec(MODEL, DATASET, "downscale", {"keep": 0.02}, FAST))
    recall = blurred.kpis["retrieval_recall_at_1"]
    assert recall < 1.0
    hits = np.array([s.kpis["retrieval_hit_at_1"] for s in blurred.samples])
    assert recall == pytest.approx(hits.mean())
    lo, hi = bootstrap_interval(hits, seed=0)
    assert lo <= recall <= hi and lo < hi
