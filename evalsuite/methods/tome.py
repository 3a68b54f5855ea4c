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
``proportional_attention = false`` (case id suffix ``_nopa``) turns the size
bias off: a little cheaper on GPU, where the bias needs evalsuite's own attention
kernel (:mod:`evalsuite.patch.attention_kernels`, slower than PyTorch's flash
kernel without bias) or heads one channel wider (``HEAD_PAD`` in
:mod:`evalsuite.patch.runner`); it costs some fidelity.

:func:`merge_step` below is the reference, in torch. On CUDA, ToMe runs the same
step as four Triton kernels and a sort (:mod:`evalsuite.methods.tome_kernels`,
checked against this one per device; ``EVALSUITE_TRITON=0`` turns it off).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import tome_kernels
from .base import AttentionRequest, Compressor, fmt
from .graphs import replay_or_run
from .state import TokenState


def bipartite_soft_matching(
    metric: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Match ``r`` tokens of set A (even positions) onto set B (odd positions).

    ``metric`` is [B, P, C] (patch tokens only). Returns ``(unm_idx, src_idx,
    dst_idx)``: indices into A of the unmerged [B, Na - r] and the merged [B, r]
    tokens, and the B-token each merged one joins [B, r]. The output order is
    ``[unmerged A, B]``, unmerged A tokens by decreasing similarity: attention
    does not care about token order, so no re-sort is spent on it.
    """
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)  # [B, Na, Nb]
    node_max, node_idx = scores.max(dim=-1)  # best partner in B for each A token
    edge_idx = node_max.argsort(dim=-1, descending=True)
    src_idx, unm_idx = edge_idx[:, :r], edge_idx[:, r:]
    return unm_idx, src_idx, node_idx.gather(1, src_idx)


def matching_old_to_new(num_tokens: int, unm_idx: torch.Tensor, src_idx: torch.Tensor,
                        dst_idx: torch.Tensor) -> torch.Tensor:
    """[B, P] old patch-token position -> position in ``[unmerged A, B]`` after the merge.

    Bookkeeping for the token plan only; evaluated lazily, off the forward path.
    """
    batch, num_unm = unm_idx.shape
    num_b = num_tokens // 2
    device = unm_idx.device
    new_a = torch.empty(batch, num_unm + src_idx.shape[1], dtype=torch.long, device=device)
    new_a.scatter_(1, unm_idx, torch.arange(num_unm, device=device).expand(batch, -1))
    new_a.scatter_(1, src_idx, num_unm + dst_idx)
    old_to_new = torch.empty(batch, num_tokens, dtype=torch.long, device=device)
    old_to_new[:, ::2] = new_a
    old_to_new[:, 1::2] = num_unm + torch.arange(num_b, device=device)
    return old_to_new


def merge_weighted(
    x: torch.Tensor, size: torch.Tensor, num_prefix: int,
    unm_idx: torch.Tensor, src_idx: torch.Tensor, dst_idx: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted merge: ``x`` [B, N, C] and ``size`` [B, N, 1], prefix tokens kept in front.

    Returns tokens [B, N - r, C] and sizes [B, N - r, 1] ordered ``[prefix,
    unmerged A, B]``. One gather copies every surviving token; the ``r`` merged
    ones are then folded into their partners in place. With ``S = s_d + sum s_i``
    the partner's new value ``(s_d x_d + sum s_i x_i) / S`` is written as
    ``x_d + sum s_i (x_i - x_d) / S``, so the arithmetic touches ``r`` rows, not
    the whole sequence (at batch 64 the merge was bound by full-size copies).
    """
    p, channels = num_prefix, x.shape[-1]
    batch, num_unm = unm_idx.shape
    prefix_pos, a_pos, b_pos = _positions(p, x.shape[1] - p, x.device)
    a_pos = a_pos.expand(batch, -1)
    keep = torch.cat([prefix_pos.expand(batch, -1), a_pos.gather(1, unm_idx), b_pos.expand(batch, -1)], dim=1)
    out = x.gather(1, keep[..., None].expand(-1, -1, channels))
    out_size = size.gather(1, keep[..., None])
    src_pos = a_pos.gather(1, src_idx)[..., None]
    dst_pos = (dst_idx + (p + num_unm))[..., None]  # partner rows in ``out``
    src_size = size.gather(1, src_pos)
    out_size.scatter_add_(1, dst_pos, src_size)
    dst_rows = dst_pos.expand(-1, -1, channels)
    partner = out.gather(1, dst_rows)
    weight = src_size / out_size.gather(1, dst_pos)
    out.scatter_add_(1, dst_rows, (x.gather(1, src_pos.expand(-1, -1, channels)) - partner) * weight)
    return out, out_size


def merge_step(keys: torch.Tensor, x: torch.Tensor, size: torch.Tensor, *, num_prefix: int,
               r: int) -> tuple[torch.Tensor, ...]:
    """One block's ToMe: match the patch tokens on their keys averaged over heads (``keys``
    [B, H, N, D]), merge ``x`` [B, N, C] and ``size`` [B, N, 1]. Returns ``(x, size, unm_idx,
    src_idx, dst_idx)``."""
    unm_idx, src_idx, dst_idx = bipartite_soft_matching(keys[:, :, num_prefix:].mean(dim=1), r)
    x, size = merge_weighted(x, size, num_prefix, unm_idx, src_idx, dst_idx)
    return x, size, unm_idx, src_idx, dst_idx


_POSITIONS: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _positions(p: int, patches: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequence positions of the prefix tokens, of set A (``p + 2i``) and of set B (``p + 2j + 1``),
    cached per shape: at batch 1 every kernel launch saved per block counts."""
    key = (p, patches, device)
    positions = _POSITIONS.get(key)
    if positions is None:
        index = torch.arange(p + patches, device=device)
        positions = index[:p], index[p::2], index[p + 1::2]
        if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):  # graph-pool memory
            _POSITIONS[key] = positions
    return positions


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
        base = f"tome_r{self.params['r']}" if "r" in self.params else f"tome_f{fmt(float(self.params['merge_factor']))}"
        return base if self.proportional_attention else base + "_nopa"

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
        patches = state.num_patch_tokens
        # small batches replay the step from a CUDA graph (launch-bound); the index tensors are the
        # graph's buffers, read by the token plan at the end of this forward. On CUDA: fused kernels.
        step = tome_kernels.merge_step if tome_kernels.supports(self._keys, x) else merge_step
        x, state.size, unm_idx, src_idx, dst_idx = replay_or_run(
            step, (self._keys, x, state.size), num_prefix=state.num_prefix, r=r)
        state.remap(lambda: matching_old_to_new(patches, unm_idx, src_idx, dst_idx))
        state.merged = True
        self._keys = None
        return x
