"""Compressed forward for Hugging Face ``transformers`` ``Dinov2Model``.

Walks the model's own modules (weights and classes untouched). The layer code
is transformers 5's ``Dinov2Layer.forward`` with the changes fenced by
``# evalsuite:`` comments; LayerScale (``layer_scale1``/``layer_scale2``) and the
SwiGLU/MLP choice are kept. ``Dinov2Attention.forward`` (and the older
``attention.attention.query`` layout of transformers 4.x-5.17) is
:meth:`CompressedForward.linear_attention`.
"""

from __future__ import annotations

import torch
from torch import nn

from .runner import CompressedForward


def check_supported(model: nn.Module) -> None:
    from transformers import Dinov2Model

    if not isinstance(model, Dinov2Model):
        raise TypeError(f"hf_dinov2 patch supports transformers.Dinov2Model, got {type(model).__name__}")
    attn = model.encoder.layer[0].attention
    if not (hasattr(attn, "q_proj") or hasattr(getattr(attn, "attention", None), "query")):
        raise TypeError(f"hf_dinov2 patch: unknown attention layout {type(attn).__name__} "
                        "(expected q_proj/k_proj/v_proj/o_proj, or attention.query/key/value + output.dense)")


def _attention(attn: nn.Module, x: torch.Tensor, run: CompressedForward, layer: int) -> torch.Tensor:
    """transformers 5.23's ``Dinov2Attention`` (q_proj, k_proj, v_proj, o_proj), or the layout of
    transformers 4.x-5.17 (``attention.attention.query`` ... ``attention.output.dense``)."""
    if hasattr(attn, "q_proj"):
        return run.linear_attention(layer, x, attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                                    attn.head_dim, attn.scaling)
    inner = attn.attention
    return run.linear_attention(layer, x, inner.query, inner.key, inner.value, attn.output.dense,
                                inner.attention_head_size, inner.attention_head_size ** -0.5)


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
