"""The pre-LLM selections' fast paths against their references: DivPrune's one-kernel greedy loop
(evalsuite.vlm.select_kernels) against the torch loop, and VisionZip without host syncs against a
copy of its previous code.

On CPU the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``, read when Triton compiles
the module, hence a subprocess); on a GPU it runs compiled, marked ``gpu``.
"""

import pytest
import torch

from evalsuite.vlm import select, select_kernels

from .interpreter import needs_interpreter, run_interpreted

triton = pytest.importorskip("triton")


def tokens_with_ties(n: int, dim: int, seed: int) -> torch.Tensor:
    """[n, dim]: random directions, each present twice (equal distances for argmax to break)."""
    half = torch.randn((n + 1) // 2, dim, generator=torch.Generator().manual_seed(seed))
    return torch.cat([half, half])[:n]


KERNEL_CASES = [  # (tokens, kept, dim, duplicates)
    (2, 1, 8, False),  # the smallest image
    (40, 1, 16, False),  # only the start token
    (40, 39, 16, False),  # all but one
    (63, 30, 16, False), (64, 63, 16, False), (65, 40, 16, False),  # around a block of 64
    (128, 64, 24, True), (129, 128, 24, True),  # around 128, duplicates
    (500, 350, 32, True),
    (1023, 700, 16, False), (1024, 1023, 16, False), (1025, 300, 16, True),  # around 1024 (4 -> 8 warps)
]


def check_against_loop(device: str) -> None:
    """The kernel chooses the torch loop's tokens in its order, and divprune_select returns the same
    index, kept tokens and sizes through either path."""
    assert select_kernels._works_on(torch.device(device))  # the check DivPrune makes before using it
    for n, k, dim, duplicates in KERNEL_CASES:
        tokens = tokens_with_ties(n, dim, n) if duplicates else torch.randn(
            n, dim, generator=torch.Generator().manual_seed(n))
        tokens = tokens.to(device)
        distance, start = select.divprune_distances(tokens)
        assert select_kernels.supports(distance), (n, k)
        got = select_kernels.max_min_greedy(distance, start, k)
        want = select.max_min_greedy(distance, start, k)
        assert got.dtype == torch.int64 and torch.equal(got, want), (n, k, got, want)
    # one-hot directions, each three times: every step is a tie, broken towards the first index
    # (Triton's interpreter always takes the first; compiled, the kernel must ask for it: the gpu test)
    tokens = torch.eye(8, device=device).repeat(3, 1)
    distance, start = select.divprune_distances(tokens)
    for k in (1, 5, 8, 9, 23):
        assert torch.equal(select_kernels.max_min_greedy(distance, start, k), torch.arange(k, device=device))
    tokens = torch.randn(40, 8, device=device)  # NaN distances: kept by minimum, first for argmax
    tokens[[5, 17]] = float("nan")
    tokens[23, 0] = float("inf")
    distance, start = select.divprune_distances(tokens)
    for k in (3, 20):
        want = select.max_min_greedy(distance, start, k)
        assert torch.equal(select_kernels.max_min_greedy(distance, start, k), want), (k, want)
    for dtype in (torch.float32, torch.bfloat16):  # the whole selection, both paths
        tokens = torch.randn(300, 48, generator=torch.Generator().manual_seed(7)).to(device, dtype)
        fast = select.divprune_select(tokens, 120)
        select_kernels.ENABLED = False
        try:
            slow = select.divprune_select(tokens, 120)
        finally:
            select_kernels.ENABLED = True
        assert all(torch.equal(a, b) for a, b in zip(fast, slow)), dtype


@needs_interpreter
def test_kernel_equals_the_torch_loop_interpreted_on_cpu():
    done = run_interpreted("from tests.test_vlm_select_kernels import check_against_loop; check_against_loop('cpu')")
    assert done.returncode == 0, done.stderr[-4000:]


def test_evalsuite_triton_0_keeps_the_torch_loop():
    """With the kernels off the interpreter is not asked, and DivPrune still selects (the torch loop)."""
    code = """
import torch
from evalsuite.vlm import select, select_kernels
tokens = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
distance, start = select.divprune_distances(tokens)
assert not select_kernels.supports(distance)
select_kernels.max_min_greedy = None  # would fail if called
index, kept, sizes = select.divprune_select(tokens, 20)
assert torch.equal(index, select.max_min_greedy(distance, start, 20).sort().values)
"""
    done = run_interpreted(code, EVALSUITE_TRITON="0")
    assert done.returncode == 0, done.stderr[-4000:]


def test_kernel_is_used_only_where_it_runs(monkeypatch):
    distance = torch.rand(50, 50)
    monkeypatch.setattr(select_kernels, "_INTERPRET", False)
    assert not select_kernels.supports(distance)  # compiled Triton needs a GPU
    monkeypatch.setattr(select_kernels, "max_min_greedy", None)  # so the torch loop must run
    assert select.divprune_select(torch.randn(50, 16), 20)[0].shape == (20,)
    monkeypatch.setattr(select_kernels, "_INTERPRET", True)
    assert select_kernels.supports(distance)
    assert not select_kernels.supports(distance.double())  # distances are float32
    too_many = select_kernels.MAX_TOKENS + 1
    assert not select_kernels.supports(torch.zeros(1, 1).expand(too_many, too_many))
    monkeypatch.setattr(select_kernels, "ENABLED", False)  # EVALSUITE_TRITON=0
    assert not select_kernels.supports(distance)


def test_a_kernel_that_disagrees_is_refused_with_one_warning(monkeypatch):
    """The probe's answer for a device whose kernel chooses other tokens: the torch loop, after a warning."""
    monkeypatch.setattr(select_kernels, "_WORKS", {})
    monkeypatch.setattr(select_kernels, "max_min_greedy",
                        lambda distance, start, k: select.max_min_greedy(distance, start, k).flip(0))
    with pytest.warns(RuntimeWarning, match="DivPrune kernel does not run on cpu.*using the torch loop"):
        assert not select_kernels._works_on(torch.device("cpu"))
    assert not select_kernels._works_on(torch.device("cpu"))  # decided once


def visionzip_before(tokens: torch.Tensor, k: int, contextual_ratio: float = 0.2) -> tuple:
    """evalsuite.vlm.select.visionzip_select as it was, with its nonzero() host sync: the reference."""
    n = tokens.shape[0]
    if k >= n:
        return select._identity(tokens)
    x = tokens.float()
    attention = torch.softmax(x @ x.T / x.shape[-1] ** 0.5, dim=-1).mean(dim=0)
    k_ctx = min(k - 1, max(0, round(contextual_ratio * k))) if k > 1 else 0
    dominant = attention.topk(k - k_ctx).indices
    if k_ctx == 0:
        return select._selected(tokens, dominant)
    rest = torch.ones(n, dtype=torch.bool, device=tokens.device)
    rest[dominant] = False
    rest_index = rest.nonzero().squeeze(1)
    centres = rest_index[torch.linspace(0, len(rest_index) - 1, k_ctx, device=tokens.device).round().long()]
    unit = torch.nn.functional.normalize(x, dim=-1)
    group = (unit[rest_index] @ unit[centres].T).argmax(dim=-1)
    sums = torch.zeros(k_ctx, x.shape[1], device=x.device).index_add(0, group, x[rest_index])
    counts = torch.zeros(k_ctx, device=x.device).index_add(0, group, torch.ones_like(group, dtype=torch.float32))
    merged = sums / counts.clamp(min=1)[:, None]
    index = torch.cat([dominant, centres])
    kept = torch.cat([x[dominant], merged])
    sizes = torch.cat([torch.ones(len(dominant), device=x.device), counts])
    order = index.argsort()
    return index[order], kept[order].to(tokens.dtype), sizes[order]


@pytest.mark.parametrize("n,dim", [(2, 8), (7, 8), (50, 16), (333, 64), (1369, 96)])
@pytest.mark.parametrize("seed", [0, 1])
def test_visionzip_equals_its_previous_code_bit_for_bit(n, dim, seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, dim, generator=g) * torch.rand(n, 1, generator=g) * 4  # uneven norms
    for dtype in (torch.float32, torch.bfloat16):
        for keep in (0.05, 0.3, 0.5, 0.7, 0.99):
            k = select.kept_count(n, keep)
            for ratio in (0.2, 0.0, 0.9):
                got = select.visionzip_select(tokens.to(dtype), k, contextual_ratio=ratio)
                want = visionzip_before(tokens.to(dtype), k, contextual_ratio=ratio)
                for name, a, b in zip(("index", "kept", "sizes"), got, want):
                    assert a.dtype == b.dtype and torch.equal(a, b), (n, seed, dtype, k, ratio, name)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
def test_kernel_equals_the_torch_loop_on_cuda():
    check_against_loop("cuda")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("n", [1369, 2704, 4097])  # 1036 and 1456 px pages of Qwen2-VL; 16 warps
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_divprune_on_cuda_takes_the_kernel_and_equals_the_torch_path(n, dtype, monkeypatch):
    tokens = torch.randn(n, 1536, generator=torch.Generator().manual_seed(n)).to("cuda", dtype)
    launched = []
    kernel = select_kernels.max_min_greedy
    monkeypatch.setattr(select_kernels, "max_min_greedy", lambda *a: launched.append(a[2]) or kernel(*a))
    for k in (1, select.kept_count(n, 0.3), select.kept_count(n, 0.5), select.kept_count(n, 0.7), n - 1):
        fast = select.divprune_select(tokens, k)
        assert launched[-1:] == [k]
        with monkeypatch.context() as m:
            m.setattr(select_kernels, "ENABLED", False)
            slow = select.divprune_select(tokens, k)
        for name, a, b in zip(("index", "kept", "sizes"), fast, slow):
            assert torch.equal(a, b), (n, dtype, k, name)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("fn", [select.divprune_select, select.visionzip_select], ids=lambda f: f.__name__)
def test_selection_waits_for_no_host_sync_on_cuda(fn):
    """Once warmed up (the kernel's one-off check compares on the host), a selection only queues work."""
    tokens = torch.randn(2704, 1536, generator=torch.Generator().manual_seed(0)).to("cuda", torch.bfloat16)
    fn(tokens, 1352)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        index, kept, sizes = fn(tokens, 1352)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert index.shape == (1352,) and kept.shape == (1352, 1536) and sizes.shape == (1352,)


@pytest.mark.gpu
@needs_cuda
def test_visionzip_on_cuda_equals_its_previous_code():
    """Same tokens chosen and grouped; merged means agree to float rounding (index_add's atomic
    additions on CUDA may sum a group in any order)."""
    for n in (1369, 2704):
        tokens = torch.randn(n, 1536, generator=torch.Generator().manual_seed(n)).to("cuda", torch.bfloat16)
        for keep in (0.3, 0.5, 0.7):
            k = select.kept_count(n, keep)
            got, want = select.visionzip_select(tokens, k), visionzip_before(tokens, k)
            assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2]), (n, keep)
            torch.testing.assert_close(got[1], want[1], atol=1e-2, rtol=1e-2)


def test_graphed_selection_runs_eagerly_off_cuda():
    from evalsuite.vlm.graphed import Graphed

    from evalsuite.vlm.graphed import replaying

    graphed = Graphed(select.tome_merge)
    tokens = torch.randn(40, 16, generator=torch.Generator().manual_seed(2))
    for _ in range(3):
        with replaying():
            got = graphed(tokens, 15)
        for a, b in zip(got, select.tome_merge(tokens, 15)):
            assert torch.equal(a, b)
    assert graphed.replays == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fn", [select.tome_merge, select.visionzip_select, select.divprune_select],
                         ids=lambda f: f.__name__)
def test_graphed_selection_replays_the_eager_result_on_cuda(fn):
    """First sight eager, second a capture, then replays: every call gives what the function gives, for
    new inputs of the same shape too, and another shape is a graph of its own."""
    from evalsuite.vlm.graphed import Graphed, replaying

    graphed = Graphed(fn)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(1369, 1536, generator=g).to("cuda", torch.bfloat16)
    for _ in range(3):  # outside replaying(): always eager
        graphed(tokens, 684)
    assert not graphed.seen and graphed.replays == 0
    for n, k in ((1369, 684), (1369, 684), (1369, 684), (2704, 811), (2704, 811), (1369, 684)):
        tokens = torch.randn(n, 1536, generator=g).to("cuda", torch.bfloat16)
        want = fn(tokens, k)
        with replaying():
            got = graphed(tokens, k)
        assert torch.equal(got[0], want[0]), (fn.__name__, n)
        torch.testing.assert_close(got[1], want[1], atol=1e-2, rtol=0)  # index_add's atomics round alike only mostly
        torch.testing.assert_close(got[2], want[2])
    assert len(graphed.seen) == 2 and graphed.replays == 4  # the calls after a first sight
    from evalsuite.methods import graphs

    mine = [entry for key, entry in graphs._GRAPHS.items() if key[0] is fn]
    # one graph per shape, reading copies: tokens that come back at an earlier call's address (as the
    # tower's do) must not be captured again in place, inside what the benchmark times
    assert len(mine) == 2 and not any(entry.in_place or entry.seen for entry in mine)
