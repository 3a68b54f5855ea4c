"""In-LM dropping (V2Drop, FastV) as VLM cases: parity at zero drop, the lm_* KPIs, the static decode
path, and schedules that do not fit the model refused naming the matrix file and key.

The model is the tiny Qwen2-VL (random weights); two pages of different sizes in one batch check left
padding. The unpatched answers come from the reference pass (evaluate's own greedy loop on transformers'
language-model forward, itself pinned to ``model.generate`` by tests/test_vlm_parity.py)."""

import textwrap

import pytest
import torch
from PIL import Image, ImageDraw

from evalsuite.data.sample import Sample
from evalsuite.matrix import CaseSpec, DatasetSpec, MatrixError, ModelSpec, load
from evalsuite.methods import spec_of
from evalsuite.params import ParamError


def _page(size, text):
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((4, 4), text, fill="black")
    return image


def _engine(batch_size=2):
    from evalsuite.engine import Engine, EngineSettings

    engine = Engine(EngineSettings(ocr_engine=None, batch_size=batch_size))
    engine._datasets["pages"] = [Sample("pages/a", "pages", "document", load=lambda: _page((112, 84), "TOTAL 9.00")),
                                 Sample("pages/b", "pages", "document", load=lambda: _page((56, 56), "RM 3"))]
    return engine


def _model(model_id="tiny_lm", **params):
    return ModelSpec(model_id, "qwen2_vl", 224, "cpu", "float32",
                     {"config": "tiny", "min_pixels": 3136, "max_pixels": 50176, "max_new_tokens": 6,
                      "insertion": "lm", **params})


def _case(model, method, params, source="lm.toml"):
    spec = spec_of(method, params)
    return CaseSpec(model, method, spec.params, spec.id_part, DatasetSpec("pages", "samples"), {}, source)


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model is hundreds of small ops: a second thread only adds hand-offs
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lm_cases(one_thread):
    """none, zero-drop V2Drop and FastV, and dropping ones, on one engine (one reference pass)."""
    engine, model = _engine(), _model()
    torch.manual_seed(0)
    run = {name: engine.evaluate(_case(model, method, params)) for name, (method, params) in {
        "none": ("none", {}), "v2drop_zero": ("v2drop", {"layers": [1], "keep": 1.0}),
        "fastv_zero": ("fastv", {"k": 1, "keep": 1.0}), "v2drop": ("v2drop", {"layers": [1], "keep": [0.5]}),
        "fastv": ("fastv", {"k": 1, "keep": 0.25})}.items()}
    return engine, model, run


@pytest.mark.parametrize("name", ["v2drop_zero", "fastv_zero"])
def test_zero_drop_answers_as_the_unpatched_model(lm_cases, name):
    engine, model, run = lm_cases
    result, ref = run[name], engine.vlm_references[(model.id, "pages")].full
    answers = [r.info["answer"] for r in result.samples]
    assert answers == [r.info["answer"] for r in run["none"].samples]
    assert result.kpis["answer_exact_match"] == 1.0 and len(ref.answers[0]) == 6  # all 6 tokens compared
    assert result.kpis["tokens_after"] == result.kpis["tokens_before"] == result.kpis["lm_visual_tokens_layer_avg"]
    assert result.kpis["lm_kv_cache_reduction_pct"] == 0.0 and result.env["insertion"] == "lm"
    assert run["none"].kpis["lm_kv_cache_bytes"] == result.kpis["lm_kv_cache_bytes"]  # lm_* of the unpatched one


def test_dropping_in_the_lm_reports_layer_averaged_tokens_and_the_cut_cache(lm_cases):
    """Pages of 12 and 4 visual tokens, 2 layers, a drop before layer 1: per page (n + kept) / 2."""
    _, _, run = lm_cases
    v2drop, fastv = run["v2drop"], run["fastv"]
    assert v2drop.kpis["tokens_before"] == 8.0
    assert v2drop.kpis["tokens_after"] == pytest.approx(((12 + 6) / 2 + (4 + 2) / 2) / 2)
    assert fastv.kpis["tokens_after"] == pytest.approx(((12 + 3) / 2 + (4 + 1) / 2) / 2)
    assert v2drop.env["lm_visual_tokens_per_layer"] == "8,4"  # layer 0: (12 + 4) / 2, layer 1: (6 + 2) / 2
    for result in (v2drop, fastv):
        assert result.kpis["lm_tokens"] == run["none"].kpis["lm_tokens"]  # every token enters: fired, not refused
        assert result.kpis["lm_kv_cache_bytes"] < run["v2drop_zero"].kpis["lm_kv_cache_bytes"]
        assert result.kpis["lm_kv_cache_reduction_pct"] > 0
        for key in ("lm_prefill_ms", "lm_decode_ms_per_token", "lm_generation_ms", "lm_prefill_speedup",
                    "lm_decode_speedup", "lm_generation_speedup"):
            assert result.kpis[key] > 0, key
        assert result.env["lm_decode_path"] == "eager" and result.env["decode_path"] == "eager"
    assert all(r.error is None for r in v2drop.samples)


def test_static_decoder_times_the_static_path_and_answers_as_eager(one_thread):
    engine, model = _engine(), _model("tiny_static", decoder="static")
    torch.manual_seed(0)
    none = engine.evaluate(_case(model, "none", {}))
    zero = engine.evaluate(_case(model, "fastv", {"k": 1, "keep": 1.0}))
    drop = engine.evaluate(_case(model, "v2drop", {"layers": [1], "keep": [0.5]}))
    assert zero.kpis["answer_exact_match"] == 1.0
    for result in (none, zero, drop):
        assert result.env["lm_decode_path"] == "static" and result.env["decoder"] == "static"
        assert result.kpis["lm_decode_ms_per_token"] > 0 and result.kpis["decode_ms_per_token_p50"] > 0
    assert none.kpis["lm_generation_speedup"] == 1.0  # the unpatched model against itself
    assert drop.kpis["lm_kv_cache_reduction_pct"] > 0 and drop.kpis["answer_exact_match"] < 1.0


def test_a_schedule_beyond_the_depth_names_the_matrix_file_and_key(one_thread):
    engine, model = _engine(), _model()
    with pytest.raises(MatrixError, match=r"lm\.toml: \[methods\.v2drop\] methods\.v2drop\.layers: layer 3 is not "
                                          r"below the model's depth 2.*tiny_lm has 2 language-model layers"):
        engine.evaluate(_case(model, "v2drop", {"preset": "qwen2_vl"}))
    with pytest.raises(MatrixError, match=r"lm\.toml: \[methods\.fastv\] methods\.fastv\.k: layer 5"):
        engine.evaluate(_case(model, "fastv", {"k": 5}))


@pytest.mark.parametrize("method,params,message", [
    ("v2drop", {"preset": "qwen2_vl", "keep": [[1.5, 0.5, 0.0]]}, r"keep\[0\]: must be <= 1, got 1.5"),
    ("v2drop", {"layers": [3, 5], "keep": 1.5}, "keep: must be <= 1, got 1.5"),
    ("v2drop", {"layers": [5, 3], "keep": [[0.5, 0.5]]}, r"layers: \[5, 3\] must be strictly increasing"),
    ("v2drop", {"layers": [3], "keep": [[0.5, 0.5]]}, r"keep: 2 ratios need as many layers"),
    ("v2drop", {"preset": "qwen"}, "preset: 'qwen' is not one of llava, qwen2_vl"),
    ("fastv", {"keep": 1.5}, "keep: must be <= 1, got 1.5"),
    ("fastv", {"k": 0}, "k: must be >= 1"),
])
def test_bad_schedules_are_refused_when_the_matrix_is_read(tmp_path, method, params, message):
    """(In the matrix a list of values is a grid axis: per-layer ratios are one value, a list in a list.)"""
    from evalsuite.matrix import read

    lines = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in params.items())
    path = tmp_path / "lm.toml"
    path.write_text(f"[models.m]\nfactory = \"qwen2_vl\"\nconfig = \"tiny\"\nmin_pixels = 3136\nmax_pixels = 50176\n"
                    f"insertion = \"lm\"\n[[methods.{method}]]\n{lines}\n[datasets.samples]\n")
    with pytest.raises(MatrixError, match=rf"lm\.toml: \[methods\.{method}\] {message}"):
        read([path])


@pytest.mark.parametrize("method,params,message", [
    ("v2drop", 'preset = "qwen2_vl"', r"layers: layer 3 is not in 1\.\.1: the language model has 2 layers \(model m\)"),
    ("fastv", "k = 2", r"k: layer 2 is not in 1\.\.1"),
])
def test_a_schedule_beyond_a_known_depth_is_refused_when_the_matrix_is_read(tmp_path, method, params, message):
    """A random-weights config says its depth without loading: the matrix refuses at collection."""
    path = tmp_path / "lm.toml"
    path.write_text(f"[models.m]\nfactory = \"qwen2_vl\"\nconfig = \"tiny\"\nmin_pixels = 3136\nmax_pixels = 50176\n"
                    f"insertion = \"lm\"\n[methods.{method}]\n{params}\n[datasets.samples]\n")
    with pytest.raises(MatrixError, match=rf"lm\.toml: \[methods\.{method}\] {message}"):
        load([path])
    path.write_text(path.read_text().replace('config = "tiny"', 'config = "tiny_deep"'))
    assert len(load([path])) == 1


def test_in_lm_settings_pair_with_language_models_only():
    from evalsuite.vlm.lm_drop import V2DROP_PRESETS
    from evalsuite.methods.spec import V2DROP_PRESET_NAMES

    assert set(V2DROP_PRESET_NAMES) == set(V2DROP_PRESETS)
    assert spec_of("v2drop", {"preset": "llava"}).insertion == {"in_llm"}
    assert spec_of("v2drop", {"keep": 0.5}).insertion >= {"encoder", "in_llm"}  # the encoder V2Drop still runs
    assert spec_of("fastv", {"keep": 1.0}).is_zero and not spec_of("v2drop", {"preset": "llava"}).is_zero
    with pytest.raises(ParamError, match="preset: an in-LM schedule runs inside a VLM's language model only"):
        spec_of("v2drop", {"preset": "llava"}).build(12)


def test_a_matrix_with_insertion_lm_runs_end_to_end(tmp_path, one_thread):
    """The matrix file -> cases -> engine, with the published Qwen2-VL schedule on a 28-layer tiny model."""
    path = tmp_path / "vlm_lm.toml"
    path.write_text(textwrap.dedent("""\
        batch_size = 2
        [models.deep]
        factory = "qwen2_vl"
        config = "tiny_deep"
        device = "cpu"
        min_pixels = 3136
        max_pixels = 50176
        max_new_tokens = 4
        insertion = "lm"
        [methods.none]
        [[methods.v2drop]]
        preset = "qwen2_vl"
        [[methods.fastv]]
        keep = 1.0
        [datasets.samples]
        limit = 2
        """))
    cases = load([path])
    assert [c.id for c in cases] == ["deep-none-samples", "deep-v2drop_qwen2_vl-samples", "deep-fastv_l2_k1-samples"]
    engine = _engine()
    torch.manual_seed(0)
    results = {c.method: engine.evaluate(c) for c in cases}
    v2drop = results["v2drop"]
    # 3 layers see every token, 13 a quarter, 6 a twentieth of that, 6 none (floor per image)
    n = engine.vlm_references[("deep", "samples")].full.encoded
    expected = sum((3 * e.num_tokens + 13 * (q := e.num_tokens // 4) + 6 * (q // 20)) / 28 for e in n) / len(n)
    assert v2drop.kpis["tokens_after"] == pytest.approx(expected)
    assert results["fastv"].kpis["answer_exact_match"] == 1.0
    assert all(r.error is None for r in v2drop.samples) and v2drop.kpis["samples_scored"] == 2


def test_an_in_lm_drop_that_did_not_fire_fails_the_case(monkeypatch, one_thread):
    """Every token enters the LM either way: the last layer's visual-token count is what tells."""
    from evalsuite.vlm import lm_drop
    from evalsuite.vlm.case import CompressionNotFired

    unpatched = lm_drop.prefill
    monkeypatch.setattr(lm_drop, "prefill", lambda model, inputs, schedule=lm_drop.NO_DROP: unpatched(model, inputs))
    engine, model = _engine(), _model("tiny_unfired")
    with pytest.raises(CompressionNotFired, match=r"v2drop: the last language-model layer saw \[12, 4\] visual "
                                                  r"tokens per sample, the schedule planned \[6, 2\]"):
        engine.evaluate(_case(model, "v2drop", {"layers": [1], "keep": [0.5]}))
