"""Adapter for timm ``VisionTransformer`` models: any timm ViT by name.

Weights come from the timm/HF hub (``pretrained=true``), from a local file
whose sha256 is checked (``checkpoint`` + ``sha256``), or are random
(``pretrained=false``; every figure is then labelled ``random-weights``).
"""

from __future__ import annotations

from pathlib import Path
from types import FunctionType, MethodType

import torch

from ..patch import timm_vit
from ..paths import file_sha256
from .base import ModelAdapter, WeightsMemo, weighted_mean


class ChecksumError(ValueError):
    pass


class TimmViT(ModelAdapter):
    family = "timm_vit"
    patch = timm_vit

    def __init__(self, name: str, model: torch.nn.Module, image_size: int, random_weights: bool = False):
        cfg = model.pretrained_cfg or {}
        self.mean = tuple(cfg.get("mean", self.mean))
        self.std = tuple(cfg.get("std", self.std))
        super().__init__(name, model, image_size, model.patch_embed.patch_size[0], model.num_prefix_tokens,
                         len(model.blocks), model.embed_dim, random_weights)
        memoize_position_embeddings(model)

    def _reference_tokens(self, pixels):
        return self.model.forward_features(pixels)

    def _pool(self, tokens, sizes):
        pool = self.model.global_pool
        if pool == "token":
            pooled = tokens[:, 0]
        elif pool == "avg":
            pooled = weighted_mean(tokens[:, self.num_prefix:], sizes[:, self.num_prefix:])
        else:
            raise ValueError(f"model {self.name}: global_pool {pool!r} not supported (token or avg)")
        return self.model.fc_norm(pooled)


def memoize_position_embeddings(model: torch.nn.Module, keep: int = 4) -> None:
    """Keep timm's resampled position embeddings per grid, instead of resampling in every forward.

    With ``dynamic_img_size``, ``VisionTransformer._pos_embed`` resamples ``pos_embed`` bicubically
    (timm's module-level ``resample_abs_pos_embed``) in every forward whose grid differs from the
    checkpoint's: every ``downscale`` input. Both passes call ``model._pos_embed``, so the model gets
    its own: timm's code object bound to this model, run with globals in which that one name is a
    version keeping its results in a :class:`~evalsuite.models.base.WeightsMemo` per (embedding
    shape, grid, prefix tokens) while ``pos_embed`` stays as it is. timm's code runs unchanged and no
    timm module is patched; the model's class and weights are untouched. A deep copy of the model
    shares the memo, which follows whichever ``pos_embed`` it is called with. Where ``_pos_embed``
    does not call ``resample_abs_pos_embed`` (another timm version) the model is left as it is.
    """
    own = type(model)._pos_embed
    if "resample_abs_pos_embed" not in own.__code__.co_names:
        return
    resample = own.__globals__["resample_abs_pos_embed"]
    memo = WeightsMemo(keep)

    def resample_abs_pos_embed(posemb, new_size, old_size=None, num_prefix_tokens=1, **kwargs):
        key = (tuple(posemb.shape), tuple(new_size), None if old_size is None else tuple(old_size),
               num_prefix_tokens, *sorted(kwargs.items()))
        return memo((posemb,), key, lambda: resample(posemb, new_size, old_size, num_prefix_tokens, **kwargs))

    memoized = FunctionType(own.__code__, {**own.__globals__, "resample_abs_pos_embed": resample_abs_pos_embed},
                            own.__name__, own.__defaults__, own.__closure__)
    memoized.__kwdefaults__ = own.__kwdefaults__
    model._pos_embed = MethodType(memoized, model)


def create(name: str, arch: str, image_size: int = 224, pretrained: bool = False,
           checkpoint: str | None = None, sha256: str | None = None, seed: int = 0, **kwargs) -> TimmViT:
    """Build timm ``arch`` at ``image_size`` with dynamic image size (needed by ``downscale``)."""
    import timm

    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model {name}: checkpoint {path} not found")
        if sha256 is None:
            raise ChecksumError(f"model {name}: checkpoint {path} given without its sha256")
        actual = file_sha256(path)
        if actual != sha256.lower():
            raise ChecksumError(f"model {name}: checkpoint {path} has sha256 {actual}, expected {sha256}")
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=pretrained and checkpoint is None, num_classes=0,
                              img_size=image_size, dynamic_img_size=True,
                              checkpoint_path=str(checkpoint) if checkpoint else "", **kwargs)
    return TimmViT(name, model, image_size, random_weights=not pretrained and checkpoint is None)
