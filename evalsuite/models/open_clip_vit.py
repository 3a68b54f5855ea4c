"""Adapter for open_clip image towers: a CLIP's ``visual`` ``VisionTransformer``.

Tokens are what the tower's ``ln_post`` gives every token, class token first;
the image embedding is the class token (``pool_type = 'tok'``, OpenAI CLIP) or
the size-weighted mean of the patch tokens (``'avg'``), projected by ``proj``:
the tower's own output.
"""

from __future__ import annotations

import torch

from ..patch import open_clip_vit
from .base import CLIP_MEAN, CLIP_STD, ModelAdapter, WeightsMemo, weighted_mean


class OpenClipViT(ModelAdapter):
    family = "open_clip_vit"
    patch = open_clip_vit
    mean, std = CLIP_MEAN, CLIP_STD
    native_grid_only = True  # the unpatched tower adds its positions at its own grid alone

    def __init__(self, name: str, model: torch.nn.Module, image_size: int, random_weights: bool = False):
        open_clip_vit.check_supported(model)
        if image_size != model.image_size[0] or model.image_size[0] != model.image_size[1]:
            raise ValueError(f"model {name}: the tower takes {model.image_size[0]}x{model.image_size[1]} px "
                             f"(open_clip adds its positions at its own grid); image_size is {image_size}")
        super().__init__(name, model, image_size, model.patch_size[0], 1, len(model.transformer.resblocks),
                         model.transformer.width, random_weights)
        model.evalsuite_position_memo = WeightsMemo()  # downscale's resampled positions, per grid

    def _reference_tokens(self, pixels):
        tower = self.model  # the tower's own modules, in open_clip's own order (VisionTransformer.forward)
        return tower.ln_post(tower.transformer(tower._embeds(pixels)))

    def _pool(self, tokens, sizes):
        tower = self.model
        pooled = tokens[:, 0] if tower.pool_type == "tok" else weighted_mean(tokens[:, 1:], sizes[:, 1:])
        return pooled @ tower.proj if tower.proj is not None else pooled


def create(name: str, model_name: str | None = None, pretrained: str | None = None, image_size: int = 224,
           config: dict | None = None, seed: int = 0) -> OpenClipViT:
    """An open_clip model's image tower: ``model_name`` (e.g. "ViT-B-16") with ``pretrained`` weights (a
    tag such as "openai", or a local file), or a random ``VisionTransformer`` built from ``config``
    (its constructor's arguments: patch_size, width, layers, heads, mlp_ratio, ...)."""
    import open_clip
    from open_clip.transformer import VisionTransformer

    if model_name is not None:
        model = open_clip.create_model(model_name, pretrained=pretrained, force_image_size=image_size)
        return OpenClipViT(name, model.visual, image_size, random_weights=pretrained is None)
    torch.manual_seed(seed)
    settings = {"patch_size": 16, "width": 768, "layers": 12, "heads": 12, "mlp_ratio": 4.0, **(config or {})}
    return OpenClipViT(name, VisionTransformer(image_size=image_size, **settings), image_size, random_weights=True)
