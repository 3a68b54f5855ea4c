"""``python -m evalsuite.bench.lm_drop --tiny`` runs on the CPU and reports rows that agree with the schedules."""

import argparse

import pytest

from evalsuite.bench import lm_drop as bench


def test_tiny_bench_rows(capsys):
    rows = bench.main(["--tiny", "--visual-tokens", "16", "--text-tokens", "4", "--new-tokens", "3", "--warmup", "0"])
    out = capsys.readouterr().out
    assert "random-weights" in out and "vision tower skipped" in out
    assert [r["method"] for r in rows] == ["none", "v2drop:preset=llava", "v2drop:preset=qwen2_vl",
                                           "fastv:k=2,keep=0.5"]
    none, llava, qwen, fastv = rows
    assert none["layer_avg"] == 16 and none["prefill_x"] == 1.0
    assert llava["layer_avg"] == (16 * 3 + 8 * 14 + 4 * 5 + 0 * 2) / 24  # 16 -> 8 (l3) -> 4 (l17) -> 0 (l22)
    assert qwen["layer_avg"] == (16 * 3 + 4 * 13) / 24  # 16 -> 4 (l3) -> floor(0.2) = 0 (l16)
    assert fastv["layer_avg"] == (16 * 2 + 8 * 22) / 24
    assert none["kv_mib"] > fastv["kv_mib"] > llava["kv_mib"] > qwen["kv_mib"]
    assert all(r["static_path"] == "static" for r in rows)  # no CUDA graph on the CPU
    assert "generation time saved" in out and "(paper: 31.5%)" in out


def test_method_option_is_checked_before_any_model_loads():
    assert bench.parse_method("v2drop:layers=[2,5],keep=[0.5,0.25]") == (
        "v2drop", {"layers": [2, 5], "keep": [0.5, 0.25]})
    with pytest.raises(argparse.ArgumentTypeError, match=r"methods\.v2drop\.keep: ratio 2"):
        bench.parse_method("v2drop:layers=[2],keep=2")
