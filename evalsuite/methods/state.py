"""Token bookkeeping shared by every compression method (imports only torch).

A compressed forward pass carries a :class:`TokenState`: how many input
patches each current token stands for (``size``, used for size-weighted
merging and proportional attention) and where each input patch went
(``source``, from which the per-image token plan is read at the end).

Every reduction is expressed as an ``old_to_new`` index map, so merging and
dropping share one update rule.
"""

from __future__ import annotations

from typing import Callable

import torch

from .spec import default_layers, stage_counts  # noqa: F401  (pure Python; here for the hooks)


class TokenState:
    """State of one batch during a compressed forward.

    Shapes: ``size`` [B, N, 1] (tokens of the full sequence, prefix included),
    ``source`` [B, P] (P = input patches; value = index of the *patch* token that
    now holds the patch, -1 once dropped). Prefix tokens (CLS, registers) are
    never merged or dropped and always sit at positions ``[0, num_prefix)``.

    ``source`` is bookkeeping for the token plan, not part of compressing: the
    per-layer index maps are kept and composed only when ``source`` is read,
    so the forward pass itself launches no kernels for it.
    """

    def __init__(self, size: torch.Tensor, num_patches: int, num_prefix: int, grid: tuple[int, int]):
        self.size = size
        self.num_prefix = num_prefix
        self.num_input_patches = num_patches
        self.grid = grid
        self.proportional_attention = True
        self.merged = False  # True once some token holds more than one patch
        self._source: torch.Tensor | None = None
        self._maps: list[torch.Tensor] = []

    @classmethod
    def start(cls, x: torch.Tensor, num_prefix: int, grid: tuple[int, int]) -> "TokenState":
        """State for tokens ``x`` [B, num_prefix + P, C] straight from the embedding."""
        batch, tokens, _ = x.shape
        size = torch.ones(batch, tokens, 1, device=x.device, dtype=x.dtype)
        return cls(size, tokens - num_prefix, num_prefix, grid)

    @property
    def num_patch_tokens(self) -> int:
        return self.size.shape[1] - self.num_prefix

    @property
    def source(self) -> torch.Tensor:
        """[B, P] patch token now holding each input patch (-1: dropped)."""
        if self._source is None:
            batch = self.size.shape[0]
            patches = torch.arange(self.num_input_patches, device=self.size.device)
            self._source = patches.expand(batch, -1).clone()
        for pending in self._maps:
            old_to_new = pending() if callable(pending) else pending
            held = self._source >= 0
            moved = old_to_new.gather(1, self._source.clamp(min=0))
            self._source = torch.where(held, moved, torch.full_like(moved, -1))
        self._maps.clear()
        return self._source

    def attention_bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        """Additive log-size bias [B, 1, 1, N] for proportional attention (ToMe eq. 1).

        None while no token holds more than one patch, so the fused attention
        kernel runs exactly as in the unpatched model.
        """
        if not (self.merged and self.proportional_attention):
            return None
        return self.size.log().to(dtype).transpose(1, 2)[:, None]

    def remap(self, old_to_new: "torch.Tensor | Callable[[], torch.Tensor]") -> None:
        """Follow a reduction of the patch tokens: ``old_to_new`` [B, N_old_patches], -1 = removed.

        May be a function returning that map; it is called only when ``source`` is read.
        """
        self._maps.append(old_to_new)


def split_prefix(x: torch.Tensor, num_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, N, C] -> ([B, num_prefix, C], [B, N - num_prefix, C])."""
    return x[:, :num_prefix], x[:, num_prefix:]


def keep_topk(
    x: torch.Tensor, state: TokenState, scores: torch.Tensor, keep: int
) -> torch.Tensor:
    """Keep the ``keep`` patch tokens with the highest ``scores`` [B, P_cur]; drop the rest.

    ``x`` is [B, num_prefix + P_cur, C]; kept tokens stay in their original
    (spatial) order. Returns the reduced tokens and updates ``state``.
    """
    prefix, patches = split_prefix(x, state.num_prefix)
    batch, current, channels = patches.shape
    if keep >= current:
        return x
    keep_idx = scores.topk(keep, dim=-1, sorted=False).indices.sort(dim=-1).values  # [B, keep]

    def old_to_new() -> torch.Tensor:
        mapping = torch.full((batch, current), -1, device=x.device, dtype=torch.long)
        return mapping.scatter_(1, keep_idx, torch.arange(keep, device=x.device).expand(batch, keep))

    state.remap(old_to_new)
    patches = patches.gather(1, keep_idx[..., None].expand(batch, keep, channels))
    p_size, s_size = split_prefix(state.size, state.num_prefix)
    state.size = torch.cat([p_size, s_size.gather(1, keep_idx[..., None])], dim=1)
    return torch.cat([prefix, patches], dim=1)
