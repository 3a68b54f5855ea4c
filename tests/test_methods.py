"""Behaviour of the compression methods and their token plans."""

import numpy as np
import pytest
import torch

from evalsuite.methods import METHODS, build
from evalsuite.methods.spec import INSERTION_POINTS
from evalsuite.methods.state import TokenState
from evalsuite.methods.tome.merge import bipartite_soft_matching, matching_old_to_new, merge_weighted
from evalsuite.metrics.flops import ideal_speedup
from evalsuite.registry import UnknownNameError

from .conftest import COMPRESSING


@pytest.mark.parametrize("method,params", COMPRESSING, ids=lambda v: str(v))
def test_plan_agrees_with_token_sizes_and_schedule(adapter, pixels, method, params):
    compressor = build(method, params, adapter.num_layers)
    out = adapter.compressed(pixels, compressor)
    expected_tokens = compressor.schedule(adapter.num_patches, adapter.num_prefix)[-1]
    assert out.patch_tokens.shape[1] == expected_tokens < adapter.num_patches
    for b, plan in enumerate(out.plans):
        assert plan.num_tokens == expected_tokens
        assert plan.num_patches == adapter.num_patches
        if plan.input_scale == 1.0:  # in-encoder methods: sizes are exactly the patch counts of the plan
            np.testing.assert_array_equal(plan.token_sizes(), out.patch_sizes[b].numpy())
        else:  # downscale: every small-grid token covers some full-grid patches
            assert (plan.token_sizes() > 0).all()


def test_bipartite_matching_merges_identical_pairs():
    # tokens 0..5; token 2 (set A) duplicates token 5 (set B), token 4 (A) duplicates token 1 (B)
    torch.manual_seed(0)
    metric = torch.randn(1, 6, 16)
    metric[0, 2] = metric[0, 5]
    metric[0, 4] = metric[0, 1]
    unm, src, dst = bipartite_soft_matching(metric, r=2)
    old_to_new = matching_old_to_new(6, unm, src, dst)
    assert sorted(src[0].tolist()) == [1, 2]  # A-indices of tokens 2 and 4
    merged_into = dict(zip(src[0].tolist(), dst[0].tolist()))
    assert merged_into == {1: 2, 2: 0}  # token 2 -> B[2] (token 5), token 4 -> B[0] (token 1)
    new = old_to_new[0].tolist()
    assert new[2] == new[5] and new[4] == new[1]  # merged pairs share their output token
    assert new[1::2] == [1, 2, 3]  # B tokens follow the one unmerged A token
    assert new[0] == 0
    assert len(set(new)) == 4  # 6 tokens - 2 merges


def test_weighted_merge_is_size_weighted_average():
    # a class token (7.0) in front, then patches: A = tokens 0, 2; B = tokens 1, 3
    x = torch.tensor([[[7.0], [1.0], [10.0], [3.0], [20.0]]])
    size = torch.tensor([[[1.0], [1.0], [1.0], [3.0], [1.0]]])
    # merge A[1] (patch 2, size 3) into B[1] (patch 3, size 1)
    out, new_size = merge_weighted(x, size, 1, torch.tensor([[0]]), torch.tensor([[1]]), torch.tensor([[1]]))
    assert new_size[0, :, 0].tolist() == [1.0, 1.0, 1.0, 4.0]
    assert out[0, :, 0].tolist() == pytest.approx([7.0, 1.0, 10.0, (3 * 3 + 20) / 4])


def _merge_by_loops(x, size, p, unm, src, dst):
    """ToMe's merge written out token by token: the reference for ``merge_weighted``."""
    a, b, size_a, size_b = x[:, p::2], x[:, p + 1::2], size[:, p::2], size[:, p + 1::2]
    tokens, sizes = [], []
    for i in range(x.shape[0]):
        total, weight = (b[i] * size_b[i]).clone(), size_b[i].clone()
        for s, d in zip(src[i].tolist(), dst[i].tolist()):
            total[d] += a[i, s] * size_a[i, s]
            weight[d] += size_a[i, s]
        tokens.append(torch.cat([x[i, :p], a[i, unm[i]], total / weight]))
        sizes.append(torch.cat([size[i, :p], size_a[i, unm[i]], weight]))
    return torch.stack(tokens), torch.stack(sizes)


@pytest.mark.parametrize("prefix,patches", [(0, 10), (1, 11), (5, 36)])
def test_weighted_merge_matches_token_by_token_merge(prefix, patches):
    torch.manual_seed(prefix)
    x = torch.randn(3, prefix + patches, 8, dtype=torch.float64)
    size = torch.randint(1, 5, (3, prefix + patches, 1)).double()
    metric = torch.randn(3, patches, 4, dtype=torch.float64)
    metric[:, 0:6:2] = metric[:, 1:2]  # three A tokens share one partner: merges into one token pile up
    unm, src, dst = bipartite_soft_matching(metric, r=patches // 2 - 1)
    assert (dst == 0).sum(dim=1).min() >= 3
    out, new_size = merge_weighted(x, size, prefix, unm, src, dst)
    expected, expected_size = _merge_by_loops(x, size, prefix, unm, src, dst)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(new_size, expected_size)
    assert new_size.sum(dim=1).equal(size.sum(dim=1))  # no patch lost or counted twice


def test_proportional_attention_bias_appears_only_after_merging():
    x = torch.zeros(2, 5, 8)
    state = TokenState.start(x, num_prefix=1, grid=(2, 2))
    assert state.attention_bias(torch.float32) is None
    state.size[:, 2] = 3.0
    state.merged = True
    bias = state.attention_bias(torch.float32)
    assert bias.shape == (2, 1, 1, 5)
    assert bias[0, 0, 0, 2] == pytest.approx(np.log(3.0))


def test_v2drop_keeps_the_tokens_that_changed_most():
    comp = build("v2drop", {"keep": 0.5, "layers": [0]}, num_layers=2)
    x_in = torch.zeros(1, 5, 4)
    x_out = x_in.clone()
    x_out[0, 1:, 0] = torch.tensor([0.1, 5.0, 0.2, 3.0])  # patch tokens 1 and 3 vary most
    state = TokenState.start(x_in, num_prefix=1, grid=(2, 2))
    comp.begin(state)
    out = comp.after_block(0, x_out, x_in, state)
    assert out.shape[1] == 1 + 2
    assert state.source[0].tolist() == [-1, 0, -1, 1]


@pytest.mark.parametrize("num_prefix", [1, 0], ids=["class_attention", "mean_received_attention"])
def test_avit_keeps_the_tokens_that_receive_most_attention(num_prefix):
    """Keys of patches 1 and 3 align with every query: those two survive 50% sparsity."""
    from evalsuite.patch.runner import CompressedForward

    comp = build("avit", {"sparsity": 0.5, "layers": [0]}, num_layers=2)
    run = CompressedForward(comp, patch_size=1)
    x = torch.randn(1, num_prefix + 4, 8)
    run.begin(x, num_prefix=num_prefix, grid=(2, 2))
    q = torch.zeros(1, 2, num_prefix + 4, 8)
    q[..., 0] = 5.0  # every query (the class token's too) looks along channel 0
    k = torch.zeros_like(q)
    k[:, :, num_prefix + 1, 0] = k[:, :, num_prefix + 3, 0] = 1.0
    run.attend(0, q, k, torch.zeros_like(q), scale=1.0)
    out = run.after_block(0, x, x)
    assert out.shape[1] == num_prefix + 2
    assert run.state.source[0].tolist() == [-1, 0, -1, 1]


def test_random_drop_is_seeded():
    def kept(seed):
        comp = build("random", {"keep": 0.5, "layers": [0]}, num_layers=2, seed=seed)
        x = torch.randn(1, 17, 4)
        state = TokenState.start(x, 1, (4, 4))
        comp.begin(state)
        comp.after_block(0, x, x, state)
        return state.source[0].tolist()

    assert kept(1) == kept(1)
    assert kept(1) != kept(2)


def test_downscale_plan_maps_full_grid_to_small_grid(adapter, pixels):
    out = adapter.compressed(pixels, build("downscale", {"keep": 0.25}, adapter.num_layers))
    plan = out.plans[0]
    rows, cols = plan.grid
    assert plan.num_tokens == (rows // 2) * (cols // 2)
    groups = plan.group_ids
    assert groups[0, 0] == groups[1, 1] == 0  # a 2x2 block of full-grid patches shares one token
    assert plan.input_scale == pytest.approx(0.5)


def test_schedule_gives_the_ideal_speedup():
    tome = build("tome", {"merge_factor": 0.5}, num_layers=12)
    schedule = tome.schedule(256)
    assert schedule[0] == 256 and schedule[-1] == 256 - 12 * 10
    assert 1.3 < ideal_speedup(schedule, 256, 1, 384) < 1.6


@pytest.mark.parametrize("name,params,message", [
    ("tome", {}, "merge_factor: give exactly one of"),
    ("tome", {"merge_factor": 1.5}, r"merge_factor: must be < 1"),
    ("tome", {"merge_factor": 0.5, "bogus": 1}, "bogus: unknown key"),
    ("v2drop", {"keep": 0.0}, "keep: must be > 0"),
    ("avit", {"sparsity": 0.3, "layers": [11]}, r"layers: \[11\] must be block indices < 11"),
    ("downscale", {}, "keep: is required"),
])
def test_bad_parameters_are_refused_naming_the_key(name, params, message):
    with pytest.raises(ValueError, match=message):
        build(name, params, num_layers=12)


def test_registry_names_are_the_methods_own_names():
    """Each registered spec (and the hooks it builds) calls itself by its registry name, and its
    do-nothing settings (the parity tests' list) compress nothing."""
    for name in METHODS:
        spec_class = METHODS.get(name)
        assert spec_class.name == name
        # image-side methods patch no model (the encoder behind them is the unpatched one): their
        # parity is that of the image they send, which tests/test_image_side.py checks
        assert spec_class.zero_params or spec_class.insertion == {"image"}, \
            f"{name} declares no zero setting: no parity coverage"
        for params in spec_class.zero_params:
            spec = spec_class(params)
            assert spec.is_zero
            if "encoder" in spec_class.insertion:  # hooks of an encoder block (other stages test theirs)
                assert spec.build(12).name == name
        assert spec_class.insertion <= INSERTION_POINTS


def test_specs_import_no_torch():
    import subprocess
    import sys

    code = ("import sys; from evalsuite.methods import METHODS, spec_of; "
            "[spec_of(n, (METHODS.get(n).zero_params or ({},))[0]).schedule(196, 1, 12) for n in METHODS]; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_unknown_method_suggests_the_closest_name():
    with pytest.raises(UnknownNameError, match="did you mean 'tome'"):
        METHODS.get("tomee")


def test_folded_bias_attention_equals_additive_bias():
    """Proportional attention on CUDA folds log(size) into an extra q/k channel; same numbers."""
    from evalsuite.patch.runner import folded_bias_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 16, dtype=torch.float64) for _ in range(3))
    bias = torch.rand(2, 1, 1, 10, dtype=torch.float64).log()
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.25)
    torch.testing.assert_close(folded_bias_attention(q, k, v, bias, 0.25), expected)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_graph_cache_drops_least_recently_used_beyond_its_count_and_bytes(monkeypatch):
    from evalsuite.methods import graphs

    monkeypatch.setattr(graphs, "_GRAPHS", graphs.OrderedDict())
    monkeypatch.setattr(graphs, "MAX_GRAPHS", 3)
    monkeypatch.setattr(graphs, "MAX_GRAPH_BYTES", 1000)
    for name in "abcd":  # 4 entries of 400 bytes (100 float32 in, nothing out)
        graphs._GRAPHS[name] = graphs._Captured(None, (torch.zeros(100),), ())
        graphs._evict()
    assert list(graphs._GRAPHS) == ["c", "d"]  # count allowed 3, bytes only 2
    graphs._GRAPHS["big"] = graphs._Captured(None, (torch.zeros(1000),), ())
    graphs._evict()
    assert list(graphs._GRAPHS) == ["big"]  # the newest stays even when it alone is over the budget


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_graph_replayed_merge_step_equals_eager_on_cuda(dtype):
    """The captured ToMe step gives the eager step's result for new inputs on every replay."""
    from evalsuite.methods.graphs import replay_or_run
    from evalsuite.methods.tome.merge import merge_step

    def inputs(seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        keys = torch.randn(2, 3, 1 + 40, 16, device="cuda", generator=g, dtype=dtype)
        x = torch.randn(2, 1 + 40, 32, device="cuda", generator=g, dtype=dtype)
        size = torch.rand(2, 41, 1, device="cuda", generator=g, dtype=dtype) + 1
        return keys, x, size

    with torch.inference_mode():
        for seed in (0, 1, 0):  # capture, replay with new values, replay with the first ones again
            eager = merge_step(*inputs(seed), num_prefix=1, r=7)
            graphed = replay_or_run(merge_step, inputs(seed), num_prefix=1, r=7)
            for e, g in zip(eager, graphed):
                torch.testing.assert_close(g, e, atol=0, rtol=0)


@pytest.mark.gpu
@needs_cuda
def test_graph_reads_inputs_in_place_only_while_they_stay_where_they_were(monkeypatch):
    """Inputs at the same addresses twice get a graph that reads them in place; it gives the eager
    result for whatever those tensors hold at each call, and inputs elsewhere still go through the
    graph's own buffers."""
    from evalsuite.methods import graphs
    from evalsuite.methods.tome.merge import merge_step

    monkeypatch.setattr(graphs, "_GRAPHS", graphs.OrderedDict())
    shapes = ((2, 3, 41, 16), (2, 41, 32), (2, 41, 1))
    static = tuple(torch.empty(shape, device="cuda") for shape in shapes)
    with torch.inference_mode():
        for seed, where in ((0, "static"), (1, "static"), (2, "static"), (3, "new"), (4, "static")):
            g = torch.Generator(device="cuda").manual_seed(seed)
            values = [torch.rand(shape, device="cuda", generator=g) + 0.5 for shape in shapes]
            if where == "static":
                for t, v in zip(static, values):
                    t.copy_(v)
            tensors = static if where == "static" else tuple(values)
            graphed = [t.clone() for t in graphs.replay_or_run(merge_step, tensors, num_prefix=1, r=7)]
            for e, got in zip(merge_step(*tensors, num_prefix=1, r=7), graphed):
                torch.testing.assert_close(got, e, atol=1e-6, rtol=0)  # the torch step's scatter_add: any order
    (entry,) = graphs._GRAPHS.values()
    assert list(entry.in_place) == [tuple((t.data_ptr(), t.stride()) for t in static)]


@pytest.mark.gpu
@needs_cuda
def test_in_place_graphs_are_few_and_only_for_inputs_that_come_back(monkeypatch):
    """Inputs at new addresses on every call never get an in-place graph; inputs that keep coming
    back at three places get at most ``MAX_IN_PLACE`` of them."""
    from evalsuite.methods import graphs
    from evalsuite.methods.tome.merge import merge_step

    monkeypatch.setattr(graphs, "_GRAPHS", graphs.OrderedDict())
    shapes = ((1, 2, 21, 8), (1, 21, 16), (1, 21, 1))
    keep = []  # holding every input keeps each call's inputs at new addresses
    with torch.inference_mode():
        for _ in range(4):
            keep.append(tuple(torch.rand(shape, device="cuda") for shape in shapes))
            graphs.replay_or_run(merge_step, keep[-1], num_prefix=1, r=3)
        (entry,) = graphs._GRAPHS.values()
        assert entry.in_place == {}
        places = [tuple(torch.rand(shape, device="cuda") for shape in shapes) for _ in range(3)]
        for _ in range(3):
            for tensors in places:
                graphs.replay_or_run(merge_step, tensors, num_prefix=1, r=3)
        assert len(entry.in_place) == graphs.MAX_IN_PLACE


@pytest.mark.gpu
@needs_cuda
def test_compressed_forward_with_graphed_steps_equals_eager_on_cuda(adapter, pixels, monkeypatch):
    """Whole ToMe forwards, graph-replayed steps vs eager: same tokens, sizes and plans, and a later
    forward does not overwrite what an earlier one returned (the graphs' buffers are reused)."""
    from evalsuite.methods import graphs

    adapter.to("cuda", torch.float32)
    try:
        comp = build("tome", {"merge_factor": 0.5}, adapter.num_layers)
        px = pixels[:1].to("cuda")
        first, second = (adapter.compressed(p, comp) for p in (px, px.flip(-1)))
        first_tokens = first.tokens.clone()
        adapter.compressed(px.flip(-2), comp)  # replays every graph once more
        monkeypatch.setattr(graphs, "GRAPH_MAX_ELEMENTS", -1)  # everything eager
        for graphed, p in ((first, px), (second, px.flip(-1))):
            eager = adapter.compressed(p, comp)
            torch.testing.assert_close(graphed.tokens, eager.tokens, atol=1e-5, rtol=0)
            torch.testing.assert_close(graphed.sizes, eager.sizes, atol=0, rtol=0)
            assert all((a.group_ids == b.group_ids).all() for a, b in zip(graphed.plans, eager.plans))
        torch.testing.assert_close(first.tokens, first_tokens, atol=0, rtol=0)
    finally:
        adapter.to("cpu", torch.float32)


@pytest.mark.parametrize("method,params,regions", [
    ("tome", {"merge_factor": 0.5}, lambda layers: layers),  # its merge after attention, in every block
    ("v2drop", {"keep": 0.5}, lambda layers: layers),  # its drop after every block (most keep all)
    ("downscale", {"keep": 0.5}, lambda layers: 1),  # the resize before the encoder, no hook
])
def test_only_the_hooks_a_method_defines_are_timed(adapter, pixels, method, params, regions):
    """A hook left as Compressor's returns x: it is not called, so the step time holds no empty regions."""
    from evalsuite.patch.runner import StepTimer

    class CountingTimer(StepTimer):
        entered = 0

        def __call__(self, device):
            CountingTimer.entered += 1
            return super().__call__(device)

    comp = build(method, params, adapter.num_layers)
    adapter.compressed(pixels, comp, CountingTimer(enabled=True))
    assert CountingTimer.entered == regions(adapter.num_layers)


@pytest.mark.parametrize("method,params", [("tome", {"merge_factor": 0.5}), ("v2drop", {"keep": 0.5})])
def test_timed_forwards_leave_out_the_token_plans(adapter, pixels, method, params, monkeypatch):
    """``plans=False`` (what the latency timing and the benchmark run): the same tokens, sizes and
    pooled embedding, no plans, and the per-block index maps are never composed."""
    from evalsuite.methods.state import TokenState

    comp = build(method, params, adapter.num_layers)
    full = adapter.compressed(pixels, comp)
    composed = []
    source = TokenState.source
    monkeypatch.setattr(TokenState, "source", property(lambda self: composed.append(1) or source.fget(self)))
    timed = adapter.compressed(pixels, comp, plans=False)
    assert timed.plans is None and not composed
    for name in ("tokens", "sizes", "pooled"):
        torch.testing.assert_close(getattr(timed, name), getattr(full, name), atol=0, rtol=0)
    assert len(adapter.compressed(pixels, comp).plans) == pixels.shape[0] and composed


@pytest.mark.gpu
@needs_cuda
def test_whole_forward_graph_replay_equals_the_eager_forward_on_cuda(adapter, pixels):
    """``adapter.graphed`` (the benchmark's graphed rows), with and without token plans: the tokens,
    sizes and plans of the eager forward, for a new input copied into the captured one."""
    adapter.to("cuda", torch.float32)
    try:
        comp = build("tome", {"merge_factor": 0.5}, adapter.num_layers)
        px = pixels[:2].to("cuda")
        for plans in (True, False):
            forward = adapter.graphed(comp, px.flip(-1), plans=plans)
            got, eager = forward(px), adapter.compressed(px, comp)
            torch.testing.assert_close(got.tokens, eager.tokens, atol=1e-5, rtol=0)
            torch.testing.assert_close(got.sizes, eager.sizes, atol=0, rtol=0)
            if plans:
                assert all((a.group_ids == b.group_ids).all() for a, b in zip(got.plans, eager.plans))
            else:
                assert got.plans is None
    finally:
        adapter.to("cpu", torch.float32)
