"""Case matrices: read and expanded without torch, every key checked against its declaration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from evalsuite import matrix

REPO = Path(__file__).resolve().parents[1]
MATRICES = [REPO / "cases" / "default.toml", REPO / "cases" / "gpu.toml"]


def test_reading_and_expanding_import_no_torch():
    """The xdist controller builds the same cases as the workers: specs are torch-free."""
    code = ("import sys; from evalsuite import matrix; "
            f"cases = matrix.load({[str(p) for p in MATRICES]!r}); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "print(len(cases), len({c.model.id for c in cases}), cases[3].spec.id_part)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    count, models, id_part = proc.stdout.split()
    assert int(count) > 50 and int(models) == 3 and id_part == "tome_f0.5"


def test_cases_carry_their_model_dataset_and_checked_spec():
    for case in matrix.load(MATRICES):
        assert case.id == f"{case.model.id}-{case.spec.id_part}-{case.dataset.id}"
        assert case.spec.name == case.method and case.spec.params == case.params


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.toml"
    path.write_text(text)
    return path


BASE = "[models.dinov2_s14]\n[methods.none]\n[datasets.samples]\n"


@pytest.mark.parametrize("text,message", [
    ("[models.dinov2_s14]\n[methods.tome]\nmerge_factor = [0.5, 1.5]\n[datasets.samples]\n",
     r"\[methods\.tome\] merge_factor: must be < 1, got 1\.5"),
    ("[models.dinov2_s14]\n[methods.tome]\nmerge_factor = 0.5\nr = 4\n[datasets.samples]\n",
     r"\[methods\.tome\] merge_factor: give exactly one of merge_factor"),
    ("[models.dinov2_s14]\n[methods.tome]\nmerge_factr = 0.5\n[datasets.samples]\n",
     r"\[methods\.tome\] merge_factr: unknown key; did you mean 'merge_factor'\?"),
    ("[models.dinov2_s14]\n[methods.v2drop]\nkeep = 'x'\n[datasets.samples]\n",
     r"\[methods\.v2drop\] keep: must be a number, got 'x'"),
    ("[models.dinov2_s14]\n[methods.v2drop]\nkeep = 0.5\nlayers = [5, 3]\n[datasets.samples]\n",
     r"\[methods\.v2drop\] layers: \[5, 3\] must be strictly increasing"),
    ("[models.dinov2_s14]\n[methods.random]\nkeep = 0.5\nlayers = [-1, 3]\n[datasets.samples]\n",
     r"\[methods\.random\] layers\[0\]: must be >= 0, got -1"),
    ("[models.dinov2_s14]\n[methods.none]\n[datasets.samples]\nlimit = -1\n",
     r"\[datasets\.samples\] limit: must be >= 1, got -1"),
    ("[models.dinov2_s14]\n[methods.none]\n[datasets.samples]\nlimt = 2\n",
     r"\[datasets\.samples\] limt: unknown key; did you mean 'limit'\?"),
    ("[models.dinov2_s14]\nimage_sise = 112\n[methods.none]\n[datasets.samples]\n",
     r"\[models\.dinov2_s14\] image_sise: unknown key; did you mean 'image_size'\?"),
    ("[models.vit]\nfactory = 'timm_vit'\n[methods.none]\n[datasets.samples]\n",
     r"\[models\.vit\] arch: is required"),
    ("[models.vit]\nfactory = 'timm_vit'\narch = 'vit_tiny_patch16_224'\ndepth = 0\n[methods.none]\n[datasets.samples]\n",
     r"\[models\.vit\] depth: must be >= 1, got 0"),
    ("batch_size = 0\n" + BASE, r"m\.toml: batch_size: must be >= 1, got 0"),
    ("seeed = 1\n" + BASE, r"m\.toml: seeed: unknown key; did you mean 'seed'\?"),
])
def test_every_key_is_checked_when_read(tmp_path, text, message):
    with pytest.raises(matrix.MatrixError, match=r"m\.toml: " + message.removeprefix(r"m\.toml: ")):
        matrix.read([write(tmp_path, text)])


def test_depth_bound_parameters_are_checked_when_built_for_the_model(tmp_path):
    """``layers`` fit a 24-block model: read and expanded without a depth; building the hooks for a
    12-block model names the file, the key and the depth."""
    path = write(tmp_path, "[models.vitl]\nfactory = 'timm_vit'\narch = 'vit_large_patch16_224'\n"
                           "[methods.v2drop]\nkeep = 0.5\nlayers = [14, 18, 22]\n[datasets.synthetic]\n")
    (case,) = matrix.load([path])
    assert case.id == "vitl-v2drop_k0.5-synthetic"
    assert case.build_method(24).layers == [14, 18, 22]
    with pytest.raises(matrix.MatrixError, match=r"m\.toml: \[methods\.v2drop\] layers: \[14, 18, 22\] must be "
                                                 r"block indices < 11 for a model of 12 blocks"):
        case.build_method(12)


VIT_LARGE = """
timing_repeats = 1
timing_warmup = 0
[models.vitl]
factory = "timm_vit"
arch = "vit_large_patch16_224"
pretrained = false
image_size = 224
{narrow}
[methods.v2drop]
keep = 0.5
layers = [14, 18, 22]
[datasets.synthetic]
limit = 1
"""


def test_a_24_block_vit_with_late_drop_layers_collects_and_runs(tmp_path):
    """The new user's matrix of the issue: timm's vit_large (24 blocks) with V2Drop after blocks
    14, 18 and 22 collects as it is; it runs with the same 24 blocks made narrow (timm keyword
    arguments in the model table) so that the CPU test stays fast."""
    import json

    from .test_plugin import run_pytest

    collected = run_pytest(tmp_path, VIT_LARGE.format(narrow=""), "--collect-only", "-q")
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert "vitl-v2drop_k0.5-synthetic" in collected.stdout
    proc = run_pytest(tmp_path, VIT_LARGE.format(narrow="embed_dim = 64\nnum_heads = 4"), "--evalsuite-no-ocr",
                      thresholds="")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [json.loads(line) for f in (tmp_path / "spool").glob("*.jsonl") for line in f.read_text().splitlines()]
    (case,) = [r for r in rows if r["type"] == "case"]
    assert case["case"]["case_id"] == "vitl-v2drop_k0.5-synthetic" and not case["case"]["error"], case
    kpis = case["case"]["kpis"]
    assert (kpis["tokens_before"], kpis["tokens_after"]) == (196, 98)  # 14x14 patches, half kept by block 22


SMALL = """
batch_size = 2
[models.dinov2_s14]
image_size = 56
[methods.v2drop]
keep = 0.5
[datasets.samples]
limit = 1
"""


@pytest.mark.parametrize("old,new,message", [
    ("limit = 1", "limit = -1", "[datasets.samples] limit: must be >= 1, got -1"),
    ("limit = 1", "limt = 2", "[datasets.samples] limt: unknown key; did you mean 'limit'?"),
    ("limit = 1", 'limit = "x"', "[datasets.samples] limit: must be an integer, got 'x'"),
    ("image_size = 56", "image_sise = 56", "[models.dinov2_s14] image_sise: unknown key; did you mean 'image_size'?"),
    ("batch_size = 2", "batch_size = 0", "matrix.toml: batch_size: must be >= 1, got 0"),
    ("keep = 0.5", 'keep = "x"', "[methods.v2drop] keep: must be a number, got 'x'"),
    ("keep = 0.5", "keep = 1.5", "[methods.v2drop] keep: must be <= 1, got 1.5"),
    ("keep = 0.5", "keep = 0.5\nlayers = [8, 4]", "[methods.v2drop] layers: [8, 4] must be strictly increasing"),
])
def test_bad_values_are_usage_errors_naming_file_and_key(tmp_path, old, new, message):
    """Issue 21's bad matrix values: pytest's usage-error exit (4), the file and the key named."""
    from .test_plugin import run_pytest

    proc = run_pytest(tmp_path, SMALL.replace(old, new), "--collect-only", "-q")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "matrix.toml" in proc.stderr and message in proc.stderr, proc.stderr


def test_a_method_is_refused_where_its_model_offers_none_of_its_insertion_points(tmp_path, monkeypatch):
    """A model family declares where methods can run (``insertion`` in its registration); a method
    that runs nowhere there is a usage error naming the method table, not a case that fails later."""
    from evalsuite.models import MODELS

    meta = dict(MODELS.meta("dinov2_s14"), insertion=frozenset({"in_llm"}))
    monkeypatch.setitem(MODELS._meta, "dinov2_s14", meta)
    path = write(tmp_path, "[models.dinov2_s14]\n[methods.tome]\nr = 2\n[datasets.samples]\n")
    with pytest.raises(matrix.MatrixError, match=r"m\.toml: \[methods\.tome\]: tome runs at encoder, pre_llm, vision_tower; "
                                                 r"model dinov2_s14 \(dinov2_s14\) offers in_llm"):
        matrix.load([path])
