"""A-ViT/AdaViT-style importance pruning, training-free (after arXiv 2112.07658).

A-ViT learns per-token halting; without training we keep its idea of ranking
tokens by importance and use the attention they receive as the importance:
the class token's attention averaged over heads where the model has a class
token, otherwise the mean attention each token receives from all queries.
Sparsity is *total*: ``sparsity = 0.3`` means 30% of the patch tokens are gone
at the encoder's output, removed in equal-ratio stages after the configured
blocks (so each of 3 stages keeps 0.7 ** (1/3) ~ 88.8% of what reaches it).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import AttentionRequest
from ._staged import StagedDrop


@dataclass
class AViT(StagedDrop):
    def attention_request(self, layer):
        return AttentionRequest(importance=True) if layer in self.layers and not self.is_zero else None

    def observe_attention(self, layer, keys, importance):
        self._importance = importance

    def scores(self, layer, x, x_in, state):
        return self._importance[:, state.num_prefix:]
