"""The throughput/latency benchmark runs end to end and reports what it claims (CPU, tiny input)."""

import math

from evalsuite import bench


def test_bench_rows_per_method_with_speedup_ideal_and_step_times(monkeypatch, capsys):
    monkeypatch.setattr(bench, "WARM_SECONDS", 0.0)
    methods = [("tome", {"r": 2}), ("downscale", {"keep": 0.5})]
    rows = bench.run(["vit_b16_random"], [64], [2], "cpu", "float32", warmup=0, repeats=2, methods=methods)
    assert [r["method"] for r in rows] == ["unpatched", "tome_r2", "downscale_k0.5"]
    for r in rows[1:]:
        assert r["ideal"] > 1.0 and r["images_per_s"] > 0
        assert math.isclose(r["ratio"], r["speedup"] / r["ideal"])
        assert 0 < r["comp_p50_ms"] <= r["comp_p95_ms"] and r["sync_p95_ms"] > 0
        assert r["graphed_ratio"] is None  # CUDA graphs only on CUDA
        assert "random-weights" in r["labels"]
    printed = capsys.readouterr().out
    assert "tome_r2" in printed and "random-weights" in printed
