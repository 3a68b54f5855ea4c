"""Attention with a per-key additive bias in one Triton kernel, for CUDA.

ToMe's proportional attention is ``softmax(scale * q k^T + log s) v``: every key
j carries a bias, the log of how many patches its token holds. PyTorch's flash
and cuDNN kernels take no bias, and a float ``attn_mask`` sends SDPA to slower
kernels. The fallback in :mod:`evalsuite.patch.runner` carries the bias in an
extra channel per head (``HEAD_PAD``), which makes the heads 72 wide instead of
64: the attention is slower than without bias, and the projections before and
after it grow by the same eighth (docs/performance.md, "Attention with the size
bias").

:func:`attention` here is a flash-attention forward (online softmax, Dao et
al. 2022) that adds the bias to each score tile as it is computed, on heads of
their own width:

* q, k, v are read as they come out of the projection (strided views of one
  ``[B, N, 3, H, D]`` tensor, or three ``[B, N, H, D]`` ones): no copies;
* the bias is read once per tile of keys, as float32;
* the output is written as ``[B, N, H, D]``, so the output projection reads it
  without a transposing copy;
* scores and the running sums are float32; a float32 input multiplies in IEEE
  float32 (no TF32), which is how the CPU tests compare it with the reference.

It runs on CUDA tensors whose head size is a power of two from 16 to 128, once
:func:`_works_on` has accepted the device and dtype, and under
``TRITON_INTERPRET=1`` on CPU tensors. ``EVALSUITE_TRITON=0`` turns it off (as it
does the fused ToMe step).
"""

from __future__ import annotations

import math

import torch

from .. import triton_probe

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - PyTorch's CUDA wheels ship Triton
    triton = None

ENABLED = triton_probe.ENABLED  # per module, so that one kernel can be turned off alone
HEAD_DIMS = (16, 32, 64, 128)  # head sizes the kernel takes (tl.arange needs a power of two)
_INTERPRET = triton_probe.INTERPRET
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Tile shape and launch settings, from a sweep of 64/128 queries x 32/64/128 keys, 4/8 warps and
# 2-4 stages with DINOv2-S heads (6 x 64), fp16: 128 queries a program only pays where there are
# many tokens and many heads, and is slower below (docs/performance.md, "Attention with the size bias").
BLOCK_N, NUM_WARPS, NUM_STAGES = 64, 4, 3


def block_m(batch_heads: int, tokens: int) -> int:
    """Queries per program."""
    return 128 if tokens >= 1024 and batch_heads >= 64 else 64


def supports(like: torch.Tensor, head_dim: int) -> bool:
    """Whether :func:`attention` runs on heads of ``head_dim`` with the dtype and device of ``like``
    (else the caller's fallback)."""
    if triton is None or not ENABLED or head_dim not in HEAD_DIMS or like.dtype not in _DTYPES:
        return False
    if like.is_cuda:
        return _works_on(like.device, like.dtype)
    return _INTERPRET and like.device.type == "cpu"


_WORKS: dict[tuple, bool] = {}


def _works_on(device: torch.device, dtype: torch.dtype) -> bool:
    """The kernel against SDPA given the bias as a mask, on a small input, once per device and
    dtype (:func:`evalsuite.triton_probe.decided`); where it fails, the caller pads its heads."""

    def check() -> str | None:
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = torch.randn(3, 2, 2, 1 + 80, 64, device=device, generator=g).to(dtype).unbind(0)
        bias = torch.randint(1, 5, (2, 1 + 80), device=device, generator=g).float().log()
        got = attention(q, k, v, bias, 0.125).transpose(1, 2).float()
        want = reference(q.float(), k.float(), v.float(), bias, 0.125)
        tolerance = 1e-5 if dtype == torch.float32 else 2e-2
        return None if torch.allclose(got, want, atol=tolerance, rtol=tolerance) else "its result disagreed with SDPA's"

    return triton_probe.decided(_WORKS, device, dtype, check, "the biased attention kernel", "padded heads")


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """What :func:`attention` computes, by SDPA with the bias as a float mask: [B, H, N, D]."""
    mask = bias[:, None, None, :].to(q.dtype)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(scale * q k^T + bias) v`` for q, k, v [B, H, N, D] (any strides with unit channel
    stride) and a per-key ``bias`` [B, N]; returns [B, N, H, D] (contiguous)."""
    batch, heads, tokens, head_dim = q.shape
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise ValueError("attention_kernels.attention: q, k and v need unit stride along the channels")
    # the kernel works in powers of two; it reads this float32 copy (converting the half-precision
    # bias inside the kernel was slower: docs/performance.md, "Attention with the size bias")
    bias = (bias.float() * math.log2(math.e)).contiguous()
    out = torch.empty(batch, tokens, heads, head_dim, device=q.device, dtype=q.dtype)
    rows = block_m(batch * heads, tokens)
    _biased_attention_kernel[(triton.cdiv(tokens, rows), batch * heads)](
        q, k, v, bias, out, tokens, scale * math.log2(math.e),
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], bias.stride(0), *out.stride()[:3],
        HEADS=heads, HEAD_DIM=head_dim, BLOCK_M=rows, BLOCK_N=BLOCK_N, IEEE=q.dtype == torch.float32,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return out


if triton is not None:

    @triton.jit
    def _tile(acc, total, top, qt, kt, vt, scores_bias, qk_scale, IEEE: tl.constexpr):
        """One tile of keys into the running output ``acc``, softmax sum ``total`` and max ``top``
        (base 2); ``scores_bias`` [1, BLOCK_N] is the bias, -inf for keys past the end."""
        if IEEE:
            scores = tl.dot(qt, tl.trans(kt), input_precision="ieee")
        else:
            scores = tl.dot(qt, tl.trans(kt))
        scores = scores * qk_scale + scores_bias
        new_top = tl.maximum(top, tl.max(scores, axis=1))
        p = tl.exp2(scores - new_top[:, None])
        alpha = tl.exp2(top - new_top)
        total = total * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        if IEEE:
            acc = tl.dot(p, vt, acc, input_precision="ieee")
        else:
            acc = tl.dot(p.to(vt.dtype), vt, acc)
        return acc, total, new_top

    @triton.jit
    def _biased_attention_kernel(q, k, v, bias, out, tokens, qk_scale,
                                 sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sb_b, so_b, so_n, so_h,
                                 HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                                 BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
        """BLOCK_M queries of one head of one image against all its keys, BLOCK_N at a time."""
        bh = tl.program_id(1)
        b, h = (bh // HEADS).to(tl.int64), (bh % HEADS).to(tl.int64)
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        d = tl.arange(0, HEAD_DIM)
        qt = tl.load(q + b * sq_b + h * sq_h + rows[:, None] * sq_n + d[None, :], mask=rows[:, None] < tokens,
                     other=0.0)
        keys, values, key_bias = k + b * sk_b + h * sk_h, v + b * sv_b + h * sv_h, bias + b * sb_b
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        total = tl.zeros([BLOCK_M], tl.float32)
        top = tl.full([BLOCK_M], float("-inf"), tl.float32)
        whole = tokens - tokens % BLOCK_N  # tiles without a key past the end: no masks
        for start in range(0, whole, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            kt = tl.load(keys + cols[:, None] * sk_n + d[None, :])
            vt = tl.load(values + cols[:, None] * sv_n + d[None, :])
            acc, total, top = _tile(acc, total, top, qt, kt, vt, tl.load(key_bias + cols)[None, :], qk_scale, IEEE)
        if whole < tokens:
            cols = whole + tl.arange(0, BLOCK_N)
            inside = cols < tokens
            kt = tl.load(keys + cols[:, None] * sk_n + d[None, :], mask=inside[:, None], other=0.0)
            vt = tl.load(values + cols[:, None] * sv_n + d[None, :], mask=inside[:, None], other=0.0)
            tile_bias = tl.load(key_bias + cols, mask=inside, other=float("-inf"))
            acc, total, top = _tile(acc, total, top, qt, kt, vt, tile_bias[None, :], qk_scale, IEEE)
        acc = acc / total[:, None]
        tl.store(out + b * so_b + h * so_h + rows[:, None] * so_n + d[None, :], acc.to(out.dtype.element_ty),
                 mask=rows[:, None] < tokens)
