"""Randomly initialised stand-ins for encoders whose weights cannot be had offline.

Their figures measure speed and code paths only; every result carries the
``random-weights`` label.
"""

from __future__ import annotations

from . import timm_vit

# transformers vision-tower config of a ViT-B/16 (the CLIP and SigLIP stand-ins)
B16_TOWER = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 patch_size=16)


def vit_b16_random(name: str = "vit_b16_random", image_size: int = 224, seed: int = 0) -> timm_vit.TimmViT:
    """ViT-B/16 (86M parameters, 12 blocks, width 768) as in a ViT-B/16 VLM encoder, random weights."""
    return timm_vit.create(name, "vit_base_patch16_224", image_size=image_size, pretrained=False, seed=seed)


def clip_b16_random(name: str = "clip_b16_random", image_size: int = 224, seed: int = 0):
    """CLIP ViT-B/16 vision tower (transformers ``CLIPVisionModel``, the LLaVA-style encoder), random weights."""
    from . import hf_clip

    return hf_clip.create(name, arch="clip", image_size=image_size, config=B16_TOWER, seed=seed)


def siglip_b16_random(name: str = "siglip_b16_random", image_size: int = 224, seed: int = 0):
    """SigLIP ViT-B/16 vision tower (transformers ``SiglipVisionModel``, attention-pooling head), random weights."""
    from . import hf_clip

    return hf_clip.create(name, arch="siglip", image_size=image_size, config=B16_TOWER, seed=seed)
