"""Parity of the VLM path: with zero compression every method answers exactly as the unpatched model.

The unpatched reference is transformers' own ``model.generate(..., do_sample=False)`` on the
processor's inputs; evalsuite's path is its own greedy loop (explicit embeddings, M-RoPE
positions from ``get_rope_index``, a ``DynamicCache``) with the method's selection in between.
A batch of two differently sized images checks left padding and per-sample positions.
"""

import inspect

import pytest
import torch
from PIL import Image, ImageDraw

from evalsuite.vlm.generate import greedy
from evalsuite.vlm.methods import TABLE, resolve
from evalsuite.vlm.select import kept_count

ZERO = [(name, params) for name, params in [
    ("none", {}), ("random", {"keep": 1.0}), ("tome", {"merge_factor": 0.0}), ("visionzip", {"keep": 1.0}),
    ("divprune", {"keep": 1.0}), ("downscale", {"keep": 1.0}),
]]


def _images(sizes=((196, 112), (112, 112))):
    images = []
    for i, (w, h) in enumerate(sizes):
        image = Image.new("RGB", (w, h), (255 - 40 * i, 255, 255))
        ImageDraw.Draw(image).text((8, 8 + 10 * i), f"TOTAL RM {i + 9}.00", fill=(0, 0, 0))
        images.append(image)
    return images


def _reference_generate(adapter, encoded, ids):
    """Sample answers of transformers' generate on the same tokens and pixels."""
    length = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), length), adapter.pad_id)
    mask = torch.zeros(len(ids), length, dtype=torch.long)
    for b, row in enumerate(ids):
        input_ids[b, length - len(row):] = torch.tensor(row)
        mask[b, length - len(row):] = 1
    device = adapter.device
    kwargs = dict(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                  pixel_values=torch.cat([e.pixel_values for e in encoded]).to(device, adapter.dtype),
                  image_grid_thw=torch.stack([e.grid_thw for e in encoded]).to(device))
    if "mm_token_type_ids" in inspect.signature(adapter.model.forward).parameters:
        kwargs["mm_token_type_ids"] = (kwargs["input_ids"] == adapter.image_token_id).int()
    out = adapter.model.generate(**kwargs, max_new_tokens=adapter.max_new_tokens, do_sample=False,
                                 pad_token_id=adapter.pad_id, eos_token_id=sorted(adapter.end_ids))
    return [_trim(row.tolist(), adapter.end_ids) for row in out[:, length:].cpu()]


def _trim(row, end_ids):
    n = next((i for i, t in enumerate(row) if t in end_ids), len(row))
    return row[:n]


def _answers(adapter, images, name, params, prompt="Read all the text.", point="pre_llm"):
    """evalsuite's path for method ``name`` -> (answers, tokens the LM saw per sample)."""
    method = resolve(name, params, point)
    scale = method.keep ** 0.5 if method.point == "image" else 1.0
    encoded = [adapter.encode(image, scale) for image in images]
    ids = [adapter.prompt_ids(prompt, e.num_tokens) for e in encoded]
    slots = None
    if method.point == "vision":
        visual, slots, _ = adapter.vision_with_unit_drop(encoded, method, torch.Generator().manual_seed(0))
    else:
        visual = adapter.vision(encoded)
    if method.select is not None and method.point == "pre_llm":
        picks = [method.select(v, kept_count(len(v), method.keep), generator=torch.Generator().manual_seed(0),
                               **method.options) for v in visual]
        slots, visual = [p[0] for p in picks], [p[1] for p in picks]
    gen = greedy(adapter.parts, adapter.prefill_inputs(ids, encoded, visual, slots), adapter.max_new_tokens,
                 adapter.end_ids, adapter.pad_id)
    return [gen.answer_ids(b, adapter.end_ids) for b in range(len(images))], gen.lm_tokens, encoded, ids


@pytest.fixture(scope="module")
def tiny():
    from evalsuite.models.qwen2_vl import create

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model is hundreds of small ops: a second thread only adds hand-offs
    torch.manual_seed(0)
    yield create("tiny", config="tiny", min_pixels=56 * 56, max_pixels=224 * 224, max_new_tokens=8)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def generated(tiny):
    """transformers' generate on the test images: the answers every zero-compression method must give."""
    encoded = [tiny.encode(image) for image in _images()]
    ids = [tiny.prompt_ids("Read all the text.", e.num_tokens) for e in encoded]
    return _reference_generate(tiny, encoded, ids)


def test_every_vlm_method_is_listed_for_parity():
    assert {name for name, _ in ZERO} | {"avit", "v2drop", "fastv"} == set(TABLE)
    assert {name for name, _ in LM_ZERO} == {n for n, e in TABLE.items() if e.lm_drop is not None}
    assert {name for name, _ in TOWER_ZERO} == {n for n, e in TABLE.items() if e.tower is not None}


@pytest.mark.parametrize("name,params", ZERO, ids=[n for n, _ in ZERO])
def test_zero_compression_answers_as_generate(tiny, generated, name, params):
    answers, lm_tokens, encoded, ids = _answers(tiny, _images(), name, params)
    assert answers == generated
    assert lm_tokens == [len(x) for x in ids]
    assert all(len(a) == tiny.max_new_tokens for a in answers)  # random weights: no early end, all 8 compared


TOWER_ZERO = [("random", {"keep": 1.0}), ("v2drop", {"keep": 1.0}), ("random", {"keep": 1.0, "layers": [0]}),
              ("avit", {"sparsity": 0.0}), ("tome", {"merge_factor": 0.0})]


@pytest.mark.parametrize("name,params", TOWER_ZERO, ids=["random", "v2drop", "random_layer0", "avit", "tome"])
def test_zero_compression_in_the_tower_answers_as_generate(tiny, generated, name, params):
    answers, lm_tokens, _, ids = _answers(tiny, _images(), name, params, point="vision")
    assert answers == generated and lm_tokens == [len(x) for x in ids]


def test_dropping_units_after_the_last_block_equals_selecting_them_before_the_language_model(tiny):
    """A unit is four tower rows merged into one token: cut after the last block, the kept tokens are
    exactly the uncompressed tokens of the kept units."""
    encoded = [tiny.encode(image) for image in _images()]
    depth = len(tiny.model.model.visual.blocks)
    method = resolve("random", {"keep": 0.5, "layers": [depth - 1]}, "vision")
    kept, units, _ = tiny.vision_with_unit_drop(encoded, method, torch.Generator().manual_seed(0))
    full = tiny.vision(encoded)
    for k, u, f, e in zip(kept, units, full, encoded):
        assert len(u) == kept_count(e.num_tokens, 0.5)
        assert torch.allclose(k, f[u], atol=1e-5)
    for early in (resolve("v2drop", {"keep": 0.5, "layers": [0]}, "vision"),
                  resolve("avit", {"sparsity": 0.5, "layers": [0]}, "vision")):
        kept, units, sizes = tiny.vision_with_unit_drop(encoded, early, torch.Generator())
        assert [len(u) for u in units] == [kept_count(e.num_tokens, 0.5) for e in encoded]
        assert not torch.allclose(kept[0], full[0][units[0]], atol=1e-3)  # later blocks saw fewer units
        assert all(torch.equal(s, torch.ones(len(u))) for s, u in zip(sizes, units))
    merge = resolve("tome", {"merge_factor": 0.5, "layers": [0, 1]}, "vision")
    kept, units, sizes = tiny.vision_with_unit_drop(encoded, merge, torch.Generator())
    assert [len(u) for u in units] == [kept_count(e.num_tokens, 0.5) for e in encoded]
    assert [float(s.sum()) for s in sizes] == [float(e.num_tokens) for e in encoded]  # every unit is in one


def test_a_vit_scores_use_the_attention_the_tower_computes(tiny):
    """The recomputed probabilities, applied to the values and projected, give the attention's own output."""
    from evalsuite.patch.qwen2_vl import attention_probs

    encoded = [tiny.encode(image) for image in _images()]
    visual = tiny.model.model.visual
    seen = {}

    def capture(module, args, kwargs, output):
        seen.update(hidden=args[0] if args else kwargs["hidden_states"], kwargs=kwargs, output=output)

    handle = visual.blocks[1].attn.register_forward_hook(capture, with_kwargs=True)
    try:
        tiny.vision(encoded)
    finally:
        handle.remove()
    attn, hidden, kwargs = visual.blocks[1].attn, seen["hidden"], seen["kwargs"]
    with torch.inference_mode():
        probs = attention_probs(attn, hidden, kwargs["cu_seqlens"], kwargs["position_embeddings"])
        v = attn.qkv(hidden).reshape(hidden.shape[0], 3, attn.num_heads, -1)[:, 2].transpose(0, 1)  # [H, R, d]
        bounds = kwargs["cu_seqlens"].tolist()
        out = torch.cat([(p @ v[:, s:e]).transpose(0, 1).reshape(e - s, -1) for p, s, e in
                         zip(probs, bounds[:-1], bounds[1:])])
        assert torch.allclose(attn.proj(out), seen["output"], atol=1e-5)
    assert all(torch.allclose(p.sum(-1), torch.ones(())) for p in probs)


def test_compression_changes_what_the_language_model_sees(tiny):
    images = _images()
    full, _, encoded, ids = _answers(tiny, images, "none", {})
    for name, params in [("random", {"keep": 0.5}), ("divprune", {"keep": 0.5}), ("tome", {"merge_factor": 0.5})]:
        _, lm_tokens, _, _ = _answers(tiny, images, name, params)
        expected = [len(x) - e.num_tokens + kept_count(e.num_tokens, 0.5) for x, e in zip(ids, encoded)]
        assert lm_tokens == expected, name


def test_kept_tokens_keep_their_positions_in_the_full_sequence(tiny):
    """The M-RoPE positions of kept tokens are those of the uncompressed sequence, per sample of a batch."""
    images = _images()
    encoded = [tiny.encode(image) for image in images]
    ids = [tiny.prompt_ids("Read.", e.num_tokens) for e in encoded]
    visual = tiny.vision(encoded)
    full = tiny.prefill_inputs(ids, encoded, visual)
    slots = [torch.tensor([0, 3, len(v) - 1]) for v in visual]
    cut = tiny.prefill_inputs(ids, encoded, [v[s] for v, s in zip(visual, slots)], slots)
    for b, s in enumerate(slots):
        full_visual = full.position_ids[:, b, full.visual_mask[b]]  # [3, N_b]
        assert torch.equal(cut.position_ids[:, b, cut.visual_mask[b]], full_visual[:, s])
        text_full = full.position_ids[:, b, (full.attention_mask[b] == 1) & ~full.visual_mask[b]]
        text_cut = cut.position_ids[:, b, (cut.attention_mask[b] == 1) & ~cut.visual_mask[b]]
        assert torch.equal(text_cut, text_full)  # text after the image keeps its offsets
        assert int(cut.next_position[b]) == int(full.next_position[b])
        assert torch.equal(cut.inputs_embeds[b, cut.visual_mask[b]], visual[b][s])


def test_qwen2_5_vl_answers_as_generate():
    """Qwen2.5-VL (windowed attention in the tower) through the same path, with a selection at zero."""
    from evalsuite.models.qwen2_vl import create

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        adapter = create("tiny25", config="tiny_qwen2_5_vl", min_pixels=56 * 56, max_pixels=224 * 224,
                         max_new_tokens=8)
        assert type(adapter.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
        for name, params in [("none", {}), ("divprune", {"keep": 1.0})]:
            answers, _, encoded, ids = _answers(adapter, _images(), name, params)
            assert answers == _reference_generate(adapter, encoded, ids)
        for name, params in TOWER_ZERO:
            answers, _, encoded, ids = _answers(adapter, _images(), name, params, point="vision")
            assert answers == _reference_generate(adapter, encoded, ids), name
    finally:
        torch.set_num_threads(threads)


def test_windowed_tower_drops_keep_the_other_windows_exact():
    """Qwen2.5-VL with windowed attention in every block: dropping a whole window after block 0 leaves
    every other window's tokens exactly as uncompressed (windows never see each other), which holds
    only if the windows' cu_seqlens were recomputed for the kept units."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from evalsuite.patch.qwen2_vl import tower_with_unit_drop
    from evalsuite.vlm.configs import named

    config = named("tiny_qwen2_5_vl")
    config["vision_config"].update(depth=3, fullatt_block_indexes=[])
    torch.manual_seed(0)
    visual = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_dict(config)).model.visual.eval()
    from transformers import Qwen2VLImageProcessor

    processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=224 * 224)
    out = processor(images=_images(((196, 112), (112, 112))), return_tensors="pt")
    pixels, grid = out["pixel_values"], out["image_grid_thw"]
    units = [int(g.prod()) // 4 for g in grid]

    def first_window_lowest(index, x, x_in, counts):
        return torch.arange(sum(counts), dtype=torch.float32)  # window order: units 0-3 are image 0's first window

    with torch.inference_mode():
        full = visual(pixels, grid_thw=grid)
        full = full if isinstance(full, torch.Tensor) else full.pooler_output
        kept, ids, _ = tower_with_unit_drop(visual, pixels, grid, {0: [units[0] - 4, units[1]]}, first_window_lowest)
    assert [len(i) for i in ids] == [units[0] - 4, units[1]]
    raster = torch.cat([ids[0], ids[1] + units[0]])
    assert torch.allclose(kept, full[raster], atol=1e-5)
    assert len(set(range(units[0])) - set(ids[0].tolist())) == 4


@pytest.mark.gpu
@pytest.mark.parametrize("name,params", ZERO, ids=[n for n, _ in ZERO])
def test_zero_compression_answers_as_generate_2b_bf16(name, params):
    from evalsuite.models.qwen2_vl import create

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    with torch.device("cuda"):
        adapter = create("2b", config="qwen2_vl_2b", min_pixels=56 * 56, max_pixels=448 * 448, max_new_tokens=16)
    adapter.to("cuda", torch.bfloat16)
    images = _images(((448, 336), (336, 336)))
    answers, _, encoded, ids = _answers(adapter, images, name, params)
    assert answers == _reference_generate(adapter, encoded, ids)


LM_ZERO = [("v2drop", {"layers": [1], "keep": 1.0}), ("fastv", {"k": 1, "keep": 1.0})]


@pytest.mark.parametrize("name,params", LM_ZERO, ids=[n for n, _ in LM_ZERO])
def test_zero_drop_inside_the_language_model_answers_as_generate(tiny, generated, name, params):
    """The VLM case's in-LM path (lm_drop's own layer loop and KV cache, from the adapter's inputs) at zero."""
    from evalsuite.vlm.case import _lm_run

    method = resolve(name, params, "lm", tiny.num_layers)
    encoded = [tiny.encode(image) for image in _images()]
    ids = [tiny.prompt_ids("Read all the text.", e.num_tokens) for e in encoded]
    inputs = tiny.prefill_inputs(ids, encoded, tiny.vision(encoded))
    result = _lm_run(tiny, inputs, method.schedule, "eager")
    assert [_trim(row, tiny.end_ids) for row in result.tokens.tolist()] == generated
