"""Adapter for Hugging Face ``transformers`` ``Dinov2Model`` (hub id or local folder)."""

from __future__ import annotations

import torch

from ..patch import hf_dinov2
from .base import ModelAdapter, memoize_position_embeddings


class HFDinov2(ModelAdapter):
    family = "hf_dinov2"
    patch = hf_dinov2

    def __init__(self, name: str, model: torch.nn.Module, image_size: int, random_weights: bool = False):
        cfg = model.config
        if getattr(cfg, "num_register_tokens", 0):
            raise ValueError(f"model {name}: DINOv2 with registers is a different class (Dinov2WithRegistersModel)")
        super().__init__(name, model, image_size, cfg.patch_size, 1, cfg.num_hidden_layers, cfg.hidden_size,
                         random_weights)
        memoize_position_embeddings(model.embeddings)

    def _reference_tokens(self, pixels):
        return self.model(pixel_values=pixels).last_hidden_state

    def _pool(self, tokens, sizes):
        return tokens[:, 0]  # Dinov2Model's pooler_output: the CLS token after the final norm


def create(name: str, repo: str | None = None, image_size: int = 224, config: dict | None = None,
           seed: int = 0) -> HFDinov2:
    """From a hub id / local folder (``repo``), or random weights from a ``config`` dict."""
    from transformers import Dinov2Config, Dinov2Model

    if repo is not None:
        model = Dinov2Model.from_pretrained(repo, attn_implementation="sdpa")
        return HFDinov2(name, model, image_size)
    torch.manual_seed(seed)
    model = Dinov2Model(Dinov2Config(**(config or {}), attn_implementation="sdpa"))
    return HFDinov2(name, model, image_size, random_weights=True)
