"""The biased attention kernel (evalsuite.patch.attention_kernels) against SDPA with the bias as a mask.

On CPU the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``, read
when Triton compiles the module, hence a subprocess); on a GPU it runs compiled,
marked ``gpu``. Whole forwards check the three ways the size bias can run: an
``attn_mask``, padded heads, and this kernel.
"""

import pytest
import torch

from evalsuite.methods import build
from evalsuite.patch import attention_kernels
from evalsuite.patch.runner import CompressedForward

from .conftest import FAMILIES, tome_merging_once
from .interpreter import interpreted, needs_interpreter

triton = pytest.importorskip("triton")

CASES = [  # (batch, heads, tokens, head_dim)
    (2, 3, 1 + 40, 16),  # one tile, keys past the end masked
    (1, 2, 64, 32),  # whole tiles only
    (2, 6, 1 + 129, 64),  # whole tiles and a tail of one key
    (1, 1, 7, 64),  # fewer tokens than a tile
]


def inputs(case, device, dtype, seed=0):
    """q, k, v [B, H, N, D] as strided views of one qkv output (as the projection hands them over),
    and a log-size bias [B, N]."""
    batch, heads, tokens, head_dim = case
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(batch, tokens, 3, heads, head_dim, generator=g).permute(2, 0, 3, 1, 4).unbind(0)
    bias = torch.randint(1, 6, (batch, tokens), generator=g).float().log()
    return *(t.to(device, dtype) for t in (q, k, v)), bias.to(device)


def check_against_reference(device: str, dtypes=(torch.float32, torch.float16)) -> None:
    """float32 to 1e-5 of SDPA given the bias as a mask (in float32), half precision to 1e-2."""
    for dtype in dtypes:
        for case in CASES:
            q, k, v, bias = inputs(case, device, dtype)
            assert attention_kernels.supports(q, case[-1]), (case, dtype)
            got = attention_kernels.attention(q, k, v, bias, 0.3)
            assert got.shape == (case[0], case[2], case[1], case[3]) and got.is_contiguous()
            want = attention_kernels.reference(q.float(), k.float(), v.float(), bias, 0.3).transpose(1, 2)
            tol = 1e-5 if dtype == torch.float32 else 1e-2
            torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol, msg=lambda m: f"{case} {dtype}: {m}")


def check_size_bias_ways(device: str, dtype=torch.float32, atol=1e-5) -> None:
    """ToMe forwards on every family, the size bias as an attn_mask, in padded heads and in the
    kernel: the same tokens and merges, and the kernel really ran. float32: ToMe f0.5. Half
    precision: ToMe merging in the first block only (:func:`tome_merging_once`; the three ways
    round differently, which would flip near ties of later matchings)."""
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, 64, 64).to(device, dtype)
    calls = []
    attention = attention_kernels.attention
    attention_kernels.attention = lambda *a: calls.append(1) or attention(*a)
    for name, make in FAMILIES.items():
        adapter = make()
        adapter.to(device, dtype)
        comp = (build("tome", {"merge_factor": 0.5}, adapter.num_layers) if dtype == torch.float32
                else tome_merging_once(adapter.num_layers))
        outs = {}
        for way, folds, kernel in (("mask", (), False), ("padded", (device,), False), ("kernel", (device,), True)):
            CompressedForward.fold_bias_devices, attention_kernels.ENABLED = folds, kernel
            before = len(calls)
            outs[way] = adapter.compressed(pixels, comp)
            assert (len(calls) > before) == kernel, (name, way, len(calls) - before)
        for way in ("padded", "kernel"):
            torch.testing.assert_close(outs[way].tokens.float(), outs["mask"].tokens.float(), atol=atol, rtol=0,
                                       msg=lambda m: f"{name} {way}: {m}")
            assert all((a.group_ids == b.group_ids).all() for a, b in zip(outs[way].plans, outs["mask"].plans))


@needs_interpreter
def test_kernel_equals_sdpa_with_a_mask_interpreted_on_cpu():
    interpreted("from tests.test_attention_kernels import check_against_reference; check_against_reference('cpu')")


@pytest.mark.slow
@needs_interpreter
def test_size_bias_in_the_kernel_equals_mask_and_padded_heads_interpreted_on_cpu():
    interpreted("from tests.test_attention_kernels import check_size_bias_ways; check_size_bias_ways('cpu')")


def test_kernel_is_used_only_where_it_runs(monkeypatch):
    q = torch.zeros(1, 2, 8, 64)
    monkeypatch.setattr(attention_kernels, "_INTERPRET", False)
    assert not attention_kernels.supports(q, 64)  # compiled Triton needs a GPU
    monkeypatch.setattr(attention_kernels, "_INTERPRET", True)
    assert attention_kernels.supports(q, 64)
    assert not attention_kernels.supports(q, 72)  # not a power of two: padded heads instead
    assert not attention_kernels.supports(q, 256)  # wider than the kernel keeps in registers
    assert not attention_kernels.supports(q.double(), 64)
    monkeypatch.setattr(attention_kernels, "ENABLED", False)  # EVALSUITE_TRITON=0
    assert not attention_kernels.supports(q, 64)


def test_kernel_refuses_channels_that_are_not_contiguous():
    q = torch.zeros(1, 2, 8, 128)[..., ::2]
    with pytest.raises(ValueError, match="unit stride along the channels"):
        attention_kernels.attention(q, q, q, torch.zeros(1, 8), 0.125)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
def test_kernel_equals_sdpa_with_a_mask_on_cuda():
    dtypes = (torch.float32, torch.float16) + ((torch.bfloat16,) if torch.cuda.is_bf16_supported() else ())
    check_against_reference("cuda", dtypes)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.float16, 2e-2)], ids=["fp32", "fp16"])
def test_size_bias_in_the_kernel_equals_mask_and_padded_heads_on_cuda(dtype, atol, monkeypatch):
    monkeypatch.setattr(CompressedForward, "fold_bias_devices", CompressedForward.fold_bias_devices)
    monkeypatch.setattr(attention_kernels, "ENABLED", attention_kernels.ENABLED)
    monkeypatch.setattr(attention_kernels, "attention", attention_kernels.attention)
    check_size_bias_ways("cuda", dtype, atol)
