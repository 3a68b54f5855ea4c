"""Token Merging (ToMe, Bolya et al., arXiv 2210.09461), written from the paper.

In every block, between attention and MLP, ``r`` patch tokens are merged into
their most similar partner by bipartite soft matching on the attention keys
(averaged over heads). Merged tokens are size-weighted averages, and the
attention of later blocks adds ``log(size)`` to the logits (proportional
attention) so a merged token keeps the pull of the patches it stands for.
Prefix tokens (CLS, registers) are never matched.

Merge factor rule (the product owner's "0.5" and "0.7"): ``merge_factor = f``
removes the fraction ``f`` of the patch tokens by the end of the encoder with
ToMe's constant schedule, i.e. ``r = floor(f * P / L)`` per block for P patches
and L blocks. ``r`` may also be given directly. Either way each block merges at
most half of the tokens reaching it (a bipartite matching cannot merge more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import AttentionRequest, Compressor, fmt
from .state import TokenState, split_prefix


def bipartite_soft_matching(
    metric: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Match ``r`` tokens of set A (even positions) onto set B (odd positions).

    ``metric`` is [B, P, C] (patch tokens only). Returns ``(unm_idx, src_idx,
    dst_idx, old_to_new)``: indices into A of the unmerged [B, Na - r] and the
    merged [B, r] tokens, the B-token each merged one joins [B, r], and the map
    [B, P] from old patch-token positions to positions in the output order
    ``[unmerged A, B]`` (unmerged A tokens by decreasing similarity: attention
    does not care about token order, so no re-sort is spent on it).
    """
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)  # [B, Na, Nb]
    node_max, node_idx = scores.max(dim=-1)  # best partner in B for each A token
    edge_idx = node_max.argsort(dim=-1, descending=True)
    src_idx, unm_idx = edge_idx[:, :r], edge_idx[:, r:]  # token order is irrelevant to attention: no re-sort
    dst_idx = node_idx.gather(1, src_idx)

    batch, num_a = node_idx.shape
    num_b = b.shape[1]
    num_unm = num_a - r
    positions = torch.arange(max(num_unm, num_b), device=metric.device).expand(batch, -1)
    new_a = torch.empty(batch, num_a, dtype=torch.long, device=metric.device)
    new_a.scatter_(1, edge_idx, torch.cat([num_unm + dst_idx, positions[:, :num_unm]], dim=1))
    old_to_new = torch.empty(batch, num_a + num_b, dtype=torch.long, device=metric.device)
    old_to_new[:, ::2] = new_a
    old_to_new[:, 1::2] = num_unm + positions[:, :num_b]
    return unm_idx, src_idx, dst_idx, old_to_new


def merge_weighted(
    x: torch.Tensor, size: torch.Tensor, unm_idx: torch.Tensor, src_idx: torch.Tensor, dst_idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted merge of patch tokens ``x`` [B, P, C] with sizes [B, P, 1].

    Returns the merged tokens [B, P - r, C] and their sizes [B, P - r, 1].
    """
    weighted = torch.cat([x * size, size], dim=-1)  # merge features and sizes in one pass
    a, b = weighted[:, ::2], weighted[:, 1::2]
    channels = weighted.shape[-1]
    unm = a.gather(1, unm_idx[..., None].expand(-1, -1, channels))
    src = a.gather(1, src_idx[..., None].expand(-1, -1, channels))
    b = b.scatter_reduce(1, dst_idx[..., None].expand(-1, -1, channels), src, reduce="sum")
    out = torch.cat([unm, b], dim=1)
    new_size = out[..., -1:]
    return out[..., :-1] / new_size, new_size


@dataclass
class ToMe(Compressor):
    name = "tome"

    def __post_init__(self) -> None:
        unknown = set(self.params) - {"merge_factor", "r", "proportional_attention"}
        if unknown:
            raise ValueError(f"tome: unknown parameter(s) {sorted(unknown)}; use merge_factor or r")
        if ("merge_factor" in self.params) == ("r" in self.params):
            raise ValueError("tome: give exactly one of merge_factor (0..1) or r (tokens per block)")
        factor = self.params.get("merge_factor")
        if factor is not None and not 0.0 <= float(factor) < 1.0:
            raise ValueError(f"tome: merge_factor must be in [0, 1), got {factor}")
        self.proportional_attention = bool(self.params.get("proportional_attention", True))
        self._keys: torch.Tensor | None = None

    @property
    def id_part(self) -> str:
        if "r" in self.params:
            return f"tome_r{self.params['r']}"
        return f"tome_f{fmt(float(self.params['merge_factor']))}"

    def r_for(self, num_patches: int) -> int:
        if "r" in self.params:
            return int(self.params["r"])
        return math.floor(float(self.params["merge_factor"]) * num_patches / self.num_layers)

    @property
    def is_zero(self) -> bool:
        return self.params.get("r", 1) == 0 or float(self.params.get("merge_factor", 1.0)) == 0.0

    def attention_request(self, layer: int) -> AttentionRequest | None:
        return None if self.is_zero else AttentionRequest(keys=True)

    def schedule(self, num_patches: int, num_prefix: int = 0) -> list[int]:
        r, tokens, out = self.r_for(num_patches), num_patches, []
        for _ in range(self.num_layers):
            merged = min(r, tokens // 2)
            out += [tokens, tokens - merged]
            tokens -= merged
        return out

    def begin(self, state: TokenState) -> None:
        state.proportional_attention = self.proportional_attention
        self._r = self.r_for(state.num_input_patches)

    def observe_attention(self, layer, keys, importance) -> None:
        self._keys = keys

    def after_attention(self, layer: int, x: torch.Tensor, state: TokenState) -> torch.Tensor:
        r = min(self._r, state.num_patch_tokens // 2)
        if r <= 0:
            return x
        p = state.num_prefix
        unm_idx, src_idx, dst_idx, old_to_new = bipartite_soft_matching(self._keys[:, p:], r)
        prefix, patches = split_prefix(x, p)
        prefix_size, patch_size = split_prefix(state.size, p)
        patches, patch_size = merge_weighted(patches, patch_size, unm_idx, src_idx, dst_idx)
        state.remap(old_to_new)
        state.size = torch.cat([prefix_size, patch_size], dim=1)
        state.merged = True
        self._keys = None
        return torch.cat([prefix, patches], dim=1)
