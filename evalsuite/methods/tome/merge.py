"""ToMe's merge (Bolya et al., arXiv 2210.09461) in torch alone, written from the paper: the reference.

Bipartite soft matching of the patch tokens on their attention keys, and the
size-weighted merge; :mod:`evalsuite.methods.tome.kernels` computes the same step
in fused Triton kernels and is checked against this module.

Which patch tokens form set A (matched) and set B (partners) is ``a_offset``:
A holds the patches ``a_offset, a_offset + 2, ...``, B the others. The published
code splits the *whole* sequence, prefix tokens included, into even (A) and odd
(B) positions and never matches the class token; on patch ``i`` at sequence
position ``num_prefix + i`` that is ``a_offset = num_prefix % 2``
(:func:`split_offset`), with the prefix tokens left out of both sets (a prefix
token in A would score -inf and stay unmerged; one in B is never picked).
``a_offset = 0`` is the split of the patch tokens alone.
"""

from __future__ import annotations

import torch



SPLITS = ("sequence", "patches")


def split_offset(split: str, num_prefix: int) -> int:
    """``a_offset`` of a split: ``"sequence"`` (the published one: even positions of the whole
    sequence form A) or ``"patches"`` (even positions among the patch tokens).

    >>> split_offset("sequence", 1), split_offset("sequence", 2), split_offset("patches", 1)
    (1, 0, 0)
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    return num_prefix % 2 if split == "sequence" else 0


def bipartite_soft_matching(
    metric: torch.Tensor, r: int, a_offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Match ``r`` tokens of set A (patches ``a_offset::2``) onto set B (the others).

    ``metric`` is [B, P, C] (patch tokens only). Returns ``(unm_idx, src_idx,
    dst_idx)``: indices into A of the unmerged [B, Na - r] and the merged [B, r]
    tokens, and the B-token each merged one joins [B, r]. The output order is
    ``[unmerged A, B]``, unmerged A tokens by decreasing similarity: attention
    does not care about token order, so no re-sort is spent on it.
    """
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, a_offset::2], metric[:, 1 - a_offset::2]
    scores = a @ b.transpose(-1, -2)  # [B, Na, Nb]
    node_max, node_idx = scores.max(dim=-1)  # best partner in B for each A token
    edge_idx = node_max.argsort(dim=-1, descending=True)
    src_idx, unm_idx = edge_idx[:, :r], edge_idx[:, r:]
    return unm_idx, src_idx, node_idx.gather(1, src_idx)


def matching_old_to_new(num_tokens: int, unm_idx: torch.Tensor, src_idx: torch.Tensor,
                        dst_idx: torch.Tensor, a_offset: int = 0) -> torch.Tensor:
    """[B, P] old patch-token position -> position in ``[unmerged A, B]`` after the merge.

    Bookkeeping for the token plan only; evaluated lazily, off the forward path.
    """
    batch, num_unm = unm_idx.shape
    num_b = (num_tokens + a_offset) // 2
    device = unm_idx.device
    new_a = torch.empty(batch, num_unm + src_idx.shape[1], dtype=torch.long, device=device)
    new_a.scatter_(1, unm_idx, torch.arange(num_unm, device=device).expand(batch, -1))
    new_a.scatter_(1, src_idx, num_unm + dst_idx)
    old_to_new = torch.empty(batch, num_tokens, dtype=torch.long, device=device)
    old_to_new[:, a_offset::2] = new_a
    old_to_new[:, 1 - a_offset::2] = num_unm + torch.arange(num_b, device=device)
    return old_to_new


def merge_weighted(
    x: torch.Tensor, size: torch.Tensor, num_prefix: int,
    unm_idx: torch.Tensor, src_idx: torch.Tensor, dst_idx: torch.Tensor, a_offset: int = 0,
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
    prefix_pos, a_pos, b_pos = _positions(p, x.shape[1] - p, x.device, a_offset)
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
               r: int, a_offset: int = 0) -> tuple[torch.Tensor, ...]:
    """One block's ToMe: match the patch tokens on their keys averaged over heads (``keys``
    [B, H, N, D]), merge ``x`` [B, N, C] and ``size`` [B, N, 1]; set A is the patches
    ``a_offset::2``. Returns ``(x, size, unm_idx, src_idx, dst_idx)``."""
    unm_idx, src_idx, dst_idx = bipartite_soft_matching(keys[:, :, num_prefix:].mean(dim=1), r, a_offset)
    x, size = merge_weighted(x, size, num_prefix, unm_idx, src_idx, dst_idx, a_offset)
    return x, size, unm_idx, src_idx, dst_idx


_POSITIONS: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _positions(p: int, patches: int, device: torch.device,
               a_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequence positions of the prefix tokens, of set A (``p + a_offset + 2i``) and of set B
    (``p + 1 - a_offset + 2j``), cached per shape: at batch 1 every kernel launch saved per block counts."""
    key = (p, patches, device, a_offset)
    positions = _POSITIONS.get(key)
    if positions is None:
        index = torch.arange(p + patches, device=device)
        positions = index[:p], index[p + a_offset::2], index[p + 1 - a_offset::2]
        if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):  # graph-pool memory
            _POSITIONS[key] = positions
    return positions
