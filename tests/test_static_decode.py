"""Static-KV-cache decoding (and its CUDA graph on a GPU) gives the eager greedy answer token for token."""

import pytest
import torch

from evalsuite.vlm import lm_drop
from evalsuite.vlm.lm_drop import DropSchedule

from .lm_drop_helpers import make_batch, tiny_qwen2_vl

SCHEDULES = [lm_drop.NO_DROP, DropSchedule("v2drop", (1, 3), (0.5, 0.5)), DropSchedule("fastv", (2,), (0.5,))]


@pytest.fixture(scope="module")
def model():
    return tiny_qwen2_vl()


def test_static_cache_equals_eager_on_cpu(model):
    batch = make_batch([(112, 84, 5), (56, 56, 9)], seed=4)
    for schedule in SCHEDULES:
        eager = lm_drop.generate(model, batch, schedule, max_new_tokens=8)
        static = lm_drop.generate(model, batch, schedule, max_new_tokens=8, decode="static")
        assert static.decode_path == "static"
        assert static.tokens.tolist() == eager.tokens.tolist(), schedule


def _greedy_with_eos(free: list[list[int]], eos: int, pad: int = 0) -> list[list[int]]:
    """What transformers makes of free-running greedy rows: pad after each row's eos, stop when all are done."""
    rows, ends = [], []
    for row in free:
        out, end = [], None
        for j, t in enumerate(row):
            out.append(pad if end is not None else t)
            end = j if end is None and t == eos else end
        rows.append(out)
        ends.append(end)
    stop = len(free[0]) if None in ends else max(ends) + 1
    return [r[:stop] for r in rows]


def test_static_cache_stops_where_eager_stops_at_eos(model):
    """An eos that sample 0 emits mid-way: afterwards it gets the pad token; the answer ends when all are done."""
    batch = make_batch([(112, 84, 5), (56, 56, 9)], seed=4)
    free = lm_drop.generate(model, batch, max_new_tokens=8, stop_at_eos=False).tokens.tolist()
    eos = free[0][3]
    want = _greedy_with_eos(free, eos)
    assert want[0][4:] == [0] * len(want[0][4:])
    eager = lm_drop.generate(model, batch, max_new_tokens=8, eos_token_id=eos)
    static = lm_drop.generate(model, batch, max_new_tokens=8, eos_token_id=eos, decode="static")
    assert eager.tokens.tolist() == want
    assert static.tokens.tolist() == want


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_equals_eager():
    model = tiny_qwen2_vl().cuda()
    batch = {k: v.cuda() for k, v in make_batch([(112, 84, 5), (56, 56, 9)], seed=4).items()}
    for schedule in SCHEDULES:
        eager = lm_drop.generate(model, batch, schedule, max_new_tokens=8, stop_at_eos=False)
        graph = lm_drop.generate(model, batch, schedule, max_new_tokens=8, stop_at_eos=False, decode="static")
        assert graph.decode_path.startswith("static+graph")
        assert graph.tokens.tolist() == eager.tokens.tolist(), schedule
        print(f"{schedule.method}: decode per step eager {1e3 * eager.decode_s_per_token:.3f} ms, "
              f"graph {1e3 * graph.decode_s_per_token:.3f} ms (tiny random-weights model)")
