"""Shared configuration of the staged dropping methods (V²Drop, A-ViT-style, random).

Each drops patch tokens after a few blocks (``layers``, 0-based block indices,
default: spread evenly over the depth) so that the total fraction of patch
tokens kept at the end is ``keep``; every stage keeps the same ratio of what
reaches it (:func:`~evalsuite.methods.state.stage_counts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Compressor, fmt
from .state import TokenState, default_layers, keep_topk, stage_counts


@dataclass
class StagedDrop(Compressor):
    """Base for methods that keep the top-scoring patch tokens at a few layers."""

    keep_param = "keep"  # the parameter that sets the total keep fraction

    def __post_init__(self) -> None:
        allowed = {self.keep_param, "layers"}
        unknown = set(self.params) - allowed
        if unknown:
            raise ValueError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        if self.keep_param not in self.params:
            raise ValueError(f"{self.name}: parameter {self.keep_param!r} is required")
        keep = self.keep_fraction
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"{self.name}: total keep fraction must be in (0, 1], got {keep}")
        layers = self.params.get("layers") or default_layers(self.num_layers)
        if any(not 0 <= layer < self.num_layers - 1 for layer in layers) or sorted(set(layers)) != list(layers):
            raise ValueError(f"{self.name}: layers {layers} must be increasing block indices < {self.num_layers - 1}")
        self.layers = list(layers)

    @property
    def keep_fraction(self) -> float:
        return float(self.params[self.keep_param])

    @property
    def id_part(self) -> str:
        return f"{self.name}_k{fmt(self.keep_fraction)}"

    @property
    def is_zero(self) -> bool:
        return self.keep_fraction == 1.0

    def schedule(self, num_patches: int, num_prefix: int = 0) -> list[int]:
        counts = dict(zip(self.layers, stage_counts(num_patches, self.keep_fraction, len(self.layers))))
        tokens, out = num_patches, []
        for layer in range(self.num_layers):
            out += [tokens, tokens]
            tokens = counts.get(layer, tokens)
        return out

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
