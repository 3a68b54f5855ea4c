"""Compressed forward for Hugging Face ``transformers`` ``Dinov2Model``.

Walks the model's own modules (weights and classes untouched). The layer code
is transformers 5's ``Dinov2Layer.forward`` / ``Dinov2Attention.forward``
with the changes fenced by ``# evalsuite:`` comments; LayerScale
(``layer_scale1``/``layer_scale2``) and the SwiGLU/MLP choice are kept.
"""

from __future__ import annotations

import torch
from torch import nn

from .runner import CompressedForward


def check_supported(model: nn.Module) -> None:
    from transformers import Dinov2Model

    if not isinstance(model, Dinov2Model):
        raise TypeError(f"hf_dinov2 patch supports transformers.Dinov2Model, got {type(model).__name__}")
    if not hasattr(model.encoder.layer[0].attention, "q_proj"):
        raise TypeError("hf_dinov2 patch needs transformers >= 5 (Dinov2Attention with q_proj/k_proj/v_proj/o_proj)")


def _attention(attn: nn.Module, x: torch.Tensor, run: CompressedForward, layer: int) -> torch.Tensor:
    # copied from transformers 5.23 Dinov2Attention.forward
    shape = (*x.shape[:-1], -1, attn.head_dim)
    q = attn.q_proj(x).view(shape).transpose(1, 2)
    k = attn.k_proj(x).view(shape).transpose(1, 2)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    out = run.attend(layer, q, k, v, attn.scaling)  # evalsuite: fused SDPA + size bias + method requests
    return attn.o_proj(out.transpose(1, 2).reshape(*x.shape[:-1], -1))


def forward_tokens(model: nn.Module, pixels: torch.Tensor, run: CompressedForward) -> torch.Tensor:
    """pixels [B, 3, H, W] -> final-normed tokens [B, 1 + N_out, C]."""
    pixels = run.prepare(pixels)
    patch = model.config.patch_size
    x = model.embeddings(pixels)
    run.begin(x, 1, (pixels.shape[-2] // patch, pixels.shape[-1] // patch))  # evalsuite
    for i, lyr in enumerate(model.encoder.layer):
        x_in = x  # evalsuite
        # copied from transformers 5.23 Dinov2Layer.forward, hooks added
        h = lyr.layer_scale1(_attention(lyr.attention, lyr.norm1(x), run, i))
        x = lyr.drop_path(h) + x
        x = run.after_attention(i, x)  # evalsuite
        h = lyr.layer_scale2(lyr.mlp(lyr.norm2(x)))
        x = lyr.drop_path(h) + x
        x = run.after_block(i, x, x_in)  # evalsuite
    return model.layernorm(x)
