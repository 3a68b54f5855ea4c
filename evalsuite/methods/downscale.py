"""Downscaling baseline: resize the input so the encoder sees the same token budget.

``keep = 0.5`` resizes the image side by sqrt(0.5), so the patch grid (and
the number of tokens) shrinks to about half. The encoder is otherwise
untouched; its position embeddings are interpolated to the smaller grid.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Compressor
from .spec import DownscaleSpec


@dataclass
class Downscale(Compressor):
    """No hooks: the patch resizes the input by ``spec.input_scale`` before the encoder."""

    spec: DownscaleSpec

    def grid_for(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The smaller patch grid the resized input yields."""
        return self.spec.grid_for(grid)
