"""Token-cost models against their references: Qwen's processor and OpenAI's published examples."""

from __future__ import annotations

import random

import pytest

from evalsuite import billing


def test_smart_resize_matches_transformers_processor():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference

    rng = random.Random(0)
    for _ in range(3000):
        h, w = rng.randint(10, 6000), rng.randint(10, 6000)
        if max(h, w) / min(h, w) > 200:
            continue
        assert billing.smart_resize(h, w) == reference(h, w), (h, w)
        assert billing.smart_resize(h, w, 32, 65536, 16777216) == reference(h, w, 32, 65536, 16777216), (h, w)


def test_qwen_tokens_are_cells_plus_two():
    # 560 x 280 px is already a multiple of 28 and inside the pixel range: 20 x 10 cells
    assert billing.image_tokens("qwen2_vl", 560, 280) == 20 * 10 + 2
    assert billing.image_tokens("qwen3_vl", 640, 320) == 20 * 10 + 2
    assert billing.image_tokens("qwen2_vl", 10000, 10000) <= 1280 + 2  # the pixel cap


def test_rounding_can_make_a_smaller_image_cost_more():
    """Why a method must check the cost model: cropping a few pixels can round the grid up."""
    # 621 x 1803 rounds over the pixel cap, so it is scaled and floored to 20 x 60 cells; 49 px
    # narrower it rounds to 20 x 64 cells, exactly at the cap, and is not scaled
    assert billing.image_tokens("qwen2_vl", 621, 1803) == 1202
    assert billing.image_tokens("qwen2_vl", 572, 1803) == 1282


@pytest.mark.parametrize("size, tokens", [((1024, 1024), 765), ((2048, 4096), 1105), ((500, 500), 255),
                                          ((513, 500), 425), ((513, 513), 765)])
def test_gpt4o_tiles(size, tokens):
    assert billing.image_tokens("gpt4o", *size) == tokens
    assert billing.image_tokens("gpt4o_low", *size) == 85


@pytest.mark.parametrize("size, patches", [((1024, 1024), 1024), ((1800, 2400), 1452), ((100, 100), 16)])
def test_patches32(size, patches):
    assert billing.image_tokens("patches32", *size) == patches
    assert billing.image_tokens("gpt41_mini", *size) == round(patches * 1.62)
    assert billing.image_tokens("patches32", 20000, 20000) <= 1536


def test_fixed_grid_ignores_the_image():
    assert billing.image_tokens("fixed_grid", 100, 3000) == billing.image_tokens("fixed_grid", 3000, 100) == 256


def test_bill_kpis_same_size_is_zero_and_smaller_saves():
    sizes = [(1000, 2000), (640, 480)]
    same = billing.bill_kpis(sizes, sizes)
    assert same["billed_tokens_qwen2_vl_reduction_pct"] == 0.0
    assert same["billed_tokens_gpt4o_reduction_pct"] == 0.0
    half = billing.bill_kpis(sizes, [(w // 2, h // 2) for w, h in sizes])
    assert half["billed_tokens_qwen2_vl_after"] < half["billed_tokens_qwen2_vl_before"]
    assert half["billed_tokens_qwen2_vl_reduction_pct"] > 50
    with pytest.raises(ValueError):
        billing.bill_kpis(sizes, sizes[:1])


def test_unknown_cost_model_names_the_choices():
    with pytest.raises(KeyError, match="qwen2_vl"):
        billing.image_tokens("qwen2-vl", 10, 10)
