"""ToMe's merge step in four Triton kernels and one sort, for CUDA.

:func:`evalsuite.methods.tome.merge.merge_step` is the reference: about twenty torch
kernels per block, several of them full passes over large tensors (the gathers with
expanded int64 indices, averaging the keys over heads and normalising them, and the
[B, Na, Nb] score matrix written once and read back for its row max). At small
batches the same twenty kernels cost their launches. :func:`merge_step` here
computes the same thing (same outputs, same order) in fewer passes
(``python -m benchmarks.kernels merge-step``; figures: docs/performance.md):

1. ``_metric_kernel``: the keys averaged over heads and L2-normalised, one read of the keys;
2. ``_best_partner_kernel``: for every A token (patch ``a_offset + 2i``) its most similar B
   token (the other parity), from score tiles kept in registers (a running max and argmax);
3. ``argsort`` (torch) of the best scores, descending: the first ``r`` A tokens merge;
4. ``_keep_rows_kernel``: every surviving row copied once, its source row worked out from
   the sort (``[prefix, unmerged A by decreasing similarity, B]``, as the reference);
5. ``_fold_kernel``: every partner that merged tokens picked becomes the size-weighted mean of
   itself and them, ``(s_d x_d + sum_i s_i x_i) / S``, with ``S`` its merged size. Several A
   tokens may pick one B token: each merged token finds its partner's group among the ``r``
   merged tokens, and the group's first member computes the sum, in float32, as one product
   of the group's weights with their rows, rounded once. No atomics: their order varies from
   run to run, and in half precision merged tokens then differed in their last bits, which
   later blocks' matchings can follow where two partners are nearly tied.

It runs on CUDA tensors when Triton is importable (it ships with PyTorch's CUDA
wheels), and under ``TRITON_INTERPRET=1`` on CPU tensors, which is how the CPU
tests compare it with the reference. ``EVALSUITE_TRITON=0`` turns it off.
Scores accumulate in float32 (IEEE for float32 inputs, no TF32); where two
partners tie to the last bit, either may be chosen, as with torch's ``max``.
"""

from __future__ import annotations

import torch

from ... import triton_probe
from . import merge as reference

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - PyTorch's CUDA wheels ship Triton
    triton = None

ENABLED = triton_probe.ENABLED  # per module, so that one kernel can be turned off alone
MAX_HEAD_DIM = 256  # widest metric (key head size) kept in registers
_INTERPRET = triton_probe.INTERPRET
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def supports(keys: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether :func:`merge_step` runs on these inputs (else use the torch reference): on CUDA once
    :func:`_works_on` has accepted the device and dtype, on CPU under Triton's interpreter."""
    if triton is None or not ENABLED or keys.shape[-1] > MAX_HEAD_DIM:
        return False
    if x.is_cuda:
        return _works_on(x.device, x.dtype)
    return _INTERPRET and x.device.type == "cpu" and x.dtype in _DTYPES


_WORKS: dict[tuple, bool] = {}


def _works_on(device: torch.device, dtype: torch.dtype) -> bool:
    """Decided once per device and dtype (ToMe asks in every block): the fused step is built and
    run on a small input (:func:`evalsuite.triton_probe.decided`). If Triton cannot build it here,
    or its merge is not the size-weighted mean of its own matching (float32: not the reference's
    result), ToMe uses the torch reference."""
    if (device, dtype) not in _WORKS and dtype not in _DTYPES:
        _WORKS[(device, dtype)] = False

    def check() -> str | None:
        g = torch.Generator(device=device).manual_seed(0)
        keys = torch.randn(2, 2, 1 + 40, 16, device=device, generator=g).to(dtype)
        x = torch.randn(2, 1 + 40, 24, device=device, generator=g).to(dtype)
        size = torch.randint(1, 4, (2, 1 + 40, 1), device=device, generator=g).to(dtype)
        works = True
        for a_offset in (0, 1):  # both splits (see the reference's module docstring)
            out, out_size, unm, src, dst = got = merge_step(keys, x, size, num_prefix=1, r=7, a_offset=a_offset)
            want_x, want_size = reference.merge_weighted(x.float(), size.float(), 1, unm, src, dst, a_offset)
            works = works and torch.equal(out_size.float(), want_size) and torch.allclose(
                out.float(), want_x, atol=0.05, rtol=0.02)
            if dtype == torch.float32:
                want = reference.merge_step(keys, x, size, num_prefix=1, r=7, a_offset=a_offset)
                works = works and all(torch.allclose(a, b, atol=1e-5, rtol=1e-5) for a, b in zip(got, want))
        return None if works else "its result disagreed with the torch reference"

    return triton_probe.decided(_WORKS, device, dtype, check, "the fused ToMe step", "the torch reference")


def merge_step(keys: torch.Tensor, x: torch.Tensor, size: torch.Tensor, *, num_prefix: int,
               r: int, a_offset: int = 0) -> tuple[torch.Tensor, ...]:
    """:func:`evalsuite.methods.tome.merge.merge_step` in fused kernels: ``keys`` [B, H, N, D], ``x``
    [B, N, C], ``size`` [B, N, 1] -> ``(x [B, N - r, C], size [B, N - r, 1], unm_idx, src_idx,
    dst_idx)``, set A being the patches ``a_offset::2`` as in the reference. Needs
    ``0 < r <= (N - num_prefix) // 2``."""
    batch, tokens, channels = x.shape
    patches = tokens - num_prefix
    metric = torch.empty(batch, patches, keys.shape[-1], device=x.device, dtype=keys.dtype)
    _metric_kernel[(triton.cdiv(patches, 32), batch)](
        keys, metric, patches, keys.shape[-1], num_prefix, *keys.stride(), *metric.stride(),
        HEADS=keys.shape[1], BLOCK_T=32, BLOCK_D=triton.next_power_of_2(keys.shape[-1]))
    best, node_idx = best_partner(metric, a_offset)
    edge_idx = best.argsort(dim=-1, descending=True)
    num_unm = (patches + 1 - a_offset) // 2 - r
    out = torch.empty(batch, tokens - r, channels, device=x.device, dtype=x.dtype)
    out_size = torch.empty(batch, tokens - r, 1, device=x.device, dtype=size.dtype)
    block_c = min(triton.next_power_of_2(channels), 1024)
    _keep_rows_kernel[(triton.cdiv(tokens - r, 8), batch)](
        x, size, edge_idx, out, out_size, tokens - r, channels, num_prefix, num_unm, r, a_offset,
        *x.stride(), size.stride(0), size.stride(1), edge_idx.stride(0), *out.stride(),
        out_size.stride(0), out_size.stride(1),
        BLOCK_R=8, BLOCK_C=block_c)
    _fold_kernel[(triton.cdiv(r, 16), batch)](
        x, size, edge_idx, node_idx, out, out_size, channels, num_prefix, num_unm, r, a_offset,
        *x.stride(), size.stride(0), size.stride(1), edge_idx.stride(0), node_idx.stride(0),
        *out.stride(), out_size.stride(0), out_size.stride(1), BLOCK_K=16, BLOCK_J=64,
        BLOCK_C=max(16, min(triton.next_power_of_2(channels), 64)), IEEE=x.dtype == torch.float32)
    src_idx, unm_idx = edge_idx[:, :r], edge_idx[:, r:]
    return out, out_size, unm_idx, src_idx, node_idx.gather(1, src_idx)


def best_partner(metric: torch.Tensor, a_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """For unit-norm ``metric`` [B, P, C]: ``(node_max float32, node_idx)`` [B, Na], the largest
    ``a_i . b_j`` over B tokens ``b_j = metric[:, 2j + 1 - a_offset]`` of every A token
    ``a_i = metric[:, 2i + a_offset]``, and its ``j``."""
    batch, patches, channels = metric.shape
    num_a, num_b = (patches + 1 - a_offset) // 2, (patches + a_offset) // 2
    node_max = torch.empty(batch, num_a, device=metric.device, dtype=torch.float32)
    node_idx = torch.empty(batch, num_a, device=metric.device, dtype=torch.int64)
    block_c = max(16, triton.next_power_of_2(channels))
    block_m = 64 if block_c <= 128 else 32
    _best_partner_kernel[(triton.cdiv(num_a, block_m), batch)](
        metric, node_max, node_idx, num_a, num_b, channels, a_offset, *metric.stride(),
        BLOCK_M=block_m, BLOCK_N=64, BLOCK_C=block_c, IEEE=metric.dtype == torch.float32)
    return node_max, node_idx


if triton is not None:

    @triton.jit
    def _metric_kernel(keys, metric, patches, head_dim, num_prefix,
                       sk_b, sk_h, sk_n, sk_d, sm_b, sm_n, sm_d,
                       HEADS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        """metric[b, t] = mean_h keys[b, h, prefix + t] / its norm, for BLOCK_T patch tokens."""
        b = tl.program_id(1).to(tl.int64)
        t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        d = tl.arange(0, BLOCK_D)
        mask = (t[:, None] < patches) & (d[None, :] < head_dim)
        where = keys + b * sk_b + (num_prefix + t)[:, None] * sk_n + d[None, :] * sk_d
        acc = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
        for h in tl.static_range(HEADS):
            acc += tl.load(where + h * sk_h, mask=mask, other=0.0).to(tl.float32)
        acc = acc / HEADS
        acc = acc / tl.sqrt(tl.sum(acc * acc, axis=1))[:, None]
        tl.store(metric + b * sm_b + t[:, None] * sm_n + d[None, :] * sm_d,
                 acc.to(metric.dtype.element_ty), mask=mask)

    @triton.jit
    def _best_partner_kernel(metric, node_max, node_idx, num_a, num_b, channels, a_off,
                             stride_b, stride_n, stride_c,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                             IEEE: tl.constexpr):
        """BLOCK_M A tokens of one image against all B tokens, BLOCK_N at a time."""
        b = tl.program_id(1).to(tl.int64)
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        image = metric + b * stride_b
        ch = tl.arange(0, BLOCK_C)
        ch_ok = ch[None, :] < channels
        a = tl.load(image + (2 * rows + a_off)[:, None] * stride_n + ch[None, :] * stride_c,
                    mask=(rows[:, None] < num_a) & ch_ok, other=0.0)
        best = tl.full([BLOCK_M], float("-inf"), tl.float32)
        best_j = tl.zeros([BLOCK_M], tl.int32)
        for start in range(0, num_b, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            other = tl.load(image + (2 * cols + 1 - a_off)[:, None] * stride_n + ch[None, :] * stride_c,
                            mask=(cols[:, None] < num_b) & ch_ok, other=0.0)
            if IEEE:
                scores = tl.dot(a, tl.trans(other), input_precision="ieee")
            else:
                scores = tl.dot(a, tl.trans(other))
            scores = tl.where(cols[None, :] < num_b, scores, float("-inf"))
            tile_best = tl.max(scores, axis=1)
            tile_j = tl.argmax(scores, axis=1).to(tl.int32) + start
            better = tile_best > best  # strict: of equal maxima the first tile's stays
            best = tl.where(better, tile_best, best)
            best_j = tl.where(better, tile_j, best_j)
        out = b * num_a + rows
        tl.store(node_max + out, best, mask=rows < num_a)
        tl.store(node_idx + out, best_j.to(tl.int64), mask=rows < num_a)

    @triton.jit
    def _keep_rows_kernel(x, size, edge_idx, out, out_size, num_out, channels, num_prefix, num_unm, r, a_off,
                          sx_b, sx_n, sx_c, ss_b, ss_n, se_b, so_b, so_n, so_c, sos_b, sos_n,
                          BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        """out rows [prefix, A tokens edge_idx[r:], B tokens] copied from x (and their sizes)."""
        b = tl.program_id(1).to(tl.int64)
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        valid = rows < num_out
        unmerged = (rows >= num_prefix) & (rows < num_prefix + num_unm)
        a = tl.load(edge_idx + b * se_b + r + rows - num_prefix, mask=valid & unmerged, other=0)
        src = tl.where(rows < num_prefix, rows,
                       tl.where(unmerged, num_prefix + a_off + 2 * a,
                                2 * rows - num_prefix - 2 * num_unm + 1 - a_off))
        for c0 in range(0, channels, BLOCK_C):
            ch = c0 + tl.arange(0, BLOCK_C)
            mask = valid[:, None] & (ch[None, :] < channels)
            values = tl.load(x + b * sx_b + src[:, None] * sx_n + ch[None, :] * sx_c, mask=mask)
            tl.store(out + b * so_b + rows[:, None] * so_n + ch[None, :] * so_c, values, mask=mask)
        tl.store(out_size + b * sos_b + rows * sos_n, tl.load(size + b * ss_b + src * ss_n, mask=valid),
                 mask=valid)

    @triton.jit
    def _merged_block(edge_idx, node_idx, size, b, j0, r, num_prefix, a_off, se_b, sn_b, ss_b, ss_n,
                      BLOCK_J: tl.constexpr):
        """Merged tokens j0 .. j0 + BLOCK_J of image ``b``: ``(j, source row, partner, size as float32)``;
        past ``r`` the partner is -1 and the size 0."""
        j = j0 + tl.arange(0, BLOCK_J)
        a = tl.load(edge_idx + b * se_b + j, mask=j < r, other=0)
        src = num_prefix + a_off + 2 * a
        partner = tl.load(node_idx + b * sn_b + a, mask=j < r, other=-1)
        return j, src, partner, tl.load(size + b * ss_b + src * ss_n, mask=j < r, other=0.0).to(tl.float32)

    @triton.jit
    def _fold_kernel(x, size, edge_idx, node_idx, out, out_size, channels, num_prefix, num_unm, r, a_off,
                     sx_b, sx_n, sx_c, ss_b, ss_n, se_b, sn_b, so_b, so_n, so_c, sos_b, sos_n,
                     BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr, IEEE: tl.constexpr):
        """For BLOCK_K merged tokens ``k``: their partner's row becomes the size-weighted mean of the
        partner and every merged token that picked it, ``(s_d x_d + sum_j s_j x_j) / S``, and its size
        ``S``. The group is found among all r merged tokens, BLOCK_J at a time, and its sum is one
        product of the group's weights with their rows, in float32; the group's first merged token
        writes it. No atomics: the same sums, in the same order, every run."""
        b = tl.program_id(1).to(tl.int64)
        k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
        ok = k < r
        a = tl.load(edge_idx + b * se_b + k, mask=ok, other=0)
        d = tl.load(node_idx + b * sn_b + a, mask=ok, other=-2)  # never a partner (-1 pads the j side)
        partner, row = num_prefix + 1 - a_off + 2 * d, num_prefix + num_unm + d
        own = tl.load(size + b * ss_b + partner * ss_n, mask=ok, other=1.0).to(tl.float32)
        total = own
        first = tl.full([BLOCK_K], 2147483647, tl.int32)
        for j0 in range(0, r, BLOCK_J):
            j, _, dj, sj = _merged_block(edge_idx, node_idx, size, b, j0, r, num_prefix, a_off, se_b, sn_b, ss_b,
                                         ss_n, BLOCK_J)
            same = d[:, None] == dj[None, :]
            total += tl.sum(tl.where(same, sj[None, :], 0.0), axis=1)
            first = tl.minimum(first, tl.min(tl.where(same, j[None, :], 2147483647), axis=1))
        lead = ok & (first == k)
        tl.store(out_size + b * sos_b + row * sos_n, total.to(out_size.dtype.element_ty), mask=lead)
        for c0 in range(0, channels, BLOCK_C):
            ch = c0 + tl.arange(0, BLOCK_C)
            ch_ok = ch[None, :] < channels
            xd = tl.load(x + b * sx_b + partner[:, None] * sx_n + ch[None, :] * sx_c, mask=lead[:, None] & ch_ok,
                         other=0.0)
            acc = xd.to(tl.float32) * own[:, None]
            for j0 in range(0, r, BLOCK_J):
                _, src, dj, sj = _merged_block(edge_idx, node_idx, size, b, j0, r, num_prefix, a_off, se_b, sn_b,
                                               ss_b, ss_n, BLOCK_J)
                member = lead[:, None] & (d[:, None] == dj[None, :])
                weights = tl.where(member, sj[None, :], 0.0)
                needed = tl.max(member.to(tl.int32), axis=0) > 0  # rows of some group here: the rest stay unread
                xs = tl.load(x + b * sx_b + src[:, None] * sx_n + ch[None, :] * sx_c,
                             mask=needed[:, None] & ch_ok, other=0.0).to(tl.float32)
                if IEEE:
                    acc += tl.dot(weights, xs, input_precision="ieee")
                else:  # TF32 holds float16 and bfloat16 values exactly, and sizes up to 2048
                    acc += tl.dot(weights, xs)
            tl.store(out + b * so_b + row[:, None] * so_n + ch[None, :] * so_c,
                     (acc / total[:, None]).to(out.dtype.element_ty), mask=lead[:, None] & ch_ok)
