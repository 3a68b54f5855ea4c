"""ToMe's default split is the published one: the whole sequence alternates into sets A and B.

The published code (facebookresearch/ToMe, ``tome/merge.py``) matches on the full
sequence: ``a, b = metric[..., ::2, :], metric[..., 1::2, :]``, the class token's
row of scores set to -inf, the unmerged A tokens sorted back into order. With one
class token that puts the class token and the odd patches in A, the even patches
in B. :func:`published_merge` below is that algorithm, written here from the paper's
code, as the reference the default must equal.
"""

import math

import pytest
import torch

from evalsuite.methods import spec_of
from evalsuite.methods.tome.merge import merge_step, split_offset


def published_merge(metric: torch.Tensor, x: torch.Tensor, size: torch.Tensor, r: int):
    """Bipartite soft matching with a class token at position 0 and the size-weighted merge, as
    published: ``metric`` [B, N, D] (the keys averaged over heads), ``x`` [B, N, C], ``size``
    [B, N, 1] -> ``(x, size)`` [B, N - r, ...] ordered [unmerged A by position, B]."""
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[..., ::2, :], metric[..., 1::2, :]
    scores = a @ b.transpose(-1, -2)
    scores[..., 0, :] = -math.inf  # the class token is never merged
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx, src_idx = edge_idx[..., r:, :], edge_idx[..., :r, :]
    dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
    unm_idx = unm_idx.sort(dim=1)[0]  # the class token first

    def merge(t):
        src, dst = t[..., ::2, :], t[..., 1::2, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce="sum")
        return torch.cat([unm, dst], dim=1)

    merged_size = merge(size)
    return merge(x * size) / merged_size, merged_size


def in_published_order(out: torch.Tensor, unm_idx: torch.Tensor, num_prefix: int = 1) -> torch.Tensor:
    """evalsuite's ``[prefix, unmerged A by similarity, B]`` reordered as ``[prefix, unmerged A by
    position, B]`` (attention does not care about the order; the published code sorts)."""
    num_unm = unm_idx.shape[1]
    order = unm_idx.argsort(dim=1) + num_prefix
    unm = out.gather(1, order[..., None].expand(-1, -1, out.shape[-1]))
    return torch.cat([out[:, :num_prefix], unm, out[:, num_prefix + num_unm:]], dim=1)


# cls + 4 patches; 2-D keys, one head. p1, p2, p3 nearly parallel, p0 apart; p2 is closest to p1.
KEYS = torch.tensor([[[[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.05, 1.0], [-0.02, 1.0]]]])
X = torch.tensor([[[7.0], [10.0], [20.0], [30.0], [40.0]]])


def test_fixed_small_case_merges_as_published():
    """r = 2. Published (sequence) split: A = {cls, p1, p3}, B = {p0, p2}; p1 and p3 both join p2.
    Patch split: A = {p0, p2}, B = {p1, p3}; p0 and p2 both join p1. Different tokens result."""
    size = torch.ones(1, 5, 1)
    out, out_size, *_ = merge_step(KEYS, X, size, num_prefix=1, r=2, a_offset=split_offset("sequence", 1))
    assert out.flatten().tolist() == pytest.approx([7.0, 10.0, 30.0])  # cls, p0, (p1 + p2 + p3) / 3
    assert out_size.flatten().tolist() == [1.0, 1.0, 3.0]
    published, published_size = published_merge(KEYS.mean(dim=1), X, size, 2)
    assert published.flatten().tolist() == pytest.approx([7.0, 10.0, 30.0])
    assert published_size.flatten().tolist() == [1.0, 1.0, 3.0]

    out, out_size, *_ = merge_step(KEYS, X, size, num_prefix=1, r=2, a_offset=split_offset("patches", 1))
    assert out.flatten().tolist() == pytest.approx([7.0, 20.0, 40.0])  # cls, (p0 + p1 + p2) / 3, p3
    assert out_size.flatten().tolist() == [1.0, 3.0, 1.0]


@pytest.mark.parametrize("patches,r", [(40, 7), (41, 20), (196, 48), (576, 100)])
def test_default_split_equals_the_published_merge(patches, r):
    """Same keys, tokens and sizes (sizes from earlier merges): the default merge equals the
    published one with the class token in the sequence; the patch split does not."""
    g = torch.Generator().manual_seed(patches)
    keys = torch.randn(2, 3, 1 + patches, 8, generator=g)
    x = torch.randn(2, 1 + patches, 16, generator=g)
    size = torch.randint(1, 4, (2, 1 + patches, 1), generator=g).float()
    want_x, want_size = published_merge(keys.mean(dim=1), x, size, r)
    out, out_size, unm_idx, _, _ = merge_step(keys, x, size, num_prefix=1, r=r, a_offset=split_offset("sequence", 1))
    torch.testing.assert_close(in_published_order(out, unm_idx), want_x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(in_published_order(out_size, unm_idx), want_size, atol=0, rtol=0)
    other, _, other_unm, _, _ = merge_step(keys, x, size, num_prefix=1, r=r, a_offset=split_offset("patches", 1))
    assert (in_published_order(other, other_unm) - want_x).abs().max() > 0.1


def test_the_published_split_is_the_default_and_keeps_the_case_ids():
    spec = spec_of("tome", {"merge_factor": 0.5})
    assert spec.split == "sequence" and spec.id_part == "tome_f0.5"
    assert spec_of("tome", {"r": 8, "split": "patches"}).id_part == "tome_r8_patchsplit"
    with pytest.raises(ValueError, match="split: 'pairs' is not one of sequence, patches"):
        spec_of("tome", {"r": 8, "split": "pairs"})


def test_hooks_follow_the_split_on_a_vit_with_a_class_token():
    """End to end on a timm ViT with a class token, one block merging every A token (r = P / 2):
    each resulting token holds exactly one B patch. B is the even patches by default (the class
    token takes the first A place), the odd ones with the patch split."""
    from .conftest import tiny_timm

    adapter = tiny_timm(depth=1)
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 64, 64)
    for split, b_parity in (("sequence", 0), ("patches", 1)):
        comp = spec_of("tome", {"r": adapter.num_patches // 2, "split": split}).build(adapter.num_layers)
        for plan in adapter.compressed(pixels, comp).plans:
            groups = torch.as_tensor(plan.patch_to_token)
            patches = torch.arange(len(groups))
            assert plan.num_tokens == adapter.num_patches // 2
            for token in range(plan.num_tokens):
                members = patches[groups == token]
                assert (members % 2 == b_parity).sum() == 1, (split, members.tolist())
