"""One decoder layer of the Qwen2 family for a decode step, with its elementwise chains fused in Triton.

A decode step of a small model is a chain of small kernels, each a few microseconds however few tokens
the cache holds: the per-token time is their count, not the bytes they move (about 40 kernels a layer:
an RMSNorm alone is eight, the rotary embedding ten). A CUDA graph removes the host from the chain but
not the kernels. :func:`decode_layer` runs transformers' layer with three of those chains as one kernel
each, and everything else (projections, the KV cache write, the attention function the model is
configured with) exactly as the layer does:

- the tail of RMSNorm, ``weight * (x * rsqrt(var + eps)).to(dtype)`` (the variance stays torch's own
  reduction: a reduction in another order would round differently);
- the rotary embedding of queries and keys, ``q * cos + rotate_half(q) * sin``;
- the MLP's ``silu(gate) * up``.

Each kernel rounds where the torch ops round (to the activation dtype after every op, IEEE division,
libdevice's ``exp``/``rsqrt`` as CUDA's ``expf``/``rsqrtf``, no fused multiply-adds), so that on a GPU the
layer is meant to give the same bits as transformers' forward; :func:`works_on` checks that once per
device and dtype on a small layer and otherwise leaves the caller to transformers' layer, after one
warning. On CPU tensors the kernels run only under ``TRITON_INTERPRET=1`` (the CPU tests);
``EVALSUITE_TRITON=0`` turns them off.
"""

from __future__ import annotations

import sys

import torch

from .. import triton_probe

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - PyTorch's CUDA wheels ship Triton
    triton = None

ENABLED = triton_probe.ENABLED
_INTERPRET = triton_probe.INTERPRET
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_EXACT = {"enable_fp_fusion": False}  # no a*b+c contracted into one rounding: torch rounds twice


if triton is not None:
    if _INTERPRET:  # the interpreter runs tl.math in NumPy and knows no libdevice

        @triton.jit
        def _exp(x):
            return tl.exp(x)

        @triton.jit
        def _rsqrt(x):
            return tl.math.rsqrt(x)

    else:  # CUDA's expf/rsqrtf, as torch's kernels call them (tl.exp is a faster approximation)
        from triton.language.extra import libdevice

        @triton.jit
        def _exp(x):
            return libdevice.exp(x)

        @triton.jit
        def _rsqrt(x):
            return libdevice.rsqrt(x)

    @triton.jit
    def _rms_tail_kernel(X, VAR, W, Y, C, eps, BLOCK: tl.constexpr):
        """Row ``r``: ``Y[r] = W * (X[r] * rsqrt(VAR[r] + eps)).to(dtype)``; X, W, Y [R, C], VAR [R] float32."""
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        live = offs < C
        x = tl.load(X + row * C + offs, mask=live, other=0.0).to(tl.float32)
        var = tl.load(VAR + row)
        normed = (x * _rsqrt(var + eps)).to(Y.dtype.element_ty)
        w = tl.load(W + offs, mask=live, other=0.0)
        tl.store(Y + row * C + offs, (w.to(tl.float32) * normed.to(tl.float32)).to(Y.dtype.element_ty), mask=live)

    @triton.jit
    def _rotary_kernel(Q, K, COS, SIN, QO, KO, HQ, HK, D: tl.constexpr):
        """Program ``b * (HQ + HK) + h``: head ``h`` of token ``b`` (a query head if ``h < HQ``, else a key
        head), ``out = x * cos + rotate_half(x) * sin`` with each product rounded to the dtype."""
        pid = tl.program_id(0)
        b = pid // (HQ + HK)
        h = pid % (HQ + HK)
        offs = tl.arange(0, D)
        half = D // 2
        partner = (offs + half) % D
        if h < HQ:
            src = Q + (b * HQ + h) * D
            dst = QO + (b * HQ + h) * D
        else:
            src = K + (b * HK + h - HQ) * D
            dst = KO + (b * HK + h - HQ) * D
        x = tl.load(src + offs).to(tl.float32)
        other = tl.load(src + partner).to(tl.float32)
        rotated = tl.where(offs < half, -other, other)
        c = tl.load(COS + b * D + offs).to(tl.float32)
        s = tl.load(SIN + b * D + offs).to(tl.float32)
        first = (x * c).to(QO.dtype.element_ty).to(tl.float32)
        second = (rotated * s).to(QO.dtype.element_ty).to(tl.float32)
        tl.store(dst + offs, (first + second).to(QO.dtype.element_ty))

    @triton.jit
    def _silu_mul_kernel(G, U, O, N, BLOCK: tl.constexpr):
        """``O = silu(G).to(dtype) * U`` over ``N`` elements, silu as torch's ``x / (1 + exp(-x))``."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = offs < N
        g = tl.load(G + offs, mask=live, other=0.0).to(tl.float32)
        u = tl.load(U + offs, mask=live, other=0.0).to(tl.float32)
        act = tl.math.div_rn(g, 1.0 + _exp(-g)).to(O.dtype.element_ty).to(tl.float32)
        tl.store(O + offs, (act * u).to(O.dtype.element_ty), mask=live)


def rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' ``Qwen2RMSNorm`` (``norm``) on ``x`` [..., C]: torch's variance, the rest one kernel."""
    var = x.float().pow(2).mean(-1)
    out = torch.empty_like(x)
    c = x.shape[-1]
    _rms_tail_kernel[(x.numel() // c,)](x, var, norm.weight, out, c, norm.variance_epsilon,
                                        BLOCK=triton.next_power_of_2(c), **_EXACT)
    return out


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int):
    """Queries ``[B, 1, HQ * D]`` and keys ``[B, 1, HK * D]`` as the projections give them, ``cos``/``sin``
    ``[B, 1, D]`` -> rotated ``[B, HQ, 1, D]``, ``[B, HK, 1, D]`` (one token per sample)."""
    b = q.shape[0]
    hq, hk = q.shape[-1] // head_dim, k.shape[-1] // head_dim
    qo = q.new_empty(b, hq, 1, head_dim)
    ko = k.new_empty(b, hk, 1, head_dim)
    _rotary_kernel[(b * (hq + hk),)](q, k, cos.contiguous(), sin.contiguous(), qo, ko, hq, hk, D=head_dim, **_EXACT)
    return qo, ko


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` as the MLP computes it, ``gate``/``up`` [..., I]."""
    out = torch.empty_like(gate)
    n = gate.numel()
    block = 1024
    _silu_mul_kernel[(triton.cdiv(n, block),)](gate, up, out, n, BLOCK=block, **_EXACT)
    return out


def supports(layer: torch.nn.Module, h: torch.Tensor) -> bool:
    """Whether :func:`decode_layer` runs ``layer`` on the hidden states ``h`` [B, 1, C] (else the caller
    runs transformers' layer): a Qwen2-family decoder layer (SiLU MLP, RMSNorms, no sliding window), one
    token per sample, a head size that is a power of two, and kernels that work on this device."""
    if triton is None or not ENABLED or h.dtype not in _DTYPES or h.dim() != 3 or h.shape[1] != 1:
        return False
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    needed = (attn, mlp, getattr(layer, "input_layernorm", None), getattr(layer, "post_attention_layernorm", None))
    if any(m is None for m in needed) or getattr(attn, "sliding_window", None):
        return False
    if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "layer_idx")):
        return False
    if not _is_silu(getattr(mlp, "act_fn", None)) or not hasattr(layer.input_layernorm, "variance_epsilon"):
        return False
    d = attn.head_dim
    if d < 2 or d & (d - 1) or layer.input_layernorm.weight.dtype != h.dtype:
        return False
    if h.is_cuda:
        return works_on(h.device, h.dtype)
    return _INTERPRET and h.device.type == "cpu"


def _is_silu(act) -> bool:
    """torch's SiLU module, or the one transformers' ``ACT2FN["silu"]`` builds (its own class)."""
    from transformers.activations import ACT2FN

    return isinstance(act, (torch.nn.SiLU, type(ACT2FN["silu"])))


def _attention_function(attn: torch.nn.Module):
    """The attention function ``attn``'s own forward would call (SDPA, eager, ...), from its module."""
    modeling = sys.modules[type(attn).__module__]
    return modeling.ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation,
                                                          modeling.eager_attention_forward)


def decode_layer(layer, h: torch.Tensor, mask, cos: torch.Tensor, sin: torch.Tensor, cache) -> torch.Tensor:
    """``layer``'s forward for one token per sample: ``h`` [B, 1, C] -> [B, 1, C], appending the token's key
    and value to ``cache`` (``cache.update(key, value, layer_idx)``) as the layer does."""
    attn, mlp = layer.self_attn, layer.mlp
    b = h.shape[0]
    x = rms_norm(layer.input_layernorm, h)
    q, k = rotary(attn.q_proj(x), attn.k_proj(x), cos, sin, attn.head_dim)
    v = attn.v_proj(x).view(b, 1, -1, attn.head_dim).transpose(1, 2)
    k, v = cache.update(k, v, attn.layer_idx)
    out, _ = _attention_function(attn)(attn, q, k, v, mask, dropout=0.0, scaling=attn.scaling,
                                       sliding_window=None)
    h = h + attn.o_proj(out.reshape(b, 1, -1).contiguous())
    x = rms_norm(layer.post_attention_layernorm, h)
    return h + mlp.down_proj(silu_mul(mlp.gate_proj(x), mlp.up_proj(x)))


_WORKS: dict[tuple, bool] = {}


def works_on(device: torch.device, dtype: torch.dtype) -> bool:
    """Once per device and dtype: a small Qwen2-VL decoder layer through :func:`decode_layer` gives the
    bits of transformers' forward (:func:`evalsuite.triton_probe.decided`)."""

    def check() -> str | None:
        from transformers import Qwen2VLTextConfig
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLDecoderLayer, Qwen2VLRotaryEmbedding

        from .lm_drop import KVCache, run_layer

        config = Qwen2VLTextConfig(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                                   num_key_value_heads=2, num_hidden_layers=1, vocab_size=64,
                                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "mrope_section": [8, 12, 12]})
        config._attn_implementation = "sdpa"
        torch.manual_seed(0)
        layer = Qwen2VLDecoderLayer(config, 0).to(device, dtype).eval()
        for p in layer.parameters():  # random norms too: ones would hide a wrong weight product
            torch.nn.init.normal_(p, std=0.2)
        g = torch.Generator(device=device).manual_seed(0)
        past = torch.randn(2, 5, 256, device=device, generator=g).to(dtype)
        h = torch.randn(2, 1, 256, device=device, generator=g).to(dtype)
        rope = Qwen2VLRotaryEmbedding(config).to(device)
        pos = torch.arange(6, device=device).view(1, 1, 6).expand(3, 2, 6)
        cos, sin = rope(past, pos)
        mask = torch.ones(2, 1, 1, 6, dtype=torch.bool, device=device)
        outs = []
        for fn in (run_layer, decode_layer):
            cache = KVCache(1)
            with torch.no_grad():
                run_layer(layer, past, None, cos[:, :5], sin[:, :5], cache)
                outs.append(fn(layer, h, mask, cos[:, 5:], sin[:, 5:], cache))
        if not torch.equal(outs[0], outs[1]):
            return f"differs from transformers' layer by {(outs[0].float() - outs[1].float()).abs().max():.3g}"
        return None

    return triton_probe.decided(_WORKS, device, dtype, check, "the fused decode layer", "transformers' layer")
