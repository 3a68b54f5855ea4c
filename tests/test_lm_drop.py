"""In-LM visual-token dropping (V2Drop, FastV) on tiny random Qwen2-VL / Qwen2.5-VL models: parity with
transformers' own generate at zero drop, positions and cache cut consistently, batches equal single runs."""

import copy

import pytest
import torch

from evalsuite.vlm import lm_drop
from evalsuite.vlm.lm_drop import DropSchedule, parse_schedule

from .lm_drop_helpers import IMAGE, make_batch, select, tiny_qwen2_vl

NEW = 8
SPECS_1 = [(112, 84, 5)]  # 8x6 patches -> 12 visual tokens
SPECS_2 = [(112, 84, 5), (56, 56, 9)]  # 12 and 4 visual tokens, the second left-padded


@pytest.fixture(scope="module")
def model():
    return tiny_qwen2_vl()


@pytest.fixture(scope="module")
def batches():
    return {1: make_batch(SPECS_1, seed=1), 2: make_batch(SPECS_2, seed=2)}


def _hf_greedy(model, batch):
    out = model.generate(**batch, max_new_tokens=NEW, do_sample=False)
    return out[:, batch["input_ids"].shape[1]:]


ZERO_DROP = [
    lm_drop.NO_DROP,
    DropSchedule("v2drop", (1, 3), (1.0, 1.0)),  # runs the select/compact path, keeps everything
    DropSchedule("fastv", (2,), (1.0,)),
]


@pytest.mark.parametrize("size", [1, 2])
def test_zero_drop_is_transformers_greedy(model, batches, size):
    batch = batches[size]
    want = _hf_greedy(model, batch)
    for schedule in ZERO_DROP:
        got = lm_drop.generate(model, batch, schedule, max_new_tokens=NEW)
        assert got.tokens.tolist() == want.tolist(), schedule


def test_zero_drop_is_transformers_greedy_qwen2_5_vl():
    model = tiny_qwen2_vl("qwen2_5_vl")
    batch = make_batch(SPECS_2, seed=3)
    want = _hf_greedy(model, batch)
    got = lm_drop.generate(model, batch, DropSchedule("v2drop", (2,), (1.0,)), max_new_tokens=NEW)
    assert got.tokens.tolist() == want.tolist()


def test_kept_tokens_keep_their_unpruned_positions(model, batches):
    batch = batches[2]
    inputs = lm_drop.embed_inputs(model, batch)
    full, _ = model.model.get_rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                         image_grid_thw=batch["image_grid_thw"],
                                         attention_mask=batch["attention_mask"])
    assert torch.equal(inputs.positions, full)
    state = lm_drop.prefill(model, inputs, DropSchedule("v2drop", (1, 3), (0.5, 0.5)))
    assert [(s.start, s.stop) for s in state.segments] == [(0, 1), (1, 3), (3, 4)]
    mask = batch["attention_mask"].bool()
    for seg in state.segments[1:]:
        for b in range(2):
            src = seg.source[b][seg.valid[b]]
            assert torch.all(src[1:] > src[:-1])  # original order
            assert torch.equal(seg.positions[:, b][:, seg.valid[b]], full[:, b, src])
            text = torch.nonzero(mask[b] & (batch["input_ids"][b] != IMAGE)).flatten()
            assert set(text.tolist()) <= set(src.tolist())  # no text token dropped
            assert (batch["input_ids"][b, src] == IMAGE).sum() == state.visual_tokens[seg.start][b]
        assert seg.valid[:, -1].all()  # the last column is every sample's last token
    # next position: the unpruned sequence's max + 1, as transformers' rope deltas give
    _, deltas = model.model.get_rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                           image_grid_thw=batch["image_grid_thw"],
                                           attention_mask=batch["attention_mask"])
    assert torch.equal(state.next_position, mask.sum(1) + deltas.flatten())


def test_drop_shortens_each_layers_cache_by_the_plan(model, batches):
    batch = batches[1]
    n = batch["input_ids"].shape[1]
    v2 = lm_drop.generate(model, batch, DropSchedule("v2drop", (1, 3), (0.5, 0.5)), max_new_tokens=2)
    assert v2.visual_tokens_by_sample == [[12], [6], [6], [3]]
    assert v2.kv_lengths == [n, n - 6, n - 6, n - 9]
    fv = lm_drop.generate(model, batch, parse_schedule("fastv", {"k": 2, "keep": 0.25}, 4), max_new_tokens=2)
    assert fv.kv_lengths == [n, n, n - 9, n - 9]
    assert fv.visual_tokens_layer_avg == (12 + 12 + 3 + 3) / 4
    none = lm_drop.generate(model, batch, max_new_tokens=2)
    assert v2.kv_cache_bytes / none.kv_cache_bytes == pytest.approx(sum(v2.kv_lengths) / (4 * n))
    kpis = lm_drop.kpis(v2, none)
    from evalsuite.metrics.kpis import KPIS

    for name in kpis:
        KPIS.get(name)
    assert kpis["lm_kv_cache_reduction_pct"] == pytest.approx(100 * (1 - sum(v2.kv_lengths) / (4 * n)))


@pytest.mark.parametrize("schedule", [DropSchedule("v2drop", (1, 3), (0.5, 0.34)), DropSchedule("fastv", (2,), (0.5,))],
                         ids=["v2drop", "fastv"])
def test_batched_drop_equals_each_sample_alone(model, batches, schedule):
    """Per-sample kept counts differ (12 and 4 visual tokens): the padded layout must not change any answer."""
    batch = batches[2]
    together = lm_drop.generate(model, batch, schedule, max_new_tokens=NEW, keep_state=True)
    for b in range(2):
        alone = lm_drop.generate(model, select(batch, b), schedule, max_new_tokens=NEW, keep_state=True)
        assert together.tokens[b].tolist() == alone.tokens[0].tolist()
        assert [layer[b] for layer in together.visual_tokens_by_sample] == [
            layer[0] for layer in alone.visual_tokens_by_sample]
        torch.testing.assert_close(together.state.logits[b], alone.state.logits[0], atol=1e-4, rtol=1e-4)


def test_v2drop_keeps_the_tokens_that_changed_most(model, batches):
    """Checked against transformers' own forward: its hidden states at layers 1 and 2 (inputs of layers 2, 3)."""
    batch = batches[1]
    out = model(**batch, output_hidden_states=True)
    vis = batch["input_ids"][0] == IMAGE
    change = (out.hidden_states[2][0] - out.hidden_states[1][0]).norm(dim=-1)
    idx = torch.nonzero(vis).flatten()
    want = idx[change[idx].topk(4).indices].sort().values
    state = lm_drop.prefill(model, lm_drop.embed_inputs(model, batch), DropSchedule("v2drop", (2,), (1 / 3,)))
    src = state.segments[1].source[0]
    assert torch.equal(src[vis[src]], want)


def test_fastv_keeps_the_most_attended_tokens(model, batches):
    """Checked against transformers' eager attention weights of layer k - 1 (our run keeps SDPA everywhere)."""
    batch = batches[2]
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    out = eager(**batch, output_attentions=True)
    attn = out.attentions[1][:, :, -1].mean(1)  # [B, L]: last token, layer k - 1 = 1, mean over heads
    state = lm_drop.prefill(model, lm_drop.embed_inputs(model, batch), DropSchedule("fastv", (2,), (0.5,)))
    seg = state.segments[1]
    for b in range(2):
        idx = torch.nonzero(batch["input_ids"][b] == IMAGE).flatten()
        want = idx[attn[b, idx].topk(len(idx) // 2).indices].sort().values
        src = seg.source[b][seg.valid[b]]
        assert torch.equal(src[batch["input_ids"][b, src] == IMAGE], want)


def test_published_presets_and_bad_schedules():
    assert parse_schedule("v2drop", {"preset": "qwen2_vl"}, 28) == DropSchedule("v2drop", (3, 16, 22), (0.25, 0.05, 0.0))
    with pytest.raises(ValueError, match=r"methods\.v2drop\.layers: .*depth 4"):
        parse_schedule("v2drop", {"layers": [1, 4], "keep": [0.5, 0.5]}, 4)
    with pytest.raises(ValueError, match=r"methods\.v2drop\.layers: .*not strictly increasing"):
        parse_schedule("v2drop", {"layers": [2, 2], "keep": 0.5}, 4)
    with pytest.raises(ValueError, match=r"methods\.v2drop\.keep: ratio 1\.5 is outside"):
        parse_schedule("v2drop", {"layers": [1], "keep": [1.5]}, 4)
    with pytest.raises(ValueError, match=r"methods\.fastv\.keep: ratio -0\.1"):
        parse_schedule("fastv", {"k": 2, "keep": -0.1}, 4)
    with pytest.raises(ValueError, match=r"methods\.fastv\.k: .*depth 4"):
        parse_schedule("fastv", {"k": 4}, 4)
    with pytest.raises(ValueError, match=r"methods\.v2drop\.preset: unknown preset 'llava2'"):
        parse_schedule("v2drop", {"preset": "llava2"}, 32)
    with pytest.raises(ValueError, match=r"methods\.v2drop\.ratio: unknown key"):
        parse_schedule("v2drop", {"layers": [1], "keep": 0.5, "ratio": 1}, 4)


def test_quota_is_per_image_and_text_stays():
    """Two images in one sample (groups 1 and 2) and a second sample with one image behind left padding."""
    groups = torch.tensor([[0, 1, 1, 1, 1, 0, 2, 2, 0], [0, 0, 0, 0, 1, 1, 1, 1, 0]])
    valid = torch.tensor([[True] * 9, [False, False, True, True, True, True, True, True, True]])
    scores = torch.tensor([[9.0, 1, 4, 3, 2, 9, 5, 6, 9], [9, 9, 9, 9, 1, 2, 3, 4, 9]])
    keep = lm_drop._select(scores, groups, valid, 0.5)
    assert keep.tolist() == [[True, False, True, True, False, True, False, True, True],
                             [False, False, True, True, False, False, True, True, True]]
    idx, slot_valid = lm_drop._compact(keep)
    assert idx.shape == (2, 6)  # sample 0 keeps 6, sample 1 keeps 5: one filler slot in front
    assert slot_valid.tolist() == [[True] * 6, [False] + [True] * 5]
    assert idx[0].tolist() == [0, 2, 3, 5, 7, 8] and idx[1, 1:].tolist() == [2, 3, 6, 7, 8]
