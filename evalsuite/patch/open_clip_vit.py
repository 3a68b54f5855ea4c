"""Compressed forward for open_clip ``VisionTransformer`` towers (``model.visual`` of a CLIP).

The tower: a patch convolution, a class token and learned positions, ``ln_pre``,
pre-norm blocks whose attention is ``nn.MultiheadAttention`` (one ``in_proj``
for q, k and v) with optional LayerScale, and ``ln_post``. The code below is
open_clip 3.3's ``VisionTransformer._embeds`` and ``ResidualAttentionBlock.forward``
with the changes fenced by ``# evalsuite:`` comments; the multi-head attention
is computed from the module's own ``in_proj``/``out_proj`` parameters through
:meth:`CompressedForward.attend` (or, with the size bias on CUDA,
:meth:`CompressedForward.size_biased_attention`).

open_clip adds its positions at the checkpoint's grid only (the unpatched tower
runs at that size alone); ``downscale`` feeds a smaller grid, for which the
positions are resampled bicubically as open_clip's ``resize_pos_embed`` does when
it loads a checkpoint at another size (:func:`positions`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .runner import CompressedForward

_SUPPORTED_POOLS = ("tok", "avg")


def check_supported(model: nn.Module) -> None:
    """Refuse towers this patch would compute wrongly (custom blocks, attention pooling, q/k norms)."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise TypeError(f"open_clip patch supports open_clip VisionTransformer (a CLIP's .visual), "
                        f"got {type(model).__name__}")
    if model.attn_pool is not None or model.pool_type not in _SUPPORTED_POOLS or model.final_ln_after_pool:
        raise TypeError("open_clip patch: only 'tok' or 'avg' pooling after ln_post is supported "
                        "(no attentional pooler, no final_ln_after_pool)")
    for i, block in enumerate(model.transformer.resblocks):
        attn = getattr(block, "attn", None)
        if (type(block) is not ResidualAttentionBlock or not isinstance(attn, nn.MultiheadAttention)
                or attn.in_proj_weight is None or attn.bias_k is not None or attn.add_zero_attn):
            raise TypeError(f"open_clip patch: block {i} is {type(block).__name__}; only ResidualAttentionBlock "
                            "with a packed-projection nn.MultiheadAttention is supported")


class _InProjection:
    """``nn.MultiheadAttention``'s packed q/k/v projection seen as a linear layer (``weight``, ``bias``,
    ``out_features``), for :meth:`CompressedForward.size_biased_attention`; one per module, kept on it
    (the padded-projection cache is keyed by it)."""

    __slots__ = ("attn", "__weakref__")

    def __init__(self, attn: nn.MultiheadAttention):
        self.attn = attn

    @classmethod
    def of(cls, attn: nn.MultiheadAttention) -> "_InProjection":
        view = vars(attn).get("_evalsuite_in_projection")
        if view is None:
            view = attn._evalsuite_in_projection = cls(attn)
        return view

    @property
    def weight(self) -> torch.Tensor:
        return self.attn.in_proj_weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.attn.in_proj_bias

    @property
    def out_features(self) -> int:
        return self.attn.in_proj_weight.shape[0]


def _attention(attn: nn.MultiheadAttention, x: torch.Tensor, run: CompressedForward, layer: int) -> torch.Tensor:
    # nn.MultiheadAttention's forward (packed in_proj, no mask, eval: no dropout) on x [B, N, C]
    head_dim = attn.head_dim
    scale = head_dim ** -0.5
    if run.size_biased:  # evalsuite: size bias in the attention kernel (or padded heads)
        return run.size_biased_attention(layer, x, (_InProjection.of(attn),), attn.out_proj, head_dim, scale)
    batch, tokens, _ = x.shape
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(
        batch, tokens, 3, attn.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    out = run.attend(layer, q, k, v, scale)  # evalsuite: fused SDPA + size bias + method requests
    return attn.out_proj(out.transpose(1, 2).reshape(batch, tokens, -1))


def positions(model: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """The tower's positional embedding [1 + rows*cols, C] at a patch ``grid``: its own, or resampled
    (kept in the tower's ``evalsuite_position_memo``, a :class:`~evalsuite.models.base.WeightsMemo`,
    where the adapter installed one)."""
    own = model.positional_embedding
    if tuple(grid) == tuple(model.grid_size):
        return own

    def resample() -> torch.Tensor:  # open_clip 3.3 resize_pos_embed, on the parameter
        rows, cols = model.grid_size
        patches = own[1:].reshape(1, rows, cols, -1).permute(0, 3, 1, 2).float()
        patches = F.interpolate(patches, size=tuple(grid), mode="bicubic", antialias=True, align_corners=False)
        return torch.cat([own[:1], patches.permute(0, 2, 3, 1).reshape(-1, own.shape[-1]).to(own.dtype)])

    memo = getattr(model, "evalsuite_position_memo", None)
    return resample() if memo is None else memo((own,), (tuple(grid),), resample)


def forward_tokens(model: nn.Module, pixels: torch.Tensor, run: CompressedForward) -> torch.Tensor:
    """pixels [B, 3, H, W] -> tokens [B, 1 + N_out, C] after ``ln_post`` (class token first)."""
    pixels = run.prepare(pixels)
    # copied from open_clip 3.3 VisionTransformer._embeds
    x = model.conv1(pixels)
    grid = tuple(x.shape[-2:])
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([model.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
    x = x + positions(model, grid).to(x.dtype)  # evalsuite: resampled at grids other than the tower's
    x = model.patch_dropout(x)
    x = model.ln_pre(x)
    run.begin(x, 1, grid)  # evalsuite
    for i, block in enumerate(model.transformer.resblocks):
        x_in = x  # evalsuite
        # copied from open_clip 3.3 ResidualAttentionBlock.forward, hooks added
        x = x + block.ls_1(_attention(block.attn, block.ln_1(x), run, i))
        x = run.after_attention(i, x)  # evalsuite
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        x = run.after_block(i, x, x_in)  # evalsuite
    return model.ln_post(x)
