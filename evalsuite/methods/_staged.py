"""Hooks shared by the staged dropping methods (V²Drop, A-ViT-style, random).

Each drops patch tokens after a few blocks so that the total fraction of patch
tokens kept at the end is the spec's ``keep`` (:class:`~evalsuite.methods.spec.StagedSpec`);
every stage keeps the same ratio of what reaches it (:func:`~evalsuite.methods.spec.stage_counts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Compressor
from .spec import StagedSpec, stage_counts
from .state import TokenState, keep_topk


@dataclass
class StagedDrop(Compressor):
    """Base for methods that keep the top-scoring patch tokens at a few layers."""

    spec: StagedSpec

    def __post_init__(self) -> None:
        self.layers = self.spec.layers_for(self.num_layers)

    @property
    def keep_fraction(self) -> float:
        return self.spec.keep_fraction

    def begin(self, state: TokenState) -> None:
        self._targets = dict(zip(self.layers, stage_counts(state.num_input_patches, self.keep_fraction, len(self.layers))))

    def scores(self, layer: int, x: torch.Tensor, x_in: torch.Tensor, state: TokenState) -> torch.Tensor:
        """[B, P_cur] keep scores of the current patch tokens; higher = keep."""
        raise NotImplementedError

    def after_block(self, layer, x, x_in, state):
        target = self._targets.get(layer)
        if target is None or target >= state.num_patch_tokens:
            return x
        return keep_topk(x, state, self.scores(layer, x, x_in, state), target)
