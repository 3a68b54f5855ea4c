"""The VLM pieces apart from parity: selections, manifests, the offline tokenizer, method
resolution, and a case through the engine with bad samples in it."""

import copy
import hashlib

import pytest
import torch
from PIL import Image, ImageDraw

from evalsuite.data.sample import Sample, SampleError
from evalsuite.vlm import manifest, select
from evalsuite.vlm.methods import VLMUsageError, resolve

SELECTIONS = [select.random_select, select.tome_merge, select.visionzip_select, select.divprune_select]


@pytest.mark.parametrize("fn", SELECTIONS, ids=lambda f: f.__name__)
def test_selection_contract(fn):
    tokens = torch.randn(50, 16, generator=torch.Generator().manual_seed(1))
    index, kept, sizes = fn(tokens, 20, generator=torch.Generator().manual_seed(0))
    assert index.shape == (20,) and kept.shape == (20, 16) and sizes.shape == (20,)
    assert torch.equal(index, index.sort().values) and len(set(index.tolist())) == 20
    assert float(sizes.sum()) in (20.0, 50.0)  # a selection stands for itself, a merge for every input
    if float(sizes.sum()) == 20.0:
        assert torch.equal(kept, tokens[index])
    else:  # size-weighted merging keeps the mass-weighted mean
        assert torch.allclose((kept * sizes[:, None]).sum(0) / 50, tokens.mean(0), atol=1e-5)
    same = fn(tokens, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(same[0], torch.arange(50)) and torch.equal(same[1], tokens)


def test_divprune_prefers_distinct_tokens():
    base = torch.eye(4)
    tokens = torch.cat([base, base + 0.01, base + 0.02])  # three near-copies of four directions
    index, _, _ = select.divprune_select(tokens, 4)
    assert sorted(i % 4 for i in index.tolist()) == [0, 1, 2, 3]


def test_random_selection_is_seeded():
    tokens = torch.randn(30, 8)
    a = select.random_select(tokens, 10, generator=torch.Generator().manual_seed(3))[0]
    b = select.random_select(tokens, 10, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b)


def test_methods_refuse_points_they_cannot_run_at():
    assert resolve("downscale", {"keep": 0.5}, "pre_llm").point == "image"
    assert resolve("tome", {"merge_factor": 0.3}, "pre_llm").keep == pytest.approx(0.7)
    with pytest.raises(VLMUsageError, match="avit.*cannot run at insertion point 'pre_llm'"):
        resolve("avit", {"sparsity": 0.5}, "pre_llm")
    with pytest.raises(VLMUsageError, match="visionzip.*cannot run at insertion point 'vision'"):
        resolve("visionzip", {"keep": 0.5}, "vision")
    assert resolve("tome", {"merge_factor": 0.5}, "vision").tower == "tome"
    with pytest.raises(VLMUsageError, match="divprune.*cannot run at insertion point 'vision'"):
        resolve("divprune", {"keep": 0.5}, "vision")
    assert resolve("v2drop", {"keep": 0.5, "layers": [1, 3]}, "vision").tower == "v2drop"
    with pytest.raises(VLMUsageError, match="layers applies inside the vision tower only"):
        resolve("random", {"keep": 0.5, "layers": [1]}, "pre_llm")
    with pytest.raises(VLMUsageError, match=r"\['r'\]"):
        resolve("tome", {"r": 4}, "pre_llm")
    with pytest.raises(VLMUsageError, match="kept fraction"):
        resolve("random", {"keep": 0.0}, "pre_llm")


def test_pre_llm_methods_run_before_the_language_model_only():
    """Their specs offer only ``pre_llm``: a matrix pairing them with an encoder is refused at collection
    (tests/test_matrix.py checks that refusal for any method)."""
    from evalsuite.methods import spec_of

    spec = spec_of("visionzip", {"keep": 0.5})
    assert spec.id_part == "visionzip_k0.5" and spec.insertion == {"pre_llm"}
    with pytest.raises(ValueError, match="unknown key"):
        spec_of("divprune", {"ratio": 0.5})


def _folder(tmp_path, content=b"weights", **fields):
    (tmp_path / "model.safetensors").write_bytes(content)
    values = {"id": "m", "family": "qwen2_vl", "path": "model.safetensors", "format": "safetensors",
              "quant": "bf16", "checksum_sha256": hashlib.sha256(b"weights").hexdigest(), "revision": "abc",
              "license": "apache-2.0", **fields}
    lines = [f'{k} = "{v}"' for k, v in values.items() if v is not None]
    (tmp_path / "manifest.toml").write_text("\n".join(lines), encoding="utf-8")
    return tmp_path


def test_manifest_checks_every_weights_file(tmp_path):
    info = manifest.verify(_folder(tmp_path))
    assert info.family == "qwen2_vl" and info.files == (tmp_path / "model.safetensors",)


def test_manifest_wrong_checksum_names_the_file(tmp_path):
    folder = _folder(tmp_path, content=b"tampered")
    with pytest.raises(manifest.ManifestError, match=r"model\.safetensors: sha256 .* does not match"):
        manifest.verify(folder)


@pytest.mark.parametrize("fields,message", [
    ({"checksum_sha256": None}, "missing field.*checksum_sha256"),
    ({"checksum_sha256": ""}, "no checksum_sha256"),
    ({"path": "pytorch_model.bin"}, r"pytorch_model\.bin: only \*\.safetensors"),
    ({"format": "pytorch"}, "only safetensors"),
])
def test_manifest_refuses(tmp_path, fields, message):
    with pytest.raises(manifest.ManifestError, match=message):
        manifest.verify(_folder(tmp_path, **fields))


def test_manifest_refuses_unlisted_weights(tmp_path):
    folder = _folder(tmp_path)
    (folder / "extra.safetensors").write_bytes(b"x")
    with pytest.raises(manifest.ManifestError, match=r"extra\.safetensors: weights file not listed"):
        manifest.verify(folder)


def test_folder_without_manifest_is_refused(tmp_path):
    from evalsuite.models.qwen2_vl import create

    with pytest.raises(manifest.ManifestError, match=r"manifest\.toml: model manifest not found"):
        create("m", path=str(tmp_path), min_pixels=3136, max_pixels=50176)


def test_offline_tokenizer_matches_the_config_ids():
    from evalsuite.vlm.configs import TINY
    from evalsuite.vlm.tokenizer import qwen2_tokenizer

    tokenizer = qwen2_tokenizer()
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == TINY["image_token_id"]
    assert tokenizer.convert_tokens_to_ids("<|vision_start|>") == TINY["vision_start_token_id"]
    assert tokenizer.convert_tokens_to_ids("<|vision_end|>") == TINY["vision_end_token_id"]
    assert tokenizer("user\n2024")["input_ids"] == [872, 198, 17, 15, 17, 19]  # Qwen2 splits single digits
    assert tokenizer.decode(tokenizer("Total: RM 9.00")["input_ids"]) == "Total: RM 9.00"


def _page(size, text="TOTAL 9.00"):
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((4, 4), text, fill="black")
    return image


def _missing():
    raise SampleError("bad/missing: file not found")


def test_bad_samples_fail_alone_and_the_case_goes_on():
    from evalsuite.engine import Engine, EngineSettings
    from evalsuite.matrix import CaseSpec, DatasetSpec, ModelSpec
    from evalsuite.vlm.configs import TINY

    config = copy.deepcopy(TINY)
    config["max_position_embeddings"] = 60  # a 56 px page fits, a 224 px one (64 visual tokens) does not
    model = ModelSpec("tiny_short", "qwen2_vl", 224, "cpu", "float32",
                      {"config": config, "min_pixels": 3136, "max_pixels": 50176, "max_new_tokens": 4})
    dataset = DatasetSpec("bad", "samples")
    samples = [
        Sample("bad/ok", "bad", "document", load=lambda: _page((56, 56)), reference_text="TOTAL 9.00"),
        Sample("bad/wide", "bad", "document", load=lambda: _page((3000, 14))),
        Sample("bad/long", "bad", "document", load=lambda: _page((224, 224))),
        Sample("bad/missing", "bad", "document", load=_missing),
        Sample("bad/ok2", "bad", "document", load=lambda: _page((84, 56), "RM 3")),
    ]
    engine = Engine(EngineSettings(ocr_engine=None, batch_size=2))
    engine._datasets[dataset.id] = samples  # the engine's per-dataset sample cache: a dataset of bad inputs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        none = engine.evaluate(CaseSpec(model, "none", {}, "none", dataset, {}, "test"))
        errors = {r.sample_id: r.error for r in none.samples if r.error}
        assert set(errors) == {"bad/wide", "bad/long", "bad/missing"}
        assert "aspect ratio" in errors["bad/wide"] and "exceeds the model's context" in errors["bad/long"]
        assert errors["bad/missing"].startswith("bad/missing")
        ok = [r for r in none.samples if r.error is None]
        assert [r.sample_id for r in ok] == ["bad/ok", "bad/ok2"] and "answer_wer" in ok[0].kpis
        assert none.kpis["answer_agreement"] == 1.0 and none.labels == ["vlm", "random-weights"]
        assert none.env["min_pixels"] == "3136" and none.env["max_pixels"] == "50176"

        random = engine.evaluate(CaseSpec(model, "random", {"keep": 0.5}, "random_k0.5", dataset, {}, "test"))
        by_id = {r.sample_id: r for r in random.samples}
        assert by_id["bad/ok"].error is None and by_id["bad/ok"].kpis["tokens_after"] == 2
        assert random.kpis["tokens_reduction_pct"] == 50.0
        assert random.env["insertion"] == "pre_llm" and none.env["model_source"] == "config:qwen2_vl"

        adapter = engine.model(model)
        first = engine.vlm_references[(model.id, dataset.id)].full.answers[1][0]
        adapter.end_ids = adapter.end_ids | {first}  # the second page's answer now ends before it starts
        again = DatasetSpec("bad_again", "samples")
        engine._datasets[again.id] = samples
        empty = engine.evaluate(CaseSpec(model, "none", {}, "none", again, {}, "test"))
        by_id = {r.sample_id: r for r in empty.samples}
        assert by_id["bad/ok2"].error == "bad/ok2: empty answer"
        assert by_id["bad/ok2"].kpis["tokens_before"] == 6  # 84 x 56 px: 3 x 2 merge units, answered or not
        assert len(empty.samples) == len(samples)  # every sample has its row, failed or not
    finally:
        torch.set_num_threads(threads)


def test_a_compression_that_did_not_fire_fails_the_case():
    """min_pixels pinned at the full size: the processor enlarges the downscaled page back (16 visual
    tokens where the 3x3 of the resize were planned)."""
    from evalsuite.engine import Engine, EngineSettings
    from evalsuite.matrix import CaseSpec, DatasetSpec, ModelSpec
    from evalsuite.vlm.case import CompressionNotFired

    model = ModelSpec("tiny_pinned", "qwen2_vl", 224, "cpu", "float32",
                      {"config": "tiny", "min_pixels": 112 * 112, "max_pixels": 112 * 112, "max_new_tokens": 2})
    dataset = DatasetSpec("pages", "samples")
    engine = Engine(EngineSettings(ocr_engine=None, batch_size=2))
    engine._datasets[dataset.id] = [Sample("pages/a", "pages", "document", load=lambda: _page((112, 112)))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert engine.evaluate(CaseSpec(model, "none", {}, "none", dataset, {}, "test")).samples[0].error is None
        expected = "pages/a: the language model saw 59 tokens, the method planned 52"
        with pytest.raises(CompressionNotFired, match=expected):
            engine.evaluate(CaseSpec(model, "downscale", {"keep": 0.5}, "downscale_k0.5", dataset, {}, "test"))
    finally:
        torch.set_num_threads(threads)


def test_a_method_inside_the_language_model_brings_its_own_prefill(monkeypatch):
    """The hook an in-LM method (V2Drop, FastV) plugs into: its prefill replaces the eager one, the
    visual tokens all enter the language model, and a prefill that changes nothing answers as `none`."""
    from evalsuite.engine import Engine, EngineSettings
    from evalsuite.matrix import CaseSpec, DatasetSpec, ModelSpec
    from evalsuite.vlm.generate import eager_prefill
    from evalsuite.vlm.methods import TABLE, Entry

    calls = []

    def prefill(parts, inputs):
        calls.append(inputs.visual_mask.sum(dim=1).tolist())
        return eager_prefill(parts, inputs)

    monkeypatch.setitem(TABLE, "lm_probe", Entry(frozenset({"lm"}), lambda p: 1.0, params=frozenset(),
                                                 prefill=lambda params, adapter: prefill))
    assert resolve("lm_probe", {}, "pre_llm").point == "lm"
    model = ModelSpec("tiny_lm", "qwen2_vl", 224, "cpu", "float32",
                      {"config": "tiny", "min_pixels": 3136, "max_pixels": 50176, "max_new_tokens": 3})
    dataset = DatasetSpec("pages", "samples")
    engine = Engine(EngineSettings(ocr_engine=None, batch_size=2))
    engine._datasets[dataset.id] = [Sample("pages/a", "pages", "document", load=lambda: _page((112, 56))),
                                    Sample("pages/b", "pages", "document", load=lambda: _page((56, 56)))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine.evaluate(CaseSpec(model, "none", {}, "none", dataset, {}, "test"))
        probe = engine.evaluate(CaseSpec(model, "lm_probe", {}, "lm_probe", dataset, {}, "test"))
    finally:
        torch.set_num_threads(threads)
    assert calls == [[8, 4]] * 3  # two untimed warm-ups (timing_warmup), then the one batch: every visual token
    assert probe.env["insertion"] == "lm" and probe.kpis["answer_exact_match"] == 1.0


def test_the_compression_step_is_timed_warm_and_repeated(monkeypatch):
    """A selection whose first call is slow (a kernel build, autotuning) does not set the case's
    compression latency: like the encoder cases, the step is timed `timing_repeats` times after
    `timing_warmup` untimed runs, and the pass's picks are still the seed's. A cold tower does not
    set the reference's times either (each pass runs its first batch untimed first)."""
    import time

    from evalsuite.engine import Engine, EngineSettings
    from evalsuite.matrix import CaseSpec, DatasetSpec, ModelSpec
    from evalsuite.vlm.methods import TABLE, Entry

    calls = []

    def slow_first(tokens, k, generator=None):
        calls.append(len(tokens))
        if len(calls) == 1:
            time.sleep(0.5)
        return select.random_select(tokens, k, generator=generator)

    monkeypatch.setitem(TABLE, "slow_first", Entry(frozenset({"pre_llm"}), select=slow_first))
    model = ModelSpec("tiny_timed", "qwen2_vl", 224, "cpu", "float32",
                      {"config": "tiny", "min_pixels": 3136, "max_pixels": 50176, "max_new_tokens": 2})
    dataset = DatasetSpec("pages", "samples")
    engine = Engine(EngineSettings(ocr_engine=None, batch_size=2, timing_warmup=1, timing_repeats=3))
    engine._datasets[dataset.id] = [Sample(f"pages/{i}", "pages", "document", load=lambda: _page((112, 56)))
                                    for i in range(3)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        adapter = engine.model(model)
        vision, towers = adapter.vision, []

        def slow_first_tower(encoded):  # the reference pass meets a cold tower: its times must not show it
            towers.append(len(encoded))
            if len(towers) == 1:
                time.sleep(0.5)
            return vision(encoded)

        monkeypatch.setattr(adapter, "vision", slow_first_tower)
        none = engine.evaluate(CaseSpec(model, "none", {}, "none", dataset, {}, "test"))
        assert towers == [2, 2, 1] and none.kpis["vision_ms_p50"] < 250  # one warm-up batch, then 2 batches
        slow = engine.evaluate(CaseSpec(model, "slow_first", {"keep": 0.5}, "slow_first_k0.5", dataset, {}, "test"))
        plain = engine.evaluate(CaseSpec(model, "random", {"keep": 0.5}, "random_k0.5", dataset, {}, "test"))
    finally:
        torch.set_num_threads(threads)
    # the first batch (2 pages) once untimed (timing_warmup, as every pass), its selections timed apart
    # (1 untimed + 3 timed), then each page once in the pass
    assert len(calls) == 2 + 2 * (1 + 3) + 3
    assert slow.kpis["compression_latency_ms_p95"] < 250
    assert [r.kpis["answer_exact_match"] for r in slow.samples] == [r.kpis["answer_exact_match"] for r in plain.samples]
    assert [r.kpis["tokens_after"] for r in slow.samples] == [4, 4, 4]
