"""The contract between compression methods and model-family patches.

A :class:`Compressor` is a configured method. It imports only torch and knows
nothing of timm or transformers: each family's patch (``evalsuite.patch``)
walks its own modules and calls these hooks at fixed points of every block::

    x_in = x
    x = x + ls1(attn(norm1(x)))        # attention computed by the patch;
                                       #   keys / importance handed over via ``observe_attention``
    x = compressor.after_attention(i, x, state)     # ToMe merges here
    x = x + ls2(mlp(norm2(x)))
    x = compressor.after_block(i, x, x_in, state)   # dropping methods act here

With zero compression every hook returns its input unchanged, and the patched
forward equals the unpatched model (the parity tests check this per family).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .state import TokenState


@dataclass
class AttentionRequest:
    """What a method wants the patch to extract from block ``layer``'s attention."""

    keys: bool = False  # the block's keys per head [B, H, N, head_dim], a view valid until after_attention
    importance: bool = False  # attention each token receives [B, N] (A-ViT-style)


@dataclass
class Compressor:
    """Base class: the ``none`` method. Subclasses override the hooks they need.

    ``params`` are the method's parameters as given in the case matrix; ``id_part``
    is their short form used in test ids (``tome_f0.5``).
    """

    name: ClassVar[str] = "none"
    params: dict[str, Any] = field(default_factory=dict)
    num_layers: int = 12
    seed: int = 0

    # -- configuration -------------------------------------------------------
    @property
    def id_part(self) -> str:
        return self.name

    @property
    def is_zero(self) -> bool:
        """True when the configuration compresses nothing (the parity setting)."""
        return True

    @property
    def input_scale(self) -> float:
        """Factor applied to the input image side before the encoder (``downscale``)."""
        return 1.0

    def attention_request(self, layer: int) -> AttentionRequest | None:
        return None

    def schedule(self, num_patches: int, num_prefix: int = 0) -> list[int]:
        """Patch tokens entering the attention and MLP of each block, as pairs flattened.

        Returns ``[attn_0, mlp_0, attn_1, mlp_1, ...]``; the FLOP model behind
        the ideal speedup reads it. The default keeps every token.
        """
        return [num_patches] * (2 * self.num_layers)

    # -- hooks ----------------------------------------------------------------
    def begin(self, state: TokenState) -> None:
        """Called once per forward after the embedding."""

    def observe_attention(
        self, layer: int, keys: torch.Tensor | None, importance: torch.Tensor | None
    ) -> None:
        """Receives what :meth:`attention_request` asked for at ``layer``."""

    def after_attention(self, layer: int, x: torch.Tensor, state: TokenState) -> torch.Tensor:
        return x

    def after_block(
        self, layer: int, x: torch.Tensor, x_in: torch.Tensor, state: TokenState
    ) -> torch.Tensor:
        return x


def fmt(value: float) -> str:
    """Short number for test ids: 0.5 -> '0.5', 8.0 -> '8'."""
    return f"{value:g}"
