"""``python -m evalsuite.bench.vlm`` runs end to end on the CPU (tiny config) and reports what it claims."""

import pytest
import torch

from evalsuite.bench import vlm


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model is launch-bound: a second thread only adds hand-offs
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_bench_rows_per_method_with_stage_times_and_ideal_speedups(one_thread, capsys):
    rows = vlm.run("tiny", [112], [2], [0.5], list(vlm.METHODS), "cpu", "float32", decode_tokens=2, repeats=1,
                   warmup=0)
    assert [r["method"] for r in rows] == ["none", *vlm.METHODS]
    base = rows[0]
    assert base["visual_tokens"] == 16 and base["ideal_prefill_speedup"] == 1.0
    for r in rows:
        assert r["label"] == "random-weights"
        assert r["vision_ms"] > 0 and r["prefill_ms"] > 0 and r["decode_ms"] > 0 and r["e2e_ms"] > 0
    for r in rows[1:]:
        assert r["visual_tokens"] < base["visual_tokens"]
        assert r["ideal_prefill_speedup"] > 1.0 and r["ideal_ttft_speedup"] > 1.0
        assert (r["compression_ms"] > 0) == ("@" not in r["method"] and r["method"] != "downscale")
    tower = [r for r in rows if r["method"].endswith("@vision")]
    assert len(tower) == 4 and all(r["ideal_ttft_speedup"] > rows[1]["ideal_ttft_speedup"] for r in tower)
    assert "visionzip" in capsys.readouterr().out


def test_flop_model_grows_with_tokens():
    from evalsuite.vlm.configs import QWEN2_VL_2B
    from transformers import Qwen2VLConfig

    config = Qwen2VLConfig.from_dict(QWEN2_VL_2B)
    text = config.get_text_config()
    assert vlm.lm_prefill_flops(1400, text) > 1.9 * vlm.lm_prefill_flops(700, text)
    assert vlm.tower_flops(5476, config.vision_config) > 2 * vlm.tower_flops(2738, config.vision_config)
    assert vlm.tower_flops([5476] * 32, config.vision_config) == vlm.tower_flops(5476, config.vision_config)


def test_unknown_method_fails_before_any_model_is_built():
    from evalsuite.vlm.methods import VLMUsageError

    with pytest.raises(VLMUsageError, match="avit"):
        vlm.main(["--tiny", "--methods", "avit"])
