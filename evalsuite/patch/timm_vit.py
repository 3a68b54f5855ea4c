"""Compressed forward for timm ``VisionTransformer`` models.

Walks the model's own modules (weights and classes untouched). The block
and attention code below is timm 1.0's ``Block.forward`` / ``Attention.forward``
with two changes, fenced by ``# evalsuite:`` comments: attention goes through
:meth:`CompressedForward.attend` (fused SDPA plus the method's requests), and
the method's hooks run between attention and MLP and after the block.
LayerScale (``ls1``/``ls2``), q/k-norm, attention-output norm and gating are
kept, so zero compression reproduces the unpatched model (see tests/test_parity.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .runner import CompressedForward


def check_supported(model: nn.Module) -> None:
    """Refuse timm models whose blocks this patch would compute wrongly."""
    from timm.models.vision_transformer import Attention, Block, VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise TypeError(f"timm patch supports VisionTransformer, got {type(model).__name__}")
    for i, blk in enumerate(model.blocks):
        if type(blk) is not Block or type(blk.attn) is not Attention:
            raise TypeError(
                f"timm patch: block {i} is {type(blk).__name__}/{type(blk.attn).__name__}; "
                "only timm's plain Block with Attention is supported (no parallel/res-post-norm/rope blocks)"
            )


def _attention(attn: nn.Module, x: torch.Tensor, run: CompressedForward, layer: int) -> torch.Tensor:
    # copied from timm 1.0.31 Attention.forward (fused path, no attn_mask)
    B, N, _ = x.shape
    if run.size_biased and _plain_heads(attn):  # evalsuite: size bias in the attention kernel, no q/k copies
        return attn.proj_drop(run.size_biased_attention(layer, x, (attn.qkv,), attn.proj, attn.head_dim,
                                                        attn.scale))
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    x = run.attend(layer, q, k, v, attn.scale)  # evalsuite: fused SDPA + size bias + method requests
    x = x.transpose(1, 2).reshape(B, N, -1)
    x = attn.norm(x)
    if gate is not None:
        x = x * gate
    return attn.proj_drop(attn.proj(x))


def _plain_heads(attn: nn.Module) -> bool:
    """No q/k-norm, output norm or gate: projections can be padded per head (else the copying path runs)."""
    return getattr(attn, "gate", None) is None and all(
        isinstance(m, nn.Identity) for m in (attn.q_norm, attn.k_norm, attn.norm))


def forward_tokens(model: nn.Module, pixels: torch.Tensor, run: CompressedForward) -> torch.Tensor:
    """pixels [B, 3, H, W] -> final-normed tokens [B, num_prefix + N_out, C]."""
    pixels = run.prepare(pixels)
    # copied from timm 1.0.31 VisionTransformer.forward_features
    x = model.patch_embed(pixels)
    grid = tuple(x.shape[1:3]) if x.ndim == 4 else tuple(model.patch_embed.grid_size)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    run.begin(x, model.num_prefix_tokens, grid)  # evalsuite
    for i, blk in enumerate(model.blocks):
        x_in = x  # evalsuite
        # copied from timm 1.0.31 Block.forward, hooks added
        x = x + blk.drop_path1(blk.ls1(_attention(blk.attn, blk.norm1(x), run, i)))
        x = run.after_attention(i, x)  # evalsuite
        x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
        x = run.after_block(i, x, x_in)  # evalsuite
    return model.norm(x)
