"""The throughput/latency benchmark runs end to end and reports what it claims (CPU, tiny input)."""

import json
import math
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from evalsuite import bench
from benchmarks import kernels
from evalsuite.methods import graphs
from evalsuite.metrics.flops import block_flops
from evalsuite.models import MODELS

from .conftest import two_model_matrix


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


@pytest.mark.parametrize("spec,expected", [
    ("tome:merge_factor=0.5,proportional_attention=false", ("tome", {"merge_factor": 0.5, "proportional_attention": False})),
    ("tome:r=8", ("tome", {"r": 8})),
    ("none", ("none", {})),
])
def test_method_option_reads_parameters_as_a_matrix_file_does(spec, expected):
    assert bench.parse_method(spec) == expected


@pytest.mark.parametrize("spec,message", [
    ("tome:merge=0.5", "merge: unknown key; did you mean 'merge_factor'?"),
    ("tome:merge_factor=abc", "'merge_factor=abc' is not KEY=VALUE"),
    ("nosuch", "unknown method 'nosuch'"),
])
def test_bad_method_option_is_a_usage_error_naming_it(spec, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--device", "cpu", "--method", spec])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--method {spec}" in err and message in err


# -- benchmarks.kernels: the diagnoses behind the README's kernel figures ----------------

TINY_SHAPES = {"tiny b1": (1, 2, 17, 8, 24), "tiny b2": (2, 2, 33, 8, 24)}  # (B, H, N, D, C)
TINY_DINOV2 = dict(config=dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=14))
TINY_BLOCKS = [  # registry name, image size, factory parameters, width: one per block layout
    pytest.param("timm_vit", 48, dict(arch="vit_tiny_patch16_224"), 192, id="timm-fused-qkv"),
    pytest.param("hf_dinov2", 56, TINY_DINOV2, 64, id="hf_dinov2-q-k-v"),
]


def test_merge_step_one_row_per_shape_eager_only_on_cpu(capsys):
    limit = graphs.GRAPH_MAX_ELEMENTS
    rows = kernels.merge_step_rows(TINY_SHAPES, "cpu", repeats=2)
    assert [r["shape"] for r in rows] == list(TINY_SHAPES)
    assert [r["elements"] for r in rows] == [b * n * c for b, _, n, _, c in TINY_SHAPES.values()]  # x is largest
    assert all(r["eager_ms"] > 0 and r["replayed_ms"] is None and r["kernel_ms"] is None for r in rows)  # no graphs
    assert all(r["fused_ms"] is None for r in rows)  # no Triton on CPU unless interpreted
    assert graphs.GRAPH_MAX_ELEMENTS == limit
    assert "tiny b2" in capsys.readouterr().out


def test_graph_max_elements_is_restored_when_the_measurement_fails():
    limit = graphs.GRAPH_MAX_ELEMENTS
    with pytest.raises(RuntimeError):
        with kernels.graph_max_elements(1 << 62):
            assert graphs.GRAPH_MAX_ELEMENTS == 1 << 62
            raise RuntimeError("measurement failed")
    assert graphs.GRAPH_MAX_ELEMENTS == limit


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_merge_step_replays_from_a_graph_on_cuda_and_restores_the_limit():
    limit = graphs.GRAPH_MAX_ELEMENTS
    rows = kernels.merge_step_rows(TINY_SHAPES, "cuda", "float16", repeats=3)
    assert all(r["eager_ms"] > 0 and r["replayed_ms"] > 0 and r["kernel_ms"] > 0 for r in rows)
    assert all(r["fused_ms"] > 0 and r["fused_replayed_ms"] > 0 and r["fused_kernel_ms"] > 0 for r in rows)
    assert graphs.GRAPH_MAX_ELEMENTS == limit


@pytest.mark.parametrize("model, size, params, dim", TINY_BLOCKS)
def test_block_scaling_rows_follow_the_flop_model(model, size, params, dim, capsys):
    tokens = [10, 7, 4]
    rows = kernels.block_scaling_rows(model, size, batch=1, tokens=tokens, device="cpu", repeats=1,
                                      model_params=params)
    assert [r["tokens"] for r in rows] == tokens
    expected = [block_flops(n, n, dim) / block_flops(tokens[0], tokens[0], dim) for n in tokens]
    assert [r["flop_fraction"] for r in rows] == pytest.approx(expected)
    assert rows[0]["flop_fraction"] > rows[1]["flop_fraction"] > rows[2]["flop_fraction"]
    for r in rows:
        assert min(r["block_ms"], r["sdpa_ms"], r["padded_sdpa_ms"], r["gemm_ms"]) > 0
        assert r["ideal_pct"] == pytest.approx(100 * r["flop_fraction"] / r["time_fraction"])
    assert rows[0]["time_fraction"] == 1.0 and rows[0]["ideal_pct"] == pytest.approx(100.0)
    assert "% ideal" in capsys.readouterr().out


@pytest.mark.parametrize("model, size, params, dim", TINY_BLOCKS)
def test_timed_block_computes_what_the_model_block_computes(model, size, params, dim):
    adapter = MODELS.get(model)(model, image_size=size, **params)
    block = adapter.model.blocks[0] if model == "timm_vit" else adapter.model.encoder.layer[0]
    x = torch.randn(2, 10, dim)
    with torch.no_grad():
        for p in block.parameters():  # LayerScale starts at 1: make every parameter count
            p.add_(0.1 * torch.randn_like(p))
    with torch.inference_mode():
        expected = block(x)
        expected = expected[0] if isinstance(expected, tuple) else expected
        torch.testing.assert_close(kernels.block_parts(adapter).forward(x), expected)


def test_block_scaling_defaults_to_fractions_of_the_full_token_count(monkeypatch):
    monkeypatch.setattr(kernels, "kernel_ms", lambda fn, device, repeats: 1.0)  # the counts are the point here
    rows = kernels.block_scaling_rows("hf_dinov2", 56, batch=1, device="cpu", repeats=1, model_params=TINY_DINOV2)
    assert [r["tokens"] for r in rows] == [17, 15, 12, 10, 9, 6]  # 4 x 4 patches + CLS, then the 518 px fractions


def test_block_scaling_refuses_a_family_it_cannot_take_apart():
    with pytest.raises(ValueError, match="hf_dinov2 and timm_vit"):
        kernels.block_parts(SimpleNamespace(family="hf_clip", name="clip_b16_random", model=None))


def test_attention_rows_time_what_the_device_runs_and_mark_the_rest(capsys):
    rows = kernels.attention_rows([16, 8], batch=1, heads=2, head_dim=8, device="cpu", repeats=1)
    assert [r["tokens"] for r in rows] == [16, 8]
    for r in rows:
        assert r["plain"] > 0 and r["padded"] > 0 and r["mask"] > 0 and "plain" not in r["errors"]
        for option in ("cudnn+mask", "efficient+mask"):  # CUDA-only SDPA backends
            assert r[option] is None and r["errors"][option] == "RuntimeError"
        assert r["bias kernel"] is None and r["errors"]["bias kernel"] == "NotImplementedError"  # compiled Triton: GPU
    assert "- (RuntimeError)" in capsys.readouterr().out


def test_kernels_cli_parses_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "rows.json"
    rows = kernels.main(["attention", "--device", "cpu", "--batch", "1", "--heads", "2", "--head-dim", "8",
                         "--tokens", "16,8", "--repeats", "1", "--json", str(out)])
    assert [r["tokens"] for r in rows] == [16, 8] and json.loads(out.read_text()) == rows
    rows = kernels.main(["merge-step", "--device", "cpu", "--shapes", "B/16 224 b8", "--repeats", "1"])
    assert [r["shape"] for r in rows] == ["B/16 224 b8"] and rows[0]["replayed_ms"] is None
    rows = kernels.main(["block-scaling", "--device", "cpu", "--model", "timm_vit", "--param",
                         "arch=vit_tiny_patch16_224", "--size", "32", "--batch", "1", "--tokens", "5,3",
                         "--repeats", "1"])
    assert [r["tokens"] for r in rows] == [5, 3]
    printed = capsys.readouterr().out
    assert "plain" in printed and "B/16 224 b8" in printed and "timm_vit 32 px" in printed
    with pytest.raises(SystemExit):
        kernels.main(["merge-step", "--shapes", "no such shape"])


def test_python_dash_m_evalsuite_bench_still_runs_main():
    done = subprocess.run([sys.executable, "-m", "evalsuite.bench", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "usage: python -m evalsuite.bench" in done.stdout


def test_in_place_rows_alternate_both_settings_and_restore_the_graph_cache():
    from benchmarks import kernels
    from evalsuite.methods import graphs

    cache, limit = graphs._GRAPHS, graphs.MAX_IN_PLACE
    rows = kernels.in_place_rows("vit_b16_random", sizes=[32], methods=[("tome", {"r": 2})], repeats=2,
                                 warmup=1, rounds=2)
    assert [(r["round"], r["in_place"]) for r in rows] == [(0, 0), (0, limit), (1, 0), (1, limit)]
    assert all(0 < r["p50_ms"] <= r["p95_ms"] and r["in_place_graphs"] == 0 for r in rows)  # no graphs on CPU
    assert graphs._GRAPHS is cache and graphs.MAX_IN_PLACE == limit


@pytest.mark.slow
def test_scaling_bench_runs_the_gate_on_one_worker_then_two_and_splits_the_difference(tmp_path, capsys):
    """A tiny matrix on the CPU (two models, so two workers have a model each): both runs' cases are
    read back from their spools, the second run's from two workers; the speed-up and a perfect
    split are printed with the stage table."""
    from pathlib import Path

    from benchmarks import scaling

    repo = Path(__file__).parents[1]
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "test_cases.py").write_text((repo / "cases" / "test_compression.py").read_text())
    (cases / "matrix.toml").write_text(two_model_matrix(dinov2_size=112, samples=4))
    pytest_args = [str(cases / "test_cases.py"), "--rootdir", str(cases), "-c", "/dev/null",
                   "--evalsuite-matrix", str(cases / "matrix.toml"),
                   "--evalsuite-thresholds", str(repo / "thresholds.toml"), "--evalsuite-no-ocr"]
    assert scaling.main(["--no-warmup", "--dir", str(tmp_path / "work"), "--", *pytest_args]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("one ", "many "))}
    assert rows["one"][1] == "1" and rows["many"][1] == "2" and rows["one"][-1] in ("0", "1")
    assert re.search(r"speed-up on 2 workers: [\d.]+x; a perfect split would take [\d.]+ s", out)
    assert "model_load" in out and "compressed_pass" in out
    spooled = {name: [json.loads(line)["case"] for path in (tmp_path / "work" / f"spool_{name}").glob("*.jsonl")
                      for line in path.read_text().splitlines() if json.loads(line).get("type") == "case"]
               for name in ("one", "many")}
    assert len(spooled["one"]) == len(spooled["many"]) == 4  # 2 models x 2 methods, every case ran
    assert {case["env"]["worker"] for case in spooled["one"]} == {"gw0"}
    assert {case["env"]["worker"] for case in spooled["many"]} == {"gw0", "gw1"}
