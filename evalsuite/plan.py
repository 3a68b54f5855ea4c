"""The token plan: which input patches became which output token, per image.

Every compression method returns one :class:`TokenPlan` per image. OCR
reconstructions, overlays and ``.npz`` exports are built from it alone, so it
is plain numpy and knows nothing of models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenPlan:
    """Where each input patch of one image ended up.

    ``grid`` is the (rows, cols) patch grid of the *uncompressed* model input.
    ``patch_to_token[i]`` is the index of the output patch token (prefix tokens
    such as CLS or registers excluded) that holds row-major patch ``i``, or -1
    when the patch was dropped. Several patches pointing at one token form a
    merged group. ``input_scale`` < 1 means the image was resized down before the
    encoder (the ``downscale`` baseline): the model saw the picture at that
    scale, not the original pixels.
    """

    grid: tuple[int, int]
    patch_to_token: np.ndarray  # int32 [rows * cols]
    num_tokens: int  # output patch tokens
    input_scale: float = 1.0

    def __post_init__(self) -> None:
        rows, cols = self.grid
        if self.patch_to_token.shape != (rows * cols,):
            raise ValueError(f"patch_to_token has shape {self.patch_to_token.shape}, grid {self.grid}")

    @classmethod
    def identity(cls, grid: tuple[int, int]) -> "TokenPlan":
        n = grid[0] * grid[1]
        return cls(grid, np.arange(n, dtype=np.int32), n)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def keep_mask(self) -> np.ndarray:
        """bool [rows, cols]: patches that still reach some output token."""
        return (self.patch_to_token >= 0).reshape(self.grid)

    @property
    def group_ids(self) -> np.ndarray:
        """int32 [rows, cols]: output token per patch, -1 for dropped."""
        return self.patch_to_token.reshape(self.grid)

    def token_sizes(self) -> np.ndarray:
        """float [num_tokens]: how many input patches each output token holds."""
        kept = self.patch_to_token[self.patch_to_token >= 0]
        return np.bincount(kept, minlength=self.num_tokens).astype(np.float64)

    @property
    def is_identity(self) -> bool:
        return (
            self.input_scale == 1.0
            and self.num_tokens == self.num_patches
            and bool(np.all(np.sort(self.patch_to_token) == np.arange(self.num_patches)))
        )
