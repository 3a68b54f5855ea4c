"""Downscaling baseline: resize the input so the encoder sees the same token budget.

``keep = 0.5`` resizes the image side by sqrt(0.5), so the patch grid (and
the number of tokens) shrinks to about half. The encoder is otherwise
untouched; its position embeddings are interpolated to the smaller grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .base import Compressor, fmt


@dataclass
class Downscale(Compressor):
    name = "downscale"

    def __post_init__(self) -> None:
        unknown = set(self.params) - {"keep"}
        if unknown or "keep" not in self.params:
            raise ValueError("downscale: takes exactly one parameter, keep (0..1]")
        if not 0.0 < float(self.params["keep"]) <= 1.0:
            raise ValueError(f"downscale: keep must be in (0, 1], got {self.params['keep']}")

    @property
    def id_part(self) -> str:
        return f"downscale_k{fmt(float(self.params['keep']))}"

    @property
    def is_zero(self) -> bool:
        return float(self.params["keep"]) == 1.0

    @property
    def input_scale(self) -> float:
        return math.sqrt(float(self.params["keep"]))

    def grid_for(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The smaller patch grid the resized input yields."""
        s = self.input_scale
        return max(1, round(grid[0] * s)), max(1, round(grid[1] * s))

    def schedule(self, num_patches, num_prefix=0):
        side = math.isqrt(num_patches)
        rows, cols = self.grid_for((side, num_patches // max(side, 1)))
        return [rows * cols] * (2 * self.num_layers)
