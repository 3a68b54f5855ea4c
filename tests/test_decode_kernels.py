"""The fused decode layer (evalsuite.vlm.decode_kernels) against transformers' Qwen2-VL layer.

On CPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, read when Triton compiles the
module, hence a subprocess) in float32: the interpreter rounds bfloat16 by truncation, so the bit-for-bit
claim in half precision is the GPU test's. On a GPU they run compiled, marked ``gpu``.
"""

import pytest
import torch

from evalsuite.vlm import decode_kernels, lm_drop

from .interpreter import interpreted, needs_interpreter
from .lm_drop_helpers import make_batch, tiny_qwen2_vl


def check_kernels(device: str, dtypes=(torch.float32,)) -> None:
    """Each kernel against the torch ops it replaces: RMSNorm and rotary to the bit, the SiLU product to
    one unit in the last place (NumPy's exp is not the CPU's); bit for bit on CUDA."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRMSNorm, apply_rotary_pos_emb

    exact = device != "cpu"
    for dtype in dtypes:
        for batch, width, heads, kv_heads, head_dim, inter in ((1, 96, 4, 2, 16, 300), (3, 256, 4, 2, 64, 1500)):
            g = torch.Generator().manual_seed(width)
            norm = Qwen2VLRMSNorm(width, eps=1e-6)
            norm.weight.data = torch.randn(width, generator=g)
            norm.to(device, dtype)
            x = torch.randn(batch, 1, width, generator=g).mul(3).to(device, dtype)
            assert torch.equal(decode_kernels.rms_norm(norm, x), norm(x)), (dtype, width)
            q = torch.randn(batch, 1, heads * head_dim, generator=g).to(device, dtype)
            k = torch.randn(batch, 1, kv_heads * head_dim, generator=g).to(device, dtype)
            cos, sin = (torch.randn(batch, 1, head_dim, generator=g).to(device, dtype) for _ in range(2))
            want = apply_rotary_pos_emb(q.view(batch, 1, heads, head_dim).transpose(1, 2),
                                        k.view(batch, 1, kv_heads, head_dim).transpose(1, 2), cos, sin)
            got = decode_kernels.rotary(q, k, cos, sin, head_dim)
            for a, b in zip(got, want):
                assert a.shape == b.shape and torch.equal(a, b), (dtype, head_dim)
            gate, up = (torch.randn(batch, 1, inter, generator=g).mul(4).to(device, dtype) for _ in range(2))
            want = torch.nn.functional.silu(gate) * up
            got = decode_kernels.silu_mul(gate, up)
            if exact:
                assert torch.equal(got, want), dtype
            else:
                torch.testing.assert_close(got, want, atol=0, rtol=1e-6)


def check_static_decode(device: str) -> None:
    """Static decoding through the fused layer: the path says so, and the tokens are the eager loop's,
    with and without in-LM dropping, batch 2 with padding."""
    model = tiny_qwen2_vl().to(device)
    batch = {k: v.to(device) for k, v in make_batch([(112, 84, 5), (56, 56, 9)], seed=4).items()}
    schedules = [lm_drop.NO_DROP, lm_drop.DropSchedule("v2drop", (1, 3), (0.5, 0.5)),
                 lm_drop.DropSchedule("fastv", (2,), (0.5,))]
    for schedule in schedules:
        eager = lm_drop.generate(model, batch, schedule, max_new_tokens=8, stop_at_eos=False)
        fused = lm_drop.generate(model, batch, schedule, max_new_tokens=8, stop_at_eos=False, decode="static")
        assert fused.decode_path.endswith("+fused"), fused.decode_path
        assert fused.tokens.tolist() == eager.tokens.tolist(), schedule
        plain = lm_drop.generate(model, batch, schedule, max_new_tokens=8, stop_at_eos=False, decode="static",
                                 fused=False)
        assert not plain.decode_path.endswith("+fused")


@needs_interpreter
def test_kernels_equal_the_torch_ops_interpreted_on_cpu():
    interpreted("from tests.test_decode_kernels import check_kernels; check_kernels('cpu')")


@needs_interpreter
def test_fused_static_decode_gives_the_eager_tokens_interpreted_on_cpu():
    interpreted("from tests.test_decode_kernels import check_static_decode; check_static_decode('cpu')")


def test_fused_layer_is_used_only_where_it_runs(monkeypatch):
    model = tiny_qwen2_vl()
    layer = model.model.language_model.layers[0]
    h = torch.zeros(2, 1, 64)
    monkeypatch.setattr(decode_kernels, "_INTERPRET", False)
    assert not decode_kernels.supports(layer, h)  # compiled Triton needs a GPU
    monkeypatch.setattr(decode_kernels, "_INTERPRET", True)
    assert decode_kernels.supports(layer, h)
    assert not decode_kernels.supports(layer, torch.zeros(2, 3, 64))  # a prefill, not one token
    assert not decode_kernels.supports(layer, h.double())
    assert not decode_kernels.supports(model.model.visual.blocks[0], h)  # not a decoder layer
    layer.self_attn.sliding_window = 16  # the model is this test's own
    assert not decode_kernels.supports(layer, h)
    layer.self_attn.sliding_window = None
    act, layer.mlp.act_fn = layer.mlp.act_fn, torch.nn.GELU()
    assert not decode_kernels.supports(layer, h)
    layer.mlp.act_fn = act
    assert decode_kernels.supports(layer, h)
    monkeypatch.setattr(decode_kernels, "ENABLED", False)  # EVALSUITE_TRITON=0
    assert not decode_kernels.supports(layer, h)


def test_asking_for_the_fused_path_where_it_cannot_run_is_an_error(monkeypatch):
    monkeypatch.setattr(decode_kernels, "_INTERPRET", False)
    model = tiny_qwen2_vl()
    batch = make_batch([(56, 56, 3)], seed=1)
    with pytest.raises(ValueError, match="fused decode layer"):
        lm_drop.generate(model, batch, max_new_tokens=3, decode="static", fused=True)
    assert lm_drop.generate(model, batch, max_new_tokens=3, decode="static").decode_path == "static"



@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernels_are_bit_exact_on_cuda(dtype):
    assert decode_kernels.works_on(torch.device("cuda"), dtype)
    check_kernels("cuda", (dtype,))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_graph_decode_gives_the_eager_tokens_on_cuda():
    check_static_decode("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_graph_decode_of_the_2b_configuration_gives_the_eager_tokens():
    """The Qwen2-VL 2B configuration in bfloat16 (random weights), a page of visual tokens, batch 2: the
    fused static decode replayed as a graph continues the prefill with the eager loop's tokens."""
    from evalsuite.bench import lm_drop as bench

    model = bench.build_model(bench.QWEN2_VL_2B, "cuda", torch.bfloat16)
    inputs = bench.synthetic_inputs(model, 2, 1369, 32)
    eager = lm_drop.generate(model, inputs, max_new_tokens=24, stop_at_eos=False)
    times = {}
    for fused in (False, True):
        run = lm_drop.generate(model, inputs, max_new_tokens=24, stop_at_eos=False, decode="static", fused=fused)
        assert run.tokens.tolist() == eager.tokens.tolist(), run.decode_path
        run = lm_drop.generate(model, inputs, max_new_tokens=24, stop_at_eos=False, decode="static", fused=fused)
        times[run.decode_path] = run.decode_s_per_token
    print({path: f"{1e3 * s:.2f} ms/step" for path, s in times.items()}, "(random-weights, batch 2)")
