"""The contract between compression methods and model-family patches.

A :class:`Compressor` holds a method's hooks, built from its torch-free spec
(:mod:`evalsuite.methods.spec`) at the model's real depth. It imports only torch and knows
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

from dataclasses import dataclass
from typing import Any

import torch

from .spec import MethodSpec, fmt  # noqa: F401  (fmt: re-exported)
from .state import TokenState


@dataclass
class AttentionRequest:
    """What a method wants the patch to extract from block ``layer``'s attention."""

    keys: bool = False  # the block's keys per head [B, H, N, head_dim], a view valid until after_attention
    importance: bool = False  # attention each token receives [B, N] (A-ViT-style)


@dataclass
class Compressor:
    """Base class of a method's hooks; itself the ``none`` method. Subclasses override the hooks
    they need and only compute: parameters, case-id part and token schedule live in ``spec``
    (:class:`~evalsuite.methods.spec.MethodSpec`), which builds the hooks for a model of
    ``num_layers`` blocks (:meth:`~evalsuite.methods.spec.MethodSpec.build`).
    """

    spec: MethodSpec
    num_layers: int = 12
    seed: int = 0

    # -- configuration, read from the spec ---------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def params(self) -> dict[str, Any]:
        return self.spec.params

    @property
    def id_part(self) -> str:
        return self.spec.id_part

    @property
    def is_zero(self) -> bool:
        """True when the configuration compresses nothing (the parity setting)."""
        return self.spec.is_zero

    @property
    def input_scale(self) -> float:
        """Factor applied to the input image side before the encoder (``downscale``)."""
        return self.spec.input_scale

    def schedule(self, num_patches: int, num_prefix: int = 0) -> list[int]:
        """The spec's schedule at this model's depth: ``[attn_0, mlp_0, attn_1, mlp_1, ...]``."""
        return self.spec.schedule(num_patches, num_prefix, self.num_layers)

    def attention_request(self, layer: int) -> AttentionRequest | None:
        return None

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
