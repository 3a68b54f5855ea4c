"""Adapter for Hugging Face ``transformers`` CLIP and SigLIP vision towers (hub id or local folder).

These are the image encoders of most VLMs. Pooled output: CLIP's normed class
token; SigLIP's attention-pooling head, whose probe attends to merged tokens
with the same log-size bias as the encoder (proportional attention), so a
token standing for several patches keeps their weight. A SigLIP tower without
a head pools by the size-weighted mean of its tokens.
"""

from __future__ import annotations

import torch

from ..patch import hf_clip
from .base import CLIP_MEAN, CLIP_STD, ModelAdapter, memoize_position_embeddings, weighted_mean

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


class HFClipVision(ModelAdapter):
    family = "hf_clip"
    patch = hf_clip

    def __init__(self, name: str, model: torch.nn.Module, image_size: int, random_weights: bool = False):
        cfg = model.config
        self.is_clip = hasattr(hf_clip.tower(model), "pre_layrnorm")
        self.mean, self.std = (CLIP_MEAN, CLIP_STD) if self.is_clip else (SIGLIP_MEAN, SIGLIP_STD)
        super().__init__(name, model, image_size, cfg.patch_size, 1 if self.is_clip else 0,
                         cfg.num_hidden_layers, cfg.hidden_size, random_weights)
        memoize_position_embeddings(hf_clip.tower(model).embeddings)

    def _reference_tokens(self, pixels):
        native = pixels.shape[-1] == self.model.config.image_size
        return self.model(pixel_values=pixels, interpolate_pos_encoding=not native).last_hidden_state

    def _pool(self, tokens, sizes):
        vision = hf_clip.tower(self.model)
        if self.is_clip:
            return vision.post_layernorm(tokens[:, 0])  # CLIPVisionModel's pooler_output
        head = getattr(vision, "head", None)
        if head is None:
            return weighted_mean(tokens, sizes)
        # transformers' SiglipMultiheadAttentionPoolingHead.forward, with the log-size bias as attn_mask
        probe = head.probe.repeat(tokens.shape[0], 1, 1)
        bias = sizes.log().to(tokens.dtype)[:, None, :].repeat_interleave(head.attention.num_heads, dim=0)
        x = head.attention(probe, tokens, tokens, attn_mask=bias, need_weights=False)[0]
        x = x + head.mlp(head.layernorm(x))
        return x[:, 0]


def create(name: str, repo: str | None = None, arch: str = "clip", image_size: int = 224,
           config: dict | None = None, seed: int = 0) -> HFClipVision:
    """``arch`` "clip" or "siglip": the vision tower from a hub id / local folder (``repo``; a full
    CLIP/SigLIP checkpoint works), or random weights from a vision ``config`` dict."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    classes = {"clip": (CLIPVisionConfig, CLIPVisionModel), "siglip": (SiglipVisionConfig, SiglipVisionModel)}
    if arch not in classes:
        raise ValueError(f"model {name}: arch must be one of {sorted(classes)}, got {arch!r}")
    config_class, model_class = classes[arch]
    if repo is not None:
        return HFClipVision(name, model_class.from_pretrained(repo, attn_implementation="sdpa"), image_size)
    torch.manual_seed(seed)
    model = model_class(config_class(**{"image_size": image_size, **(config or {})}, attn_implementation="sdpa"))
    return HFClipVision(name, model, image_size, random_weights=True)
