"""Compressed forward for Hugging Face ``transformers`` CLIP and SigLIP vision towers.

``CLIPVisionModel`` and ``SiglipVisionModel`` share their encoder layer (pre-norm
attention with ``q_proj``/``k_proj``/``v_proj``/``out_proj``, pre-norm MLP);
they differ around it: CLIP has a class token and a norm before the encoder and
leaves ``last_hidden_state`` un-normed (its pooled output is the normed class
token), SigLIP has no class token and norms every output token. Older
transformers wrap the tower in ``.vision_model``; both layouts are read.
The layer code is transformers 5.23's ``CLIPEncoderLayer.forward`` with the
changes fenced by ``# evalsuite:`` comments; ``CLIPAttention.forward`` is
:meth:`CompressedForward.linear_attention`.
"""

from __future__ import annotations

import torch
from torch import nn

from .runner import CompressedForward


def tower(model: nn.Module) -> nn.Module:
    """The module holding ``embeddings`` and ``encoder`` (the model itself, or its ``vision_model``)."""
    return getattr(model, "vision_model", model)


def check_supported(model: nn.Module) -> None:
    from transformers import CLIPVisionModel, SiglipVisionModel

    if not isinstance(model, (CLIPVisionModel, SiglipVisionModel)):
        raise TypeError(f"hf_clip patch supports transformers CLIPVisionModel and SiglipVisionModel, "
                        f"got {type(model).__name__}")
    attn = tower(model).encoder.layers[0].self_attn
    if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "out_proj", "scale", "head_dim")):
        raise TypeError(f"hf_clip patch: unknown attention layout {type(attn).__name__} "
                        "(expected q_proj/k_proj/v_proj/out_proj with head_dim and scale)")


def forward_tokens(model: nn.Module, pixels: torch.Tensor, run: CompressedForward) -> torch.Tensor:
    """pixels [B, 3, H, W] -> tokens [B, num_prefix + N_out, C] as the model's ``last_hidden_state``."""
    vision = tower(model)
    pixels = run.prepare(pixels)
    patch = model.config.patch_size
    x = vision.embeddings(pixels, interpolate_pos_encoding=pixels.shape[-1] != model.config.image_size)
    if hasattr(vision, "pre_layrnorm"):  # CLIP
        x = vision.pre_layrnorm(x)
    num_prefix = x.shape[1] - (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
    run.begin(x, num_prefix, (pixels.shape[-2] // patch, pixels.shape[-1] // patch))  # evalsuite
    for i, lyr in enumerate(vision.encoder.layers):
        x_in = x  # evalsuite
        # copied from transformers 5.23 CLIPEncoderLayer.forward (SiglipEncoderLayer is the same), hooks added
        attn = lyr.self_attn
        x = x + run.linear_attention(i, lyr.layer_norm1(x), attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj,
                                     attn.head_dim, attn.scale)  # evalsuite: CLIPAttention's computation
        x = run.after_attention(i, x)  # evalsuite
        x = x + lyr.mlp(lyr.layer_norm2(x))
        x = run.after_block(i, x, x_in)  # evalsuite
    return x if hasattr(vision, "pre_layrnorm") else vision.post_layernorm(x)  # SigLIP norms every token
