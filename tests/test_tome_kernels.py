"""The fused ToMe step (evalsuite.methods.tome.kernels) against the torch reference (evalsuite.methods.tome.merge).

On CPU the Triton kernels run under Triton's interpreter (``TRITON_INTERPRET=1``,
read when Triton compiles the module, hence a subprocess); on a GPU they run
compiled, marked ``gpu``.
"""

import pytest
import torch

from evalsuite.methods import build
from evalsuite.methods.tome import kernels as tome_kernels, merge as tome

from .interpreter import interpreted, needs_interpreter

triton = pytest.importorskip("triton")

CASES = [  # (batch, heads, tokens, head_dim, channels, prefix tokens, r)
    (2, 3, 1 + 40, 16, 32, 1, 7),  # CLS token, even patch count
    (2, 2, 2 + 33, 8, 24, 2, 16),  # two prefix tokens, odd patch count, r at its largest
    (1, 4, 50, 16, 40, 0, 25),  # no prefix, every A token merged (several into one partner)
    (3, 2, 1 + 96, 64, 1100, 1, 20),  # channels beyond one 1024-wide block
    (1, 2, 1 + 180, 16, 24, 1, 80),  # merged sizes counted over more than one 64-token chunk
]


def inputs(case, device, dtype, seed=0):
    """keys [B, H, N, D] as a strided view of a qkv output (as models hand them over), x [B, N, C],
    integer sizes 1..4 [B, N, 1]."""
    batch, heads, tokens, head_dim, channels, _, _ = case
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(batch, tokens, 3, heads, head_dim, generator=g)[:, :, 1].transpose(1, 2)
    x = torch.randn(batch, tokens, channels, generator=g)
    size = torch.randint(1, 5, (batch, tokens, 1), generator=g).float()
    return keys.to(device, dtype), x.to(device, dtype), size.to(device, dtype)


def check_against_reference(device: str) -> None:
    """float32: the same matching and the same merged tokens and sizes as the reference.
    float16 and bfloat16: tokens and sizes are the size-weighted means of the matching the fused
    step chose; in float16, each merged token is that mean computed in float32 and rounded once."""
    for dtype in (torch.float32, torch.float16):  # the check ToMe makes before it uses the fused step
        assert tome_kernels._works_on(torch.device(device), dtype)
    several_into_one, rounded_once = False, torch.zeros(2)
    for case in CASES:
        *_, prefix, r = case
        tensors = inputs(case, device, torch.float32)
        assert tome_kernels.supports(tensors[0], tensors[1]), case
        for a_offset in (0, 1):  # both splits: A = even patches (patch split) or odd (published, one CLS)
            want = tome.merge_step(*tensors, num_prefix=prefix, r=r, a_offset=a_offset)
            got = tome_kernels.merge_step(*tensors, num_prefix=prefix, r=r, a_offset=a_offset)
            for name, w, g in zip(("x", "size", "unm_idx", "src_idx", "dst_idx"), want, got):
                assert g.shape == w.shape and g.dtype == w.dtype, (case, a_offset, name)
                torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5, msg=lambda m: f"{case} {a_offset} {name}: {m}")
            several_into_one |= bool((got[4].sort(dim=1).values.diff(dim=1) == 0).any())
        a_offset = prefix % 2  # the default split
        for dtype in (torch.float16, torch.bfloat16):
            keys, x, size = inputs(case, device, dtype)
            assert tome_kernels.supports(keys, x), (case, dtype)
            out, out_size, unm, src, dst = tome_kernels.merge_step(keys, x, size, num_prefix=prefix, r=r,
                                                                   a_offset=a_offset)
            want_x, want_size = tome.merge_weighted(x.float(), size.float(), prefix, unm, src, dst, a_offset)
            torch.testing.assert_close(out_size.float(), want_size, atol=0, rtol=0)
            torch.testing.assert_close(out.float(), want_x, atol=0.05, rtol=0.02)
            if dtype == torch.float16:  # (Triton's interpreter truncates to bfloat16 instead of rounding)
                once = tome.merge_weighted(x.double(), size.double(), prefix, unm, src, dst, a_offset)[0].half()
                torch.testing.assert_close(out, once, atol=1e-6, rtol=2 ** -10)  # at most one step apart
                rounded_once += torch.tensor([(out == once).sum().item(), out.numel()])
    assert several_into_one, "no case merged several tokens into one partner"
    assert rounded_once[0] / rounded_once[1] > 0.999, "float16 merged tokens rounded more than once"


@needs_interpreter
def test_fused_step_equals_the_reference_interpreted_on_cpu():
    interpreted("from tests.test_tome_kernels import check_against_reference; check_against_reference('cpu')")


def test_fused_step_is_used_only_where_it_runs(monkeypatch):
    keys, x, _ = inputs(CASES[0], "cpu", torch.float32)
    monkeypatch.setattr(tome_kernels, "_INTERPRET", False)
    assert not tome_kernels.supports(keys, x)  # compiled Triton needs a GPU
    monkeypatch.setattr(tome_kernels, "_INTERPRET", True)
    assert tome_kernels.supports(keys, x)
    assert not tome_kernels.supports(keys.double(), x.double())  # no float64 path
    assert not tome_kernels.supports(torch.zeros(1, 1, 4, tome_kernels.MAX_HEAD_DIM + 1), x)
    monkeypatch.setattr(tome_kernels, "ENABLED", False)  # EVALSUITE_TRITON=0
    assert not tome_kernels.supports(keys, x)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
def test_fused_step_equals_the_reference_on_cuda():
    with torch.inference_mode():
        check_against_reference("cuda")


@pytest.mark.gpu
@needs_cuda
def test_fused_step_gives_the_same_bits_every_run_on_cuda():
    """DINOv2-S's first block at 518 px, batch 64, half precision: many partners picked by
    several merged tokens, from many programs. Ten runs, one result."""
    keys, x, size = inputs((64, 6, 1 + 1369, 64, 384, 1, 342), "cuda", torch.float16)
    with torch.inference_mode():
        first = tome_kernels.merge_step(keys, x, size, num_prefix=1, r=342, a_offset=1)
        assert (first[4].sort(dim=1).values.diff(dim=1) == 0).any()  # several into one partner
        for _ in range(10):
            again = tome_kernels.merge_step(keys, x, size, num_prefix=1, r=342, a_offset=1)
            assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.gpu
@needs_cuda
def test_compressed_forward_is_the_same_every_run_on_cuda(adapter, pixels):
    """A whole ToMe forward in half precision gives the same tokens and plans every run: the gate's
    verdicts do not move between runs of the same code."""
    adapter.to("cuda", torch.float16)
    try:
        comp = build("tome", {"merge_factor": 0.5}, adapter.num_layers)
        px = pixels.to("cuda", torch.float16)
        with torch.inference_mode():
            first = adapter.compressed(px, comp)
            for _ in range(5):
                again = adapter.compressed(px, comp)
                assert torch.equal(again.tokens, first.tokens) and torch.equal(again.sizes, first.sizes)
                assert all((a.group_ids == b.group_ids).all() for a, b in zip(again.plans, first.plans))
    finally:
        adapter.to("cpu", torch.float32)


@pytest.mark.gpu
@needs_cuda
def test_compressed_forward_with_fused_steps_equals_the_reference_on_cuda(adapter, pixels, monkeypatch):
    """Whole ToMe forwards in float32: the fused step gives the reference's tokens, sizes and plans."""
    adapter.to("cuda", torch.float32)
    try:
        comp = build("tome", {"merge_factor": 0.5}, adapter.num_layers)
        px = pixels.to("cuda")
        fused = adapter.compressed(px, comp)
        monkeypatch.setattr(tome_kernels, "ENABLED", False)
        reference = adapter.compressed(px, comp)
        torch.testing.assert_close(fused.tokens, reference.tokens, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fused.sizes, reference.sizes, atol=0, rtol=0)
        assert all((a.group_ids == b.group_ids).all() for a, b in zip(fused.plans, reference.plans))
    finally:
        adapter.to("cpu", torch.float32)
