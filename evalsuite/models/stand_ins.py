"""Randomly initialised stand-ins for encoders whose weights cannot be had offline.

Their figures measure speed and code paths only; every result carries the
``random-weights`` label.
"""

from __future__ import annotations

from . import timm_vit


def vit_b16_random(name: str = "vit_b16_random", image_size: int = 224, seed: int = 0) -> timm_vit.TimmViT:
    """ViT-B/16 (86M parameters, 12 blocks, width 768) as in a ViT-B/16 VLM encoder, random weights."""
    return timm_vit.create(name, "vit_base_patch16_224", image_size=image_size, pretrained=False, seed=seed)
