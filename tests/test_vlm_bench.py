"""``python -m evalsuite.bench.vlm`` runs end to end on the CPU (tiny config) and reports what it claims."""

import pytest
import torch

from evalsuite.bench import methodspec, vlm
from evalsuite.vlm.methods import VLMUsageError


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model is launch-bound: a second thread only adds hand-offs
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_bench_rows_per_method_with_stage_times_and_ideal_speedups(one_thread, capsys):
    rows = vlm.run(vlm.TINY_2B_DEPTHS, [112], [2], [0.5], list(vlm.METHODS), "cpu", "float32", decode_tokens=2,
                   repeats=1, warmup=0, decoders=("eager", "static"))
    assert [r["method"] for r in rows] == ["none", *vlm.METHODS]
    by = {r["method"]: r for r in rows}
    base = rows[0]
    assert base["visual_tokens"] == 16 and base["ideal_prefill_speedup"] == 1.0
    for r in rows:
        assert r["label"] == "random-weights"
        assert r["vision_ms"] > 0 and r["prefill_ms"] > 0 and r["decode_eager_ms"] > 0 and r["decode_static_ms"] > 0
        assert r["static_path"] == r["decode_path"] == "static"  # no CUDA graph on a CPU
        assert r["e2e_ms"] == r["e2e_static_ms"] > 0 and r["e2e_eager_ms"] > 0
    for r in rows[1:]:
        assert r["visual_tokens"] < base["visual_tokens"]
        assert r["ideal_prefill_speedup"] > 1.0 and r["ideal_ttft_speedup"] > 1.0
        assert (r["compression_ms"] > 0) == ("@" not in r["method"] and r["method"] != "downscale")
    three_stage = [by[m] for m in ("random@vision", "v2drop@vision", "avit@vision", "tome@vision")]
    early = [by[m] for m in ("random@vision:layers=[3]", "v2drop@vision:layers=[3]")]
    assert all(r["ideal_ttft_speedup"] > by["random"]["ideal_ttft_speedup"] for r in three_stage)
    assert min(r["ideal_ttft_speedup"] for r in early) > max(r["ideal_ttft_speedup"] for r in three_stage)
    # in-LM rows: layer-averaged visual tokens of their schedules (16 per image, 28 layers)
    assert by["fastv@lm"]["visual_tokens"] == (2 * 16 + 26 * 8) / 28  # k=2, keep 0.5
    assert by["v2drop@lm"]["visual_tokens"] == (3 * 16 + 13 * 12 + 6 * 9 + 6 * 7) / 28  # 0.5 ** (1/3) at 3/16/22
    assert by["v2drop@lm:preset=qwen2_vl"]["visual_tokens"] == (3 * 16 + 13 * 4) / 28  # 16 -> 4 -> 0
    assert by["v2drop@lm:preset=llava"]["keep"] == by["v2drop@lm:preset=qwen2_vl"]["keep"] == 0.0
    for m in ("v2drop@lm", "fastv@lm", "v2drop@lm:preset=qwen2_vl", "v2drop@lm:preset=llava"):
        assert by[m]["compression_ms"] == 0.0
    # fewer layer-averaged tokens, more ideal prefill speedup (the FLOP model counts each layer's tokens)
    in_lm = sorted((by[m] for m in ("v2drop@lm", "fastv@lm", "v2drop@lm:preset=qwen2_vl")),
                   key=lambda r: r["visual_tokens"])
    assert [r["ideal_prefill_speedup"] for r in in_lm] == sorted((r["ideal_prefill_speedup"] for r in in_lm),
                                                                 reverse=True)
    assert "v2drop@lm:preset=llava" in capsys.readouterr().out


def test_cli_runs_given_specs_on_the_chosen_decode_path(one_thread, capsys):
    rows = vlm.main(["--tiny", "--batches", "1", "--sizes", "112", "--method", "fastv@lm:k=3", "--decoder", "static"])
    assert [r["method"] for r in rows] == ["none", "fastv@lm:k=3"]
    fastv = rows[1]
    assert fastv["keep"] == 0.5 and fastv["visual_tokens"] == (3 * 16 + 25 * 8) / 28
    assert fastv["decode_eager_ms"] is None and fastv["decode_static_ms"] > 0 and fastv["decode_path"] == "static"
    out = capsys.readouterr().out
    assert "dec eager: not run" in out and "dec static: static (static KV cache, no CUDA graph" in out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rows_time_both_paths_with_the_static_one_as_a_cuda_graph(capsys):
    rows = vlm.main(["--tiny", "--device", "cuda", "--sizes", "224", "--batches", "2", "--warmup", "1",
                     "--methods", "random;tome;fastv@lm;v2drop@lm:preset=qwen2_vl"])
    assert len(rows) == 5
    tome = rows[2]
    assert tome["method"] == "tome" and tome["compression_ms"] > 0 and tome["compression_eager_ms"] > 0
    for r in rows:
        assert r["static_path"] == r["decode_path"] and r["decode_path"].startswith("static+graph")
        assert r["e2e_ms"] == r["e2e_static_ms"]
        assert r["decode_eager_ms"] > 0 and r["decode_static_ms"] > 0 and r["static_setup_ms"] > 0
    assert "dec static: static+graph" in capsys.readouterr().out


@pytest.mark.parametrize("text,specs", [
    ("random,tome,avit@vision", ["random", "tome", "avit@vision"]),
    ("v2drop@vision:layers=[3],random@vision:layers=[1],v2drop@lm:preset=llava",
     ["v2drop@vision:layers=[3]", "random@vision:layers=[1]", "v2drop@lm:preset=llava"]),
    ("fastv@lm:k=2,keep=0.5;tome@vision:layers=[1,3],merge_factor=0.5;divprune",
     ["fastv@lm:k=2,keep=0.5", "tome@vision:layers=[1,3],merge_factor=0.5", "divprune"]),
])
def test_method_specs_split_and_round_trip(text, specs):
    assert methodspec.split_specs(text) == specs
    for spec in specs:
        assert methodspec.format_spec(*methodspec.parse_spec(spec)) == spec
    assert methodspec.parse_spec("v2drop@lm:preset=llava,layers=[3, 17]") == (
        "v2drop@lm", {"preset": "llava", "layers": [3, 17]})


def test_specs_plan_rows_per_keep_or_once():
    plan = vlm.plan(["random@vision:layers=[3]", "v2drop@lm", "v2drop@lm:preset=llava", "tome"], [0.7, 0.3],
                    vlm.TINY_2B_DEPTHS)
    tower, v2drop, preset, tome = plan
    assert [(p.method, p.keep) for p in tower] == [("random@vision:layers=[3]", 0.7), ("random@vision:layers=[3]", 0.3)]
    assert tower[0].resolved.params == {"layers": [3], "keep": 0.7}  # the FLOP model and the tower read these
    assert v2drop[1].resolved.schedule.layers == vlm.V2DROP_LAYERS
    assert v2drop[1].resolved.schedule.keep == pytest.approx((0.3 ** (1 / 3),) * 3)
    assert len(preset) == 1 and preset[0].resolved.schedule.keep == (0.5, 0.5, 0.0) and preset[0].keep == 0.0
    assert tome[1].resolved.keep == pytest.approx(0.3)


@pytest.mark.parametrize("spec,message", [
    ("v2drop@lm:layers=[3,30]", r"--methods v2drop@lm:layers=\[3,30\]: .*layer 30 is not below the model's depth 28"),
    ("fastv@lm:keep=1.5", r"--methods fastv@lm:keep=1.5: methods.fastv.keep: ratio 1.5 is outside \[0, 1\]"),
    ("v2drop@lm:preset=nope", r"--methods v2drop@lm:preset=nope: .*unknown preset 'nope'"),
    ("random@vision:layers=[40]", r"--methods random@vision:layers=\[40\]: .*below the tower's depth 32"),
    ("random@vision:keep=1.5", r"--methods random@vision:keep=1.5: .*kept fraction must be in \(0, 1\]"),
    ("avit", "--methods avit: method 'avit' cannot run at insertion point 'pre_llm'"),
    ("fastv@lm:k=[2", r"--methods fastv@lm:k=\[2"),
])
def test_bad_spec_or_schedule_fails_naming_the_method_before_any_model_is_built(spec, message, monkeypatch):
    from evalsuite.models import qwen2_vl

    monkeypatch.setattr(qwen2_vl, "create", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(VLMUsageError, match=message):
        vlm.main(["--tiny", "--methods", f"random;{spec}"])


def test_a_parameter_without_a_method_is_refused():
    with pytest.raises(VLMUsageError, match=r"--methods .*'k=2' follows no NAME:KEY=VALUE"):
        vlm.main(["--tiny", "--methods", "random,k=2"])


def test_flop_model_grows_with_tokens():
    from evalsuite.vlm.configs import QWEN2_VL_2B
    from transformers import Qwen2VLConfig

    config = Qwen2VLConfig.from_dict(QWEN2_VL_2B)
    text = config.get_text_config()
    assert vlm.lm_prefill_flops(1400, text) > 1.9 * vlm.lm_prefill_flops(700, text)
    assert vlm.lm_prefill_flops([1400] * 28, text) == vlm.lm_prefill_flops(1400, text)
    assert vlm.lm_prefill_flops(700, text) < vlm.lm_prefill_flops([1400] * 3 + [700] * 25, text) < \
        vlm.lm_prefill_flops(1400, text)
    with pytest.raises(ValueError, match="27 per-layer token counts for a 28-layer"):
        vlm.lm_prefill_flops([1400] * 27, text)
    assert vlm.tower_flops(5476, config.vision_config) > 2 * vlm.tower_flops(2738, config.vision_config)
    assert vlm.tower_flops([5476] * 32, config.vision_config) == vlm.tower_flops(5476, config.vision_config)


def _bench_row(method, size, batch, keep, **figures):
    row = {"method": method, "size": size, "batch": batch, "keep": keep, "compression_ms": 0.0, "vision_ms": 100.0,
           "prefill_speedup": 1.0, "ideal_prefill_speedup": 1.0}
    return {**row, **figures}


def test_targets_say_which_rows_meet_each_and_which_miss():
    rows = [
        _bench_row("none", 1036, 1, 1.0), _bench_row("none", 1036, 8, 1.0, vision_ms=340.0),
        _bench_row("tome", 1036, 1, 0.5, compression_ms=0.4),
        _bench_row("divprune", 1456, 1, 0.7, compression_ms=2.46),
        _bench_row("fastv@lm", 1036, 1, 0.5),  # inside the LM: no compression step of its own
        _bench_row("random", 1036, 8, 0.5, prefill_speedup=1.86, ideal_prefill_speedup=2.04),
        _bench_row("downscale", 1036, 8, 0.5, prefill_speedup=1.50, ideal_prefill_speedup=2.07),
        _bench_row("random@vision:layers=[3]", 1036, 8, 0.5, vision_ms=200.0),
        _bench_row("v2drop@vision", 1036, 8, 0.5, vision_ms=250.0),
        _bench_row("v2drop@vision", 1036, 8, 0.3, vision_ms=150.0),  # not keep 0.5: not this target's row
    ]
    lines = vlm.targets(rows)
    assert len(lines) == 3
    step, prefill, tower = lines
    assert "compression step <= 1 ms" in step and "met by 1 of 2 rows" in step
    assert "missed: divprune keep 0.7 at 1456 px, batch 1 (2.46 ms)" in step
    assert "met by 1 of 2 rows" in prefill and "downscale keep 0.5 at 1036 px, batch 8 (0.72 of ideal)" in prefill
    assert "met by 1 of 2 rows" in tower and "v2drop@vision keep 0.5 at 1036 px, batch 8 (1.36 x)" in tower
    assert "met: random@vision:layers=[3] keep 0.5 at 1036 px, batch 8 (1.70 x)" in tower
    assert vlm.targets([_bench_row("none", 1036, 1, 1.0)]) == []
